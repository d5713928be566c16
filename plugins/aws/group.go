// Package aws is the Flotilla provider plugin for AWS: an EC2 Auto Scaling group is the
// instance group. It is built as fleeting-plugin-aws (cmd/fleeting-plugin-aws) and
// imports only sdk/ and aws-sdk-go-v2, like any third-party plugin.
//
// Increase raises the group's DesiredCapacity (SetDesiredCapacity); Decrease terminates
// the named instances with TerminateInstanceInAutoScalingGroup and
// ShouldDecrementDesiredCapacity, so the group does not replace them; Update lists the
// group (DescribeAutoScalingGroups) and its instances (one paginated DescribeInstances
// filtered on the group's tag) once per call. ConnectInfo returns the instance's private
// and public address and, unless use_static_credentials is set, an ephemeral key pushed
// with EC2 Instance Connect. Throttling is retried by the SDK's retryer with backoff and
// jitter; a listing that still fails is an error, never a report that instances are
// gone. See docs/plugin-aws.md.
package aws

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/aws/smithy-go"
	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/visibility"
	"github.com/flotilla-ci/flotilla/sdk/instancegroup"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Version identifies this build of the plugin. Set its fields with -ldflags.
var Version = plugin.VersionInfo{Name: "fleeting-plugin-aws", Version: "0.1.0"}

// Instance tags the plugin reads when present. TagSSHPort lets an image serve SSH on a
// port other than 22 (the simulated cloud uses it); TagSSHHostKey pins the host key.
const (
	TagSSHPort    = "flotilla:ssh-port"
	TagSSHHostKey = "flotilla:ssh-host-key"
	tagGroupName  = "aws:autoscaling:groupName"
)

// describePageSize is the DescribeInstances page size: AWS's maximum with filters.
const describePageSize = 1000

// InstanceGroup is the AWS provider. Its JSON-tagged fields are plugin_config.
type InstanceGroup struct {
	// Name is the Auto Scaling group's name.
	Name string `json:"name"`
	// Profile is the shared-config profile; default "default" (or AWS_PROFILE).
	Profile string `json:"profile"`
	// ConfigFile and CredentialsFile override ~/.aws/config and ~/.aws/credentials.
	ConfigFile      string `json:"config_file"`
	CredentialsFile string `json:"credentials_file"`
	// Region overrides the profile's region.
	Region string `json:"region"`
	// Endpoint overrides the AWS endpoints (all three services): for tests against a
	// fake, or a VPC endpoint proxy.
	Endpoint string `json:"endpoint"`
	// RetryMaxBackoff bounds the backoff between retries of a throttled call; default
	// 20s. Tests set it low.
	RetryMaxBackoff string `json:"retry_max_backoff"`
	// RetryMaxAttempts is how many times one call is tried; default 5.
	RetryMaxAttempts int `json:"retry_max_attempts"`

	// Base holds the logger, settings and the ephemeral key pushed with Instance
	// Connect.
	instancegroup.Base

	region  string
	as      *autoscaling.Client
	ec2     *ec2.Client
	connect *ec2instanceconnect.Client

	// scaling serialises Increase and Decrease: both read the group's desired size
	// and change it, so two at once could compute from the same stale value.
	scaling sync.Mutex

	// seen: the instances of the group at the latest DescribeAutoScalingGroups.
	seen visibility.Tracker
}

// New returns an unconfigured group, as plugin.Main wants it.
func New() *InstanceGroup { return &InstanceGroup{} }

// Validate reports every configuration problem at once, each naming its key.
func (g *InstanceGroup) Validate() error {
	var p instancegroup.Problems
	p.Required("name", g.Name, "the Auto Scaling group's name")
	p.URL("endpoint", g.Endpoint, "https://autoscaling.example:443")
	p.PositiveDuration("retry_max_backoff", g.RetryMaxBackoff)
	p.NotNegative("retry_max_attempts", g.RetryMaxAttempts)
	return p.Err()
}

// spec is the AWS part of the shared instance-group flow.
func (g *InstanceGroup) spec() instancegroup.Spec[astypes.AutoScalingGroup] {
	return instancegroup.Spec[astypes.AutoScalingGroup]{
		Group:         "auto scaling group " + g.Name,
		Connect:       g.connectClients,
		Describe:      g.describeGroup,
		DescribeCheck: "describe-group",
		DescribeFix:   "check plugin_config.name, region and credentials, and grant autoscaling:DescribeAutoScalingGroups",
		Check:         g.doctor,
		KeyComment:    "flotilla instance connect",
		Config:        g,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&g.Name, "name", "", "Auto Scaling group name")
			fs.StringVar(&g.Profile, "profile", "", "shared configuration profile")
			fs.StringVar(&g.ConfigFile, "config-file", "", "AWS config file")
			fs.StringVar(&g.CredentialsFile, "credentials-file", "", "AWS credentials file")
			fs.StringVar(&g.Region, "region", "", "region")
			fs.StringVar(&g.Endpoint, "endpoint", "", "endpoint override")
		},
		StaticCredentialsUsage: "the connector uses static credentials: skip the Instance Connect check",
	}
}

