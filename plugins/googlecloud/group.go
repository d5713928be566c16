// Package googlecloud is the Flotilla provider plugin for Google Cloud: a zonal managed
// instance group (MIG) is the instance group. It is built as fleeting-plugin-googlecloud
// (cmd/fleeting-plugin-googlecloud) and imports only sdk/ and the Google Cloud SDK, like
// any third-party plugin.
//
// Increase resizes the MIG (targetSize + n); Decrease deletes the named instances with
// deleteInstances, which also lowers targetSize so nothing replaces them; Update lists
// the MIG once per call (listManagedInstances, paginated) and maps currentAction and
// instanceStatus to provider states. Compute Engine is eventually consistent: the MIG
// can list an instance as RUNNING before instances.get shows it, so Update reports a
// running instance as creating until one instances.get has shown it running with an
// address (once per instance). ConnectInfo looks the instance up (instances.get) for
// its internal and external address and, unless use_static_credentials is set, adds the
// plugin's ephemeral public key to the instance's `ssh-keys` metadata. Every
// mutation's operation is waited on, and an operation that fails is an error. Rate
// limiting (429 rateLimitExceeded), 5xx and dropped connections are retried with
// jittered backoff; a listing that still fails is an error, never a report that
// instances are gone. See docs/plugin-googlecloud.md.
package googlecloud

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"

	compute "cloud.google.com/go/compute/apiv1"
	"cloud.google.com/go/compute/apiv1/computepb"
	"github.com/googleapis/gax-go/v2"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/api/cloudresourcemanager/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/protobuf/proto"

	"github.com/flotilla-ci/flotilla/plugins/internal/visibility"
	"github.com/flotilla-ci/flotilla/sdk/instancegroup"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Version identifies this build of the plugin. Set its fields with -ldflags.
var Version = plugin.VersionInfo{Name: "fleeting-plugin-googlecloud", Version: "0.1.0"}

// Instance metadata the plugin reads when present. MetaSSHPort lets an image serve SSH
// on a port other than 22 (the simulated cloud uses it); MetaSSHHostKey pins the host
// key. MetaCreatedBy is set by GCP on every MIG instance and tells whose it is.
const (
	MetaSSHPort    = "flotilla-ssh-port"
	MetaSSHHostKey = "flotilla-ssh-host-key"
	MetaCreatedBy  = "created-by"
	MetaSSHKeys    = "ssh-keys"
)

// MaxGroupSize is the most instances a zonal MIG holds.
const MaxGroupSize = 1000

// listPageSize is the listManagedInstances page size: GCP's maximum.
const listPageSize = 500

// deleteBatchSize is the most instances one deleteInstances call names (GCP's limit).
var deleteBatchSize = 1000

// defaultUsername is the login the ephemeral key is added for when the connector
// configuration names none: GCP images have no fixed default user, and the guest
// environment creates the user named in `ssh-keys`.
const defaultUsername = "flotilla"

var (
	zonePattern   = regexp.MustCompile(`^[a-z]+-[a-z]+[0-9]+-[a-z]$`)
	regionPattern = regexp.MustCompile(`^[a-z]+-[a-z]+[0-9]+$`)
)

// InstanceGroup is the Google Cloud provider. Its JSON-tagged fields are plugin_config.
type InstanceGroup struct {
	// Name is the managed instance group's name.
	Name string `json:"name"`
	// Project is the project ID the group is in.
	Project string `json:"project"`
	// Zone is the group's zone, such as europe-west1-b (a zonal MIG).
	Zone string `json:"zone"`
	// CredentialsFile is a service account key or gcloud's application default
	// credentials; empty uses Application Default Credentials.
	CredentialsFile string `json:"credentials_file"`
	// Endpoint overrides the Compute Engine (and Resource Manager) endpoint: for tests
	// against a fake, or a Private Service Connect endpoint.
	Endpoint string `json:"endpoint"`
	// RetryMaxBackoff bounds the backoff between retries of a throttled call; default
	// 20s. Tests set it low.
	RetryMaxBackoff string `json:"retry_max_backoff"`
	// RetryMaxAttempts is how many times one call is tried; default 5.
	RetryMaxAttempts int `json:"retry_max_attempts"`
	// MaxSize caps the group's targetSize; default (0) MaxGroupSize, the zonal limit.
	MaxSize int `json:"max_size"`

	// Base holds the logger, settings and the ephemeral key added to instance
	// metadata.
	instancegroup.Base

	igm       *compute.InstanceGroupManagersClient
	instances *compute.InstancesClient
	ops       *compute.ZoneOperationsClient
	crm       *cloudresourcemanager.Service

	// scaling serialises Increase and Decrease: both read and change targetSize.
	scaling sync.Mutex

	// seen: the instances of the group's latest listing, and those instances.get has
	// shown running with an address.
	seen visibility.Tracker
}

