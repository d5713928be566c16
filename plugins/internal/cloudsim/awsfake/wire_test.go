package awsfake

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"
	"github.com/aws/smithy-go"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

func clients(t *testing.T, f *Fake, retryer func() aws.Retryer) (*autoscaling.Client, *ec2.Client, *ec2instanceconnect.Client) {
	t.Helper()
	cfg := aws.Config{Region: "us-east-1", Credentials: aws.AnonymousCredentials{}, Retryer: retryer,
		HTTPClient: bufferedBodyClient{}}
	return autoscaling.NewFromConfig(cfg, func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(f.URL()) }),
		ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(f.URL()) }),
		ec2instanceconnect.NewFromConfig(cfg, func(o *ec2instanceconnect.Options) { o.BaseEndpoint = aws.String(f.URL()) })
}

// bufferedBodyClient gives the transport its own copy of the request body, as the aws
// plugin does, to avoid the SDK's request-body close race (aws/aws-sdk-go-v2#2737)
// that makes loopback calls fail now and then with "use of closed network connection".
type bufferedBodyClient struct{}

func (bufferedBodyClient) Do(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody {
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		req = req.Clone(req.Context())
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	return http.DefaultClient.Do(req)
}

func nop() aws.Retryer { return aws.NopRetryer{} }

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// TestWireContract drives every operation the plugin uses through the pinned SDK
// clients and checks the decoded values: if an SDK upgrade changes the protocol, this
// is the test that fails.
func TestWireContract(t *testing.T) {
	ctx := context.Background()
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	cloud := cloudsim.New(cloudsim.Options{Clock: clock, BootDelay: cloudsim.Fixed(time.Minute), NewID: NewID, Families: Families})
	if err := cloud.CreateGroup(cloudsim.Group{Name: "ci", Max: 10, Settings: cloudsim.Settings{
		ScaleInProtection: true, Policies: []string{"cpu"}}}); err != nil {
		t.Fatal(err)
	}
	f := New(cloud)
	defer f.Close()
	f.PageSize = 2
	as, ec, ic := clients(t, f, nop)

	if _, err := as.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("ci"), DesiredCapacity: aws.Int32(3)}); err != nil {
		t.Fatalf("SetDesiredCapacity: %v", err)
	}
	out, err := as.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"ci"}})
	if err != nil {
		t.Fatalf("DescribeAutoScalingGroups: %v", err)
	}
	if len(out.AutoScalingGroups) != 1 {
		t.Fatalf("groups = %d, want 1", len(out.AutoScalingGroups))
	}
	g := out.AutoScalingGroups[0]
	if aws.ToInt32(g.DesiredCapacity) != 3 || aws.ToInt32(g.MaxSize) != 10 || !aws.ToBool(g.NewInstancesProtectedFromScaleIn) ||
		len(g.Instances) != 3 || len(g.SuspendedProcesses) != 1 || aws.ToString(g.SuspendedProcesses[0].ProcessName) != "AZRebalance" {
		t.Fatalf("decoded group = %+v", g)
	}
	for _, in := range g.Instances {
		if in.LifecycleState != "Pending" || aws.ToString(in.InstanceId) == "" {
			t.Errorf("instance %+v, want Pending with an ID", in)
		}
	}
	pol, err := as.DescribePolicies(ctx, &autoscaling.DescribePoliciesInput{AutoScalingGroupName: aws.String("ci")})
	if err != nil || len(pol.ScalingPolicies) != 1 || aws.ToString(pol.ScalingPolicies[0].PolicyName) != "cpu" {
		t.Fatalf("DescribePolicies = %+v, %v", pol, err)
	}

	clock.Advance(time.Minute)
	pages := 0
	var ids []string
	p := ec2.NewDescribeInstancesPaginator(ec, &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{{Name: aws.String("tag:" + TagGroupName), Values: []string{"ci"}}}})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatalf("DescribeInstances page %d: %v", pages, err)
		}
		pages++
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				ids = append(ids, aws.ToString(in.InstanceId))
				if in.State.Name != ec2types.InstanceStateNameRunning || aws.ToInt32(in.State.Code) != 16 ||
					aws.ToString(in.PrivateIpAddress) == "" || aws.ToString(in.PublicIpAddress) == "" {
					t.Errorf("instance %s: state %v, private %q, public %q", aws.ToString(in.InstanceId), in.State.Name,
						aws.ToString(in.PrivateIpAddress), aws.ToString(in.PublicIpAddress))
				}
			}
		}
	}
	if pages != 2 || len(ids) != 3 {
		t.Fatalf("DescribeInstances: %d pages, %d instances; want 2 pages, 3 instances", pages, len(ids))
	}

	term, err := as.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(ids[0]), ShouldDecrementDesiredCapacity: aws.Bool(true)})
	if err != nil || term.Activity == nil || term.Activity.StatusCode != "InProgress" {
		t.Fatalf("TerminateInstanceInAutoScalingGroup = %+v, %v", term, err)
	}
	if gr, _ := cloud.GetGroup("ci"); gr.Desired != 2 {
		t.Errorf("desired after decrementing terminate = %d, want 2", gr.Desired)
	}

	if _, err := ic.SendSSHPublicKey(ctx, &ec2instanceconnect.SendSSHPublicKeyInput{InstanceId: aws.String(ids[1]),
		InstanceOSUser: aws.String("ec2-user"), SSHPublicKey: aws.String("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXAMPLE")}); err != nil {
		t.Fatalf("SendSSHPublicKey: %v", err)
	}

	// Errors decode with their codes.
	errCases := []struct {
		name string
		call func() error
		want string
	}{
		{"autoscaling validation", func() error {
			_, err := as.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String("ci"), DesiredCapacity: aws.Int32(11)})
			return err
		}, "ValidationError"},
		{"ec2 not found", func() error {
			_, err := ec.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{"i-0000000000000dead"}})
			return err
		}, "InvalidInstanceID.NotFound"},
		{"ec2 dry run", func() error {
			_, err := ec.DescribeInstances(ctx, &ec2.DescribeInstancesInput{DryRun: aws.Bool(true)})
			return err
		}, "DryRunOperation"},
		{"instance connect not found", func() error {
			_, err := ic.SendSSHPublicKey(ctx, &ec2instanceconnect.SendSSHPublicKeyInput{InstanceId: aws.String("i-0000000000000dead"),
				InstanceOSUser: aws.String("u"), SSHPublicKey: aws.String("ssh-ed25519 AAAA")})
			return err
		}, "EC2InstanceNotFoundException"},
		{"autoscaling throttled", func() error {
			cloud.Inject("DescribeAutoScalingGroups", 1, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Rate exceeded"})
			_, err := as.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"ci"}})
			return err
		}, "Throttling"},
		{"ec2 throttled", func() error {
			cloud.Inject("DescribeInstances", 1, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Request limit exceeded."})
			_, err := ec.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
			return err
		}, "RequestLimitExceeded"},
		{"access denied", func() error {
			cloud.Inject("SendSSHPublicKey", 1, &cloudsim.Error{Kind: cloudsim.KindDenied, Message: "not allowed"})
			_, err := ic.SendSSHPublicKey(ctx, &ec2instanceconnect.SendSSHPublicKeyInput{InstanceId: aws.String(ids[1]),
				InstanceOSUser: aws.String("u"), SSHPublicKey: aws.String("ssh-ed25519 AAAA")})
			return err
		}, "AccessDeniedException"},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			if got := apiCode(tc.call()); got != tc.want {
				t.Errorf("error code = %q, want %q", got, tc.want)
			}
		})
	}

	// The SDK's standard retryer retries a throttled answer, so one throttle is invisible.
	asRetry, _, _ := clients(t, f, func() aws.Retryer { return retry.AddWithMaxBackoffDelay(retry.NewStandard(), 5*time.Millisecond) })
	cloud.Inject("DescribePolicies", 2, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Rate exceeded"})
	before := cloud.Calls()["DescribePolicies"]
	if _, err := asRetry.DescribePolicies(ctx, &autoscaling.DescribePoliciesInput{AutoScalingGroupName: aws.String("ci")}); err != nil {
		t.Fatalf("DescribePolicies with retries: %v", err)
	}
	if n := cloud.Calls()["DescribePolicies"] - before; n != 3 {
		t.Errorf("calls with two throttles = %d, want 3", n)
	}
	if err := cloud.Check(); err != nil {
		t.Errorf("cloud accounting: %v", err)
	}
}