// Init builds the SDK clients, checks the group with the doctor (warnings are logged;
// settings or missing permissions that would make jobs fail are an error), and makes
// the ephemeral Instance Connect key.
func (g *InstanceGroup) Init(ctx context.Context, logger hclog.Logger, settings provider.Settings) (provider.ProviderInfo, error) {
	grp, err := instancegroup.Init(ctx, &g.Base, logger, settings, g.spec())
	if err != nil {
		return provider.ProviderInfo{}, err
	}
	return instancegroup.Info(Version, "aws/"+g.region+"/"+g.Name, int(aws.ToInt32(grp.MaxSize))), nil
}

// describeGroup fetches the group; a missing group is a configuration error.
func (g *InstanceGroup) describeGroup(ctx context.Context) (astypes.AutoScalingGroup, error) {
	out, err := g.as.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{g.Name}})
	if err != nil {
		return astypes.AutoScalingGroup{}, fmt.Errorf("describe auto scaling group %s: %w", g.Name, err)
	}
	for _, grp := range out.AutoScalingGroups {
		if aws.ToString(grp.AutoScalingGroupName) == g.Name {
			ids := make([]string, len(grp.Instances))
			for i, in := range grp.Instances {
				ids[i] = aws.ToString(in.InstanceId)
			}
			g.seen.Listed(ids)
			return grp, nil
		}
	}
	return astypes.AutoScalingGroup{}, fmt.Errorf("plugin_config.name: auto scaling group %q not found in region %s: %w", g.Name, g.region, provider.ErrInvalidConfig)
}

// instanceState maps an ASG lifecycle state and the EC2 state to a provider state; ok
// is false for states the plugin does not report (warm pool).
func instanceState(lifecycle astypes.LifecycleState, ec2State ec2types.InstanceStateName) (provider.State, bool) {
	s := string(lifecycle)
	switch {
	case strings.HasPrefix(s, "Warmed"):
		return "", false
	case s == "Terminated" || s == "Detached":
		return provider.StateDeleted, true
	case strings.HasPrefix(s, "Terminating") || s == "Detaching":
		return provider.StateDeleting, true
	case strings.HasPrefix(s, "Pending"):
		return provider.StateCreating, true
	case s == "InService" || strings.Contains(s, "Standby"):
		switch ec2State {
		case "":
			// Not in EC2's (eventually consistent) listing yet: ConnectInfo would not
			// find it, so it is not ready.
			return provider.StateCreating, true
		case ec2types.InstanceStateNamePending:
			return provider.StateCreating, true
		case ec2types.InstanceStateNameShuttingDown, ec2types.InstanceStateNameStopping, ec2types.InstanceStateNameStopped:
			return provider.StateDeleting, true
		case ec2types.InstanceStateNameTerminated:
			return provider.StateDeleted, true
		}
		return provider.StateRunning, true
	}
	return "", false
}

// listInstances returns the EC2 view of the group's instances: one filtered, paginated
// DescribeInstances, never one call per instance.
func (g *InstanceGroup) listInstances(ctx context.Context) (map[string]ec2types.Instance, error) {
	out := map[string]ec2types.Instance{}
	p := ec2.NewDescribeInstancesPaginator(g.ec2, &ec2.DescribeInstancesInput{
		Filters:    []ec2types.Filter{{Name: aws.String("tag:" + tagGroupName), Values: []string{g.Name}}},
		MaxResults: aws.Int32(describePageSize),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describe instances of group %s: %w", g.Name, err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				out[aws.ToString(in.InstanceId)] = in
			}
		}
	}
	return out, nil
}

// Update reports every instance of the group. If either listing fails (after the
// SDK's retries) it returns the error and reports nothing: the host then keeps what it
// knew, so throttling never makes instances look gone.
func (g *InstanceGroup) Update(ctx context.Context, fn func(string, provider.State)) error {
	grp, err := g.describeGroup(ctx)
	if err != nil {
		return err
	}
	ec2s, err := g.listInstances(ctx)
	if err != nil {
		return err
	}
	for _, in := range grp.Instances {
		id := aws.ToString(in.InstanceId)
		var st ec2types.InstanceStateName
		if e, ok := ec2s[id]; ok && e.State != nil {
			st = e.State.Name
		}
		state, ok := instanceState(in.LifecycleState, st)
		if !ok {
			g.Log.Debug("instance state not reported", "instance", id, "lifecycle", in.LifecycleState, "ec2_state", st)
			continue
		}
		fn(id, state)
	}
	return nil
}