// New returns an unconfigured group, as plugin.Main wants it.
func New() *InstanceGroup { return &InstanceGroup{} }

// Validate reports every configuration problem at once, each naming its key.
func (g *InstanceGroup) Validate() error {
	var p instancegroup.Problems
	p.Required("name", g.Name, "the managed instance group's name")
	p.Required("project", g.Project, "the ID of the project the group is in")
	switch {
	case g.Zone == "":
		p.Add("zone", "required: the zone of the (zonal) managed instance group, such as europe-west1-b")
	case regionPattern.MatchString(g.Zone):
		p.Add("zone", "%q is a region: set the zone of a zonal managed instance group, such as %s-b (regional groups spread instances over zones and are not supported)", g.Zone, g.Zone)
	case !zonePattern.MatchString(g.Zone):
		p.Add("zone", "%q is not a zone name such as europe-west1-b", g.Zone)
	}
	p.URL("endpoint", g.Endpoint, "https://compute.example:443")
	p.PositiveDuration("retry_max_backoff", g.RetryMaxBackoff)
	if g.MaxSize < 0 || g.MaxSize > MaxGroupSize {
		p.Add("max_size", "%d is outside 0..%d (0 means the zonal limit %d)", g.MaxSize, MaxGroupSize, MaxGroupSize)
	}
	p.NotNegative("retry_max_attempts", g.RetryMaxAttempts)
	return p.Err()
}

// spec is the Google Cloud part of the shared instance-group flow.
func (g *InstanceGroup) spec() instancegroup.Spec[*computepb.InstanceGroupManager] {
	return instancegroup.Spec[*computepb.InstanceGroupManager]{
		Group:         "managed instance group " + g.Name,
		Connect:       g.connectClients,
		Close:         g.closeClients,
		Describe:      g.getGroup,
		DescribeCheck: "get-group",
		DescribeFix:   "check plugin_config.name, project, zone and credentials_file, and grant compute.instanceGroupManagers.get",
		Check:         g.doctor,
		KeyComment:    "flotilla ephemeral",
		Config:        g,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&g.Name, "name", "", "managed instance group name")
			fs.StringVar(&g.Project, "project", "", "project ID")
			fs.StringVar(&g.Zone, "zone", "", "zone of the group")
			fs.StringVar(&g.CredentialsFile, "credentials-file", "", "credentials file (default: Application Default Credentials)")
			fs.StringVar(&g.Endpoint, "endpoint", "", "endpoint override")
		},
		StaticCredentialsUsage: "the connector uses static credentials: skip the setMetadata permission",
	}
}

// Init builds the SDK clients, checks the group with the doctor (warnings are logged;
// settings or missing permissions that would make jobs fail are an error), and makes
// the ephemeral SSH key.
func (g *InstanceGroup) Init(ctx context.Context, logger hclog.Logger, settings provider.Settings) (provider.ProviderInfo, error) {
	if _, err := instancegroup.Init(ctx, &g.Base, logger, settings, g.spec()); err != nil {
		return provider.ProviderInfo{}, err
	}
	return instancegroup.Info(Version, "googlecloud/"+g.Project+"/"+g.Zone+"/"+g.Name, g.maxSize()), nil
}

// maxSize is the most instances the plugin lets the group have.
func (g *InstanceGroup) maxSize() int {
	if g.MaxSize > 0 {
		return g.MaxSize
	}
	return MaxGroupSize
}

// getGroup fetches the MIG; a missing one is a configuration error.
func (g *InstanceGroup) getGroup(ctx context.Context) (*computepb.InstanceGroupManager, error) {
	m, err := g.igm.Get(ctx, &computepb.GetInstanceGroupManagerRequest{Project: g.Project, Zone: g.Zone, InstanceGroupManager: g.Name}, g.retry())
	if isNotFound(err) {
		return nil, fmt.Errorf("plugin_config.name: managed instance group %q not found in project %s, zone %s (only zonal groups are supported): %w",
			g.Name, g.Project, g.Zone, provider.ErrInvalidConfig)
	}
	if err != nil {
		return nil, fmt.Errorf("get managed instance group %s: %w", g.Name, err)
	}
	return m, nil
}