// Increase raises the group's desired capacity by delta, up to its MaxSize. It reads
// the desired capacity fresh every time: computing from a stale value could lower it,
// and a lowered desired capacity makes the group terminate instances itself.
func (g *InstanceGroup) Increase(ctx context.Context, delta int) (int, error) {
	if delta <= 0 {
		return 0, nil
	}
	g.scaling.Lock()
	defer g.scaling.Unlock()
	grp, err := g.describeGroup(ctx)
	if err != nil {
		return 0, err
	}
	desired, maxSize := int(aws.ToInt32(grp.DesiredCapacity)), int(aws.ToInt32(grp.MaxSize))
	target := min(desired+delta, maxSize)
	accepted := target - desired
	if accepted <= 0 {
		return 0, fmt.Errorf("group %s is at its maximum size %d: %w", g.Name, maxSize, provider.ErrCapacity)
	}
	_, err = g.as.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{
		AutoScalingGroupName: aws.String(g.Name),
		DesiredCapacity:      aws.Int32(int32(target)),
		HonorCooldown:        aws.Bool(false),
	})
	if err != nil {
		return 0, fmt.Errorf("set desired capacity of group %s to %d: %w", g.Name, target, err)
	}
	if accepted < delta {
		return accepted, fmt.Errorf("group %s: %d of %d instances fit under its maximum size %d: %w", g.Name, accepted, delta, maxSize, provider.ErrCapacity)
	}
	return accepted, nil
}

// decreaseWorkers bounds concurrent TerminateInstanceInAutoScalingGroup calls: AWS has
// no batch form, and a few at once keep a large scale-in fast without a burst that
// throttling would only slow down.
const decreaseWorkers = 4

// Decrease terminates the named instances of the group, decrementing its desired
// capacity so nothing replaces them. IDs that are not in the group are not touched and
// come back as ErrNotFound: TerminateInstanceInAutoScalingGroup takes no group name, so
// the plugin checks membership first.
func (g *InstanceGroup) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	g.scaling.Lock()
	defer g.scaling.Unlock()
	grp, err := g.describeGroup(ctx)
	if err != nil {
		return nil, err
	}
	members := map[string]bool{}
	for _, in := range grp.Instances {
		members[aws.ToString(in.InstanceId)] = true
	}
	var (
		mu   sync.Mutex
		done []string
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, decreaseWorkers)
	)
	throttled := false // once a call stays throttled after retries, the rest wait for the next Decrease
	for _, id := range ids {
		if !members[id] {
			errs = append(errs, fmt.Errorf("terminate %s: not in auto scaling group %s: %w", id, g.Name, provider.ErrNotFound))
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(id string) {
			defer wg.Done()
			defer func() { <-sem }()
			mu.Lock()
			skip := throttled
			mu.Unlock()
			if skip {
				mu.Lock()
				errs = append(errs, fmt.Errorf("terminate %s in group %s: not attempted: the API is throttling this plugin", id, g.Name))
				mu.Unlock()
				return
			}
			_, err := g.as.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
				InstanceId: aws.String(id), ShouldDecrementDesiredCapacity: aws.Bool(true)})
			mu.Lock()
			defer mu.Unlock()
			if isThrottle(err) {
				throttled = true
			}
			if err != nil {
				if isNotFound(err) {
					err = fmt.Errorf("%w: %w", err, provider.ErrNotFound)
				}
				errs = append(errs, fmt.Errorf("terminate %s in group %s: %w", id, g.Name, err))
				return
			}
			done = append(done, id)
		}(id)
	}
	wg.Wait()
	return done, errors.Join(errs...)
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// isThrottle reports whether err is AWS throttling that outlasted the SDK's retries
// (or exhausted its client-side retry quota).
func isThrottle(err error) bool {
	if err == nil {
		return false
	}
	var quota ratelimit.QuotaExceededError
	if errors.As(err, &quota) {
		return true
	}
	switch apiCode(err) {
	case "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException":
		return true
	}
	return false
}

func isNotFound(err error) bool {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return false
	}
	return ae.ErrorCode() == "InvalidInstanceID.NotFound" || ae.ErrorCode() == "InvalidInstanceID.Malformed" ||
		(ae.ErrorCode() == "ValidationError" && strings.Contains(ae.ErrorMessage(), "not found"))
}

// notFound is the error for an instance DescribeInstances does not show: ErrNotFound,
// unless the group's latest description has it. EC2 is eventually consistent, and the
// group lists a new instance before DescribeInstances shows it; such an instance is in
// the group but not ready yet (ErrInstanceUnhealthy). Update reports it as creating
// meanwhile, so the host should not ask.
func (g *InstanceGroup) notFound(id string) error {
	if g.seen.Member(id) {
		return fmt.Errorf("instance %s is not ready yet: auto scaling group %s lists it, but DescribeInstances does not show it yet: %w",
			id, g.Name, provider.ErrInstanceUnhealthy)
	}
	return fmt.Errorf("instance %s: %w", id, provider.ErrNotFound)
}