// instanceState maps a managed instance's currentAction and instance status to a
// provider state; ok is false for states the plugin does not report.
func instanceState(action, status string) (provider.State, bool) {
	switch action {
	case "CREATING", "CREATING_WITHOUT_RETRIES", "RECREATING", "REFRESHING", "RESTARTING", "STARTING", "RESUMING", "VERIFYING":
		return provider.StateCreating, true
	case "DELETING", "ABANDONING", "STOPPING", "SUSPENDING":
		return provider.StateDeleting, true
	case "NONE":
		switch status {
		case "RUNNING":
			return provider.StateRunning, true
		case "", "PROVISIONING", "STAGING":
			return provider.StateCreating, true
		case "STOPPING", "SUSPENDING":
			return provider.StateDeleting, true
		}
		// TERMINATED, SUSPENDED: a stopped instance of a standby pool, which the
		// plugin does not use (the doctor warns when the group has one).
		return "", false
	}
	return "", false
}

// listGroup returns the group's managed instances: one listing, paginated.
func (g *InstanceGroup) listGroup(ctx context.Context) ([]*computepb.ManagedInstance, error) {
	it := g.igm.ListManagedInstances(ctx, &computepb.ListManagedInstancesInstanceGroupManagersRequest{
		Project: g.Project, Zone: g.Zone, InstanceGroupManager: g.Name, MaxResults: proto.Uint32(listPageSize)}, g.retry())
	var out []*computepb.ManagedInstance
	for {
		mi, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if isNotFound(err) {
			return nil, fmt.Errorf("list instances of managed instance group %s: the group is gone: %w", g.Name, err)
		}
		if err != nil {
			return nil, fmt.Errorf("list instances of managed instance group %s: %w", g.Name, err)
		}
		out = append(out, mi)
	}
	names := make([]string, len(out))
	for i, mi := range out {
		names[i] = instanceName(mi)
	}
	g.seen.Listed(names)
	return out, nil
}

// lookVisible looks up instances the group lists as running but instances.get has
// not shown yet (see visibility.Tracker): one instances.get each, not retried.
func (g *InstanceGroup) lookVisible(ctx context.Context, ids []string) {
	g.seen.Check(ctx, ids, func(ctx context.Context, id string) error {
		in, err := g.getInstance(ctx, id, noRetry)
		if err == nil && (in.GetStatus() != "RUNNING" || internalIP(in) == "") {
			err = fmt.Errorf("instances.get shows it %s with address %q", in.GetStatus(), internalIP(in))
		}
		if err != nil {
			g.Log.Debug("running instance not ready yet: reported as creating", "instance", id, "reason", err)
		}
		return err
	})
}

// internalIP is the instance's primary internal address, "" if it has none yet.
func internalIP(in *computepb.Instance) string {
	if nics := in.GetNetworkInterfaces(); len(nics) > 0 {
		return nics[0].GetNetworkIP()
	}
	return ""
}

// instanceName is a managed instance's name: the last element of its URL.
func instanceName(mi *computepb.ManagedInstance) string {
	if n := mi.GetName(); n != "" {
		return n
	}
	u := mi.GetInstance()
	return u[strings.LastIndex(u, "/")+1:]
}

// Update reports every instance of the group. If the listing fails (after retries) it
// returns the error and reports nothing: the host then keeps what it knew, so
// throttling never makes instances look gone.
//
// An instance the group lists as running is reported as creating until instances.get
// shows it running with an address (lookVisible): the group's view is ahead of the
// instance's own, and the host would otherwise connect to it, fail its heartbeats on a
// lookup that does not find it yet, and replace it, over and over.
func (g *InstanceGroup) Update(ctx context.Context, fn func(string, provider.State)) error {
	list, err := g.listGroup(ctx)
	if err != nil {
		return err
	}
	var unseen []string
	for _, mi := range list {
		id := instanceName(mi)
		if state, _ := instanceState(mi.GetCurrentAction(), mi.GetInstanceStatus()); state == provider.StateRunning && !g.seen.Visible(id) {
			unseen = append(unseen, id)
		}
	}
	g.lookVisible(ctx, unseen)
	for _, mi := range list {
		id := instanceName(mi)
		state, ok := instanceState(mi.GetCurrentAction(), mi.GetInstanceStatus())
		if !ok {
			g.Log.Debug("instance state not reported", "instance", id, "current_action", mi.GetCurrentAction(), "instance_status", mi.GetInstanceStatus())
			continue
		}
		if state == provider.StateRunning && !g.seen.Visible(id) {
			state = provider.StateCreating
		}
		fn(id, state)
	}
	return nil
}