// describeInstance looks one instance of the group up; another group's or an unknown
// instance is ErrNotFound (see notFound).
func (g *InstanceGroup) describeInstance(ctx context.Context, id string) (ec2types.Instance, error) {
	out, err := g.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		if isNotFound(err) {
			return ec2types.Instance{}, g.notFound(id)
		}
		return ec2types.Instance{}, fmt.Errorf("describe instance %s: %w", id, err)
	}
	found := false
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if aws.ToString(in.InstanceId) != id {
				continue
			}
			found = true
			for _, t := range in.Tags {
				if aws.ToString(t.Key) == tagGroupName && aws.ToString(t.Value) == g.Name {
					return in, nil
				}
			}
		}
	}
	if !found {
		return ec2types.Instance{}, g.notFound(id)
	}
	return ec2types.Instance{}, fmt.Errorf("instance %s is not in auto scaling group %s: %w", id, g.Name, provider.ErrNotFound)
}

func tag(in ec2types.Instance, key string) string {
	for _, t := range in.Tags {
		if aws.ToString(t.Key) == key {
			return aws.ToString(t.Value)
		}
	}
	return ""
}

// ConnectInfo looks the instance up now (addresses change across a stop/start) and,
// unless use_static_credentials is set, pushes the plugin's ephemeral key to it with
// EC2 Instance Connect; the key is valid there for 60 seconds, long enough to connect.
func (g *InstanceGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	in, err := g.describeInstance(ctx, id)
	if err != nil {
		return provider.ConnectInfo{}, err
	}
	info := provider.ConnectInfo{ConnectorConfig: g.Settings.ConnectorConfig, ID: id}
	if info.OS == "" {
		info.OS = "linux"
	}
	if info.Arch == "" {
		info.Arch = "amd64"
		if strings.HasPrefix(string(in.Architecture), "arm64") {
			info.Arch = "arm64"
		}
	}
	if in.State == nil || in.State.Name != ec2types.InstanceStateNameRunning {
		state := ""
		if in.State != nil {
			state = string(in.State.Name)
		}
		return provider.ConnectInfo{}, fmt.Errorf("instance %s is %s, not running: %w", id, state, provider.ErrInstanceUnhealthy)
	}
	withPort := func(addr string) string {
		if addr == "" {
			return ""
		}
		if p := tag(in, TagSSHPort); p != "" {
			if n, err := strconv.Atoi(p); err == nil && n > 0 && n < 65536 {
				return net.JoinHostPort(addr, p)
			}
			g.Log.Warn("ignoring bad ssh port tag", "instance", id, "tag", TagSSHPort, "value", p)
		}
		return addr
	}
	info.InternalAddr = withPort(aws.ToString(in.PrivateIpAddress))
	info.ExternalAddr = withPort(aws.ToString(in.PublicIpAddress))
	if hk := tag(in, TagSSHHostKey); hk != "" {
		info.HostKey = []byte(hk)
	}
	if !g.Settings.UseStaticCredentials && (info.Protocol == "" || info.Protocol == provider.ProtocolSSH) {
		user := info.Username
		if user == "" {
			user = "ec2-user"
			info.Username = user
		}
		var zone *string
		if in.Placement != nil {
			zone = in.Placement.AvailabilityZone
		}
		_, err := g.connect.SendSSHPublicKey(ctx, &ec2instanceconnect.SendSSHPublicKeyInput{
			InstanceId:       aws.String(id),
			InstanceOSUser:   aws.String(user),
			SSHPublicKey:     aws.String(g.Key.Public),
			AvailabilityZone: zone,
		})
		if err != nil {
			return provider.ConnectInfo{}, fmt.Errorf("push ssh key to instance %s with EC2 Instance Connect: %w", id, err)
		}
		info.Key = g.Key.PEM
	}
	return info, nil
}

// Heartbeat reports an instance healthy while EC2 says it is running.
func (g *InstanceGroup) Heartbeat(ctx context.Context, id string) error {
	in, err := g.describeInstance(ctx, id)
	if err != nil {
		return err
	}
	if in.State == nil || in.State.Name != ec2types.InstanceStateNameRunning {
		return fmt.Errorf("instance %s is not running: %w", id, provider.ErrInstanceUnhealthy)
	}
	return nil
}

// Shutdown has nothing to free: the SDK clients hold only idle connections, and the
// ephemeral key lives in memory only. It never deletes instances.
func (g *InstanceGroup) Shutdown(context.Context) error { return nil }