// waitOperation waits for a zonal operation to finish (zoneOperations.wait, which
// blocks on the server for up to two minutes per call) and returns its error, if any.
func (g *InstanceGroup) waitOperation(ctx context.Context, op *compute.Operation) error {
	p := op.Proto()
	for p.GetStatus() != computepb.Operation_DONE {
		next, err := g.ops.Wait(ctx, &computepb.WaitZoneOperationRequest{Project: g.Project, Zone: g.Zone, Operation: p.GetName()}, g.retry())
		if err != nil {
			return fmt.Errorf("wait for operation %s: %w", p.GetName(), err)
		}
		p = next
	}
	return operationError(p)
}

// OperationError is a GCP operation that finished with errors.
type OperationError struct {
	Operation string
	Status    int32    // the HTTP status the operation reports, 0 if none
	Codes     []string // such as ZONE_RESOURCE_POOL_EXHAUSTED
	Messages  []string
}

func (e *OperationError) Error() string {
	var parts []string
	for i, c := range e.Codes {
		parts = append(parts, c+": "+e.Messages[i])
	}
	return fmt.Sprintf("operation %s failed (HTTP %d): %s", e.Operation, e.Status, strings.Join(parts, "; "))
}

// operationError returns the error of a finished operation, nil if it succeeded.
func operationError(p *computepb.Operation) error {
	code := p.GetHttpErrorStatusCode()
	if len(p.GetError().GetErrors()) == 0 && (code == 0 || (code >= 200 && code < 300)) {
		return nil
	}
	e := &OperationError{Operation: p.GetName(), Status: code}
	for _, x := range p.GetError().GetErrors() {
		e.Codes = append(e.Codes, x.GetCode())
		e.Messages = append(e.Messages, x.GetMessage())
	}
	if len(e.Codes) == 0 {
		e.Codes, e.Messages = []string{"HTTP_ERROR"}, []string{p.GetHttpErrorMessage()}
	}
	return e
}

// Increase resizes the group to targetSize + delta, up to max_size. It reads
// targetSize fresh every time: resizing from a stale value could shrink the group, and
// a shrinking MIG deletes instances of its own choosing.
func (g *InstanceGroup) Increase(ctx context.Context, delta int) (int, error) {
	if delta <= 0 {
		return 0, nil
	}
	g.scaling.Lock()
	defer g.scaling.Unlock()
	m, err := g.getGroup(ctx)
	if err != nil {
		return 0, err
	}
	current := int(m.GetTargetSize())
	target := min(current+delta, g.maxSize())
	accepted := target - current
	if accepted <= 0 {
		return 0, fmt.Errorf("group %s is at its maximum size %d: %w", g.Name, g.maxSize(), provider.ErrCapacity)
	}
	op, err := g.igm.Resize(ctx, &computepb.ResizeInstanceGroupManagerRequest{Project: g.Project, Zone: g.Zone,
		InstanceGroupManager: g.Name, Size: int32(target), RequestId: proto.String(requestID())}, g.retry())
	if err != nil {
		return 0, fmt.Errorf("resize managed instance group %s to %d: %w", g.Name, target, err)
	}
	if err := g.waitOperation(ctx, op); err != nil {
		return 0, fmt.Errorf("resize managed instance group %s to %d: %w", g.Name, target, err)
	}
	if accepted < delta {
		return accepted, fmt.Errorf("group %s: %d of %d instances fit under its maximum size %d: %w", g.Name, accepted, delta, g.maxSize(), provider.ErrCapacity)
	}
	return accepted, nil
}

// Decrease deletes the named instances of the group with deleteInstances (in batches of
// up to 1000), which lowers targetSize so the group does not replace them. IDs that are
// not in the group are not touched and come back as ErrNotFound. Membership comes from
// the latest listing; only an ID it does not know costs a fresh one.
func (g *InstanceGroup) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	g.scaling.Lock()
	defer g.scaling.Unlock()
	known := true
	for _, id := range ids {
		known = known && g.seen.Member(id)
	}
	if !known {
		if _, err := g.listGroup(ctx); err != nil {
			return nil, err
		}
	}
	var errs []error
	var members []string
	for _, id := range ids {
		if g.seen.Member(id) {
			members = append(members, id)
		} else {
			errs = append(errs, fmt.Errorf("delete %s: not in managed instance group %s: %w", id, g.Name, provider.ErrNotFound))
		}
	}
	var done []string
	for start := 0; start < len(members); start += deleteBatchSize {
		batch := members[start:min(start+deleteBatchSize, len(members))]
		urls := make([]string, len(batch))
		for i, id := range batch {
			urls[i] = "zones/" + g.Zone + "/instances/" + id
		}
		op, err := g.igm.DeleteInstances(ctx, &computepb.DeleteInstancesInstanceGroupManagerRequest{
			Project: g.Project, Zone: g.Zone, InstanceGroupManager: g.Name, RequestId: proto.String(requestID()),
			InstanceGroupManagersDeleteInstancesRequestResource: &computepb.InstanceGroupManagersDeleteInstancesRequest{
				Instances: urls,
				// An instance that left the group since the listing (deleted by an
				// operator, say) must not make the whole batch fail.
				SkipInstancesOnValidationError: proto.Bool(true),
			}}, g.retry())
		if err == nil {
			err = g.waitOperation(ctx, op)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("delete %d instance(s) from managed instance group %s: %w", len(batch), g.Name, err))
			if isThrottle(err) {
				// Throttled past the retries: the rest waits for the next Decrease
				// rather than make the storm worse.
				if rest := len(members) - start - len(batch); rest > 0 {
					errs = append(errs, fmt.Errorf("delete %d more instance(s) from group %s: not attempted: the API is throttling this plugin", rest, g.Name))
				}
				break
			}
			continue
		}
		done = append(done, batch...)
		g.seen.Forget(batch)
	}
	return done, errors.Join(errs...)
}

// getInstance looks one instance of the group up with the retry call option given;
// another group's or an unknown instance is ErrNotFound. An instance the latest listing
// of the group has but instances.get does not find yet (eventual consistency) is not
// ready yet: ErrInstanceUnhealthy, not ErrNotFound, since it is in the group.
func (g *InstanceGroup) getInstance(ctx context.Context, id string, retry gax.CallOption) (*computepb.Instance, error) {
	in, err := g.instances.Get(ctx, &computepb.GetInstanceRequest{Project: g.Project, Zone: g.Zone, Instance: id}, retry)
	if isNotFound(err) {
		if g.seen.Member(id) {
			return nil, fmt.Errorf("instance %s is not ready yet: managed instance group %s lists it, but instances.get does not show it yet: %w",
				id, g.Name, provider.ErrInstanceUnhealthy)
		}
		return nil, fmt.Errorf("instance %s: %w", id, provider.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get instance %s: %w", id, err)
	}
	if !strings.HasSuffix(metadata(in, MetaCreatedBy), "/zones/"+g.Zone+"/instanceGroupManagers/"+g.Name) {
		return nil, fmt.Errorf("instance %s is not in managed instance group %s: %w", id, g.Name, provider.ErrNotFound)
	}
	return in, nil
}

func metadata(in *computepb.Instance, key string) string {
	for _, it := range in.GetMetadata().GetItems() {
		if it.GetKey() == key {
			return it.GetValue()
		}
	}
	return ""
}

// ConnectInfo looks the instance up now and, unless use_static_credentials is set,
// makes sure the plugin's ephemeral public key is in the instance's `ssh-keys` metadata
// for the connector's user (added once per instance; the guest environment installs
// it).
func (g *InstanceGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	in, err := g.getInstance(ctx, id, g.retry())
	if err != nil {
		return provider.ConnectInfo{}, err
	}
	if in.GetStatus() != "RUNNING" {
		return provider.ConnectInfo{}, fmt.Errorf("instance %s is %s, not RUNNING: %w", id, in.GetStatus(), provider.ErrInstanceUnhealthy)
	}
	info := provider.ConnectInfo{ConnectorConfig: g.Settings.ConnectorConfig, ID: id}
	if info.OS == "" {
		info.OS = "linux"
	}
	if info.Arch == "" {
		info.Arch = "amd64"
	}
	withPort := func(addr string) string {
		if addr == "" {
			return ""
		}
		if p := metadata(in, MetaSSHPort); p != "" {
			if n, err := strconv.Atoi(p); err == nil && n > 0 && n < 65536 {
				return net.JoinHostPort(addr, p)
			}
			g.Log.Warn("ignoring bad ssh port metadata", "instance", id, "key", MetaSSHPort, "value", p)
		}
		return addr
	}
	if nics := in.GetNetworkInterfaces(); len(nics) > 0 {
		info.InternalAddr = withPort(nics[0].GetNetworkIP())
		for _, ac := range nics[0].GetAccessConfigs() {
			if ip := ac.GetNatIP(); ip != "" {
				info.ExternalAddr = withPort(ip)
				break
			}
		}
	}
	if hk := metadata(in, MetaSSHHostKey); hk != "" {
		info.HostKey = []byte(hk)
	}
	if !g.Settings.UseStaticCredentials && (info.Protocol == "" || info.Protocol == provider.ProtocolSSH) {
		if info.Username == "" {
			info.Username = defaultUsername
		}
		if err := g.addSSHKey(ctx, in, info.Username); err != nil {
			return provider.ConnectInfo{}, err
		}
		info.Key = g.Key.PEM
	}
	return info, nil
}

// addSSHKey adds "user:key" to the instance's ssh-keys metadata unless it is there. A
// concurrent metadata change (412 conditionNotMet on the fingerprint) is retried with
// the instance read again.
func (g *InstanceGroup) addSSHKey(ctx context.Context, in *computepb.Instance, user string) error {
	line := user + ":" + g.Key.Public + " flotilla"
	for attempt := 0; ; attempt++ {
		cur := metadata(in, MetaSSHKeys)
		for _, l := range strings.Split(cur, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), user+":"+g.Key.Public) {
				return nil
			}
		}
		md := &computepb.Metadata{Fingerprint: proto.String(in.GetMetadata().GetFingerprint())}
		found := false
		for _, it := range in.GetMetadata().GetItems() {
			item := &computepb.Items{Key: proto.String(it.GetKey()), Value: proto.String(it.GetValue())}
			if it.GetKey() == MetaSSHKeys {
				item.Value = proto.String(strings.TrimRight(cur, "\n") + "\n" + line)
				found = true
			}
			md.Items = append(md.Items, item)
		}
		if !found {
			md.Items = append(md.Items, &computepb.Items{Key: proto.String(MetaSSHKeys), Value: proto.String(line)})
		}
		op, err := g.instances.SetMetadata(ctx, &computepb.SetMetadataInstanceRequest{Project: g.Project, Zone: g.Zone,
			Instance: in.GetName(), MetadataResource: md, RequestId: proto.String(requestID())}, g.retry())
		if err == nil {
			err = g.waitOperation(ctx, op)
		}
		if err == nil {
			return nil
		}
		if attempt >= 2 || !isConditionNotMet(err) {
			return fmt.Errorf("add the ephemeral ssh key to instance %s metadata: %w", in.GetName(), err)
		}
		if in, err = g.getInstance(ctx, in.GetName(), g.retry()); err != nil {
			return err
		}
	}
}

// isConditionNotMet reports a stale metadata fingerprint (HTTP 412, or 400
// conditionNotMet).
func isConditionNotMet(err error) bool {
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		return false
	}
	if ge.Code == http.StatusPreconditionFailed {
		return true
	}
	for _, e := range ge.Errors {
		if e.Reason == "conditionNotMet" {
			return true
		}
	}
	return false
}

// Heartbeat reports an instance healthy while GCP says it is RUNNING.
func (g *InstanceGroup) Heartbeat(ctx context.Context, id string) error {
	in, err := g.getInstance(ctx, id, g.retry())
	if err != nil {
		return err
	}
	if in.GetStatus() != "RUNNING" {
		return fmt.Errorf("instance %s is %s, not RUNNING: %w", id, in.GetStatus(), provider.ErrInstanceUnhealthy)
	}
	return nil
}

// Shutdown closes the clients. It never deletes instances; the ephemeral key lives in
// memory only.
func (g *InstanceGroup) Shutdown(context.Context) error { return g.closeClients() }
