package aws

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/awsfake"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// start configures and initialises an in-process plugin against env.
func start(t *testing.T, env *awsfake.Env, cc provider.ConnectorConfig) *InstanceGroup {
	t.Helper()
	g := New()
	if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
		t.Fatalf("decode plugin_config: %v", err)
	}
	if _, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: cc}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return g
}

func list(t *testing.T, g *InstanceGroup) map[string]provider.State {
	t.Helper()
	out := map[string]provider.State{}
	if err := g.Update(context.Background(), func(id string, s provider.State) { out[id] = s }); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return out
}

func ids(m map[string]provider.State) []string {
	var out []string
	for id := range m {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

var static = provider.ConnectorConfig{Username: "ec2-user", UseStaticCredentials: true}

// TestConformance runs the conformance kit at L1 against the built plugin binary,
// launched as the runner launches it, talking to the fake AWS through the real SDK. Its
// VMs are SSH servers, so L1.connect dials real endpoints; credentials are pushed with
// Instance Connect on every ConnectInfo.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	env := awsfake.Start(t, awsfake.EnvOptions{SSH: true})
	cloudtest.RunConformance(t, env.Cloud, env.Group, conformance.Config{
		Binary:        conformancetest.Build(t, "./cmd/fleeting-plugin-aws"),
		PluginConfig:  env.PluginConfig,
		Connector:     provider.ConnectorConfig{Username: "ec2-user"},
		L1:            true,
		BadConfig:     json.RawMessage(`{"name": 5, "regoin": "us-east-1"}`),
		BadConfigWant: []string{"plugin_config.name", `plugin_config.regoin: unknown key`},
	})
}

func TestLifecycleStates(t *testing.T) {
	opts, clock := cloudtest.LifecycleCloud()
	env := awsfake.Start(t, awsfake.EnvOptions{Cloud: opts})
	g := start(t, env, static)
	ctx := context.Background()
	if n, err := g.Increase(ctx, 3); n != 3 || err != nil {
		t.Fatalf("Increase(3) = %d, %v", n, err)
	}
	cloudtest.CheckLifecycle(t, g, clock, env.Cloud)
	if grp, _ := env.Cloud.GetGroup(env.Group); grp.Desired != 2 {
		t.Errorf("desired = %d, want 2 (Decrease decrements)", grp.Desired)
	}
}

func TestStateMapping(t *testing.T) {
	cases := []struct {
		lifecycle, ec2 string
		want           provider.State
		ok             bool
	}{
		{"Pending", "pending", provider.StateCreating, true},
		{"Pending:Wait", "running", provider.StateCreating, true},
		{"InService", "running", provider.StateRunning, true},
		{"InService", "pending", provider.StateCreating, true},
		{"InService", "shutting-down", provider.StateDeleting, true},
		{"InService", "", provider.StateCreating, true}, // not yet visible in EC2
		{"Standby", "running", provider.StateRunning, true},
		{"Terminating", "running", provider.StateDeleting, true},
		{"Terminating:Proceed", "shutting-down", provider.StateDeleting, true},
		{"Terminated", "terminated", provider.StateDeleted, true},
		{"Detaching", "running", provider.StateDeleting, true},
		{"Warmed:Stopped", "stopped", "", false},
		{"SomethingNew", "running", "", false},
	}
	for _, c := range cases {
		got, ok := instanceState(astypesLifecycle(c.lifecycle), ec2State(c.ec2))
		if got != c.want || ok != c.ok {
			t.Errorf("%s/%s = %s,%v; want %s,%v", c.lifecycle, c.ec2, got, ok, c.want, c.ok)
		}
	}
}

// TestDecreaseSubsetAndUnknown: only the named instances of this group are touched.
func TestDecreaseSubsetAndUnknown(t *testing.T) {
	env := awsfake.Start(t, awsfake.EnvOptions{})
	if err := env.Cloud.CreateGroup(cloudsim.Group{Name: "other", Max: 5, Desired: 1}); err != nil {
		t.Fatal(err)
	}
	g := start(t, env, static)
	ctx := context.Background()
	if _, err := g.Increase(ctx, 5); err != nil {
		t.Fatal(err)
	}
	all := ids(list(t, g))
	other, _ := env.Cloud.VMs("other")
	done, err := g.Decrease(ctx, []string{all[1], all[3], "i-0000000000000dead", other[0].ID})
	if !slices.Equal(sorted(done), []string{all[1], all[3]}) {
		t.Errorf("done = %v, want %v", done, []string{all[1], all[3]})
	}
	if !errors.Is(err, provider.ErrNotFound) || !strings.Contains(err.Error(), "i-0000000000000dead") || !strings.Contains(err.Error(), other[0].ID) {
		t.Errorf("error = %v, want ErrNotFound naming both foreign IDs", err)
	}
	left := list(t, g)
	for _, id := range []string{all[0], all[2], all[4]} {
		if left[id] != provider.StateRunning {
			t.Errorf("%s is %q, want running", id, left[id])
		}
	}
	if vm, _ := env.Cloud.GetVM(other[0].ID); vm.State != cloudsim.Running {
		t.Errorf("the other group's VM is %s", vm.State)
	}
	if d, err := g.Decrease(ctx, nil); d != nil || err != nil {
		t.Errorf("empty Decrease = %v, %v", d, err)
	}
	if err := env.Cloud.Check(); err != nil {
		t.Error(err)
	}
}

func sorted(s []string) []string { s = slices.Clone(s); sort.Strings(s); return s }

// TestUpdatePaginates: with more instances than fit a page, Update makes one
// DescribeAutoScalingGroups and one paginated DescribeInstances listing, never a call
// per instance.
func TestUpdatePaginates(t *testing.T) {
	env := awsfake.Start(t, awsfake.EnvOptions{Group: cloudsim.Group{Name: "big", Max: 50, Desired: 23,
		Settings: cloudsim.Settings{ScaleInProtection: true}}})
	env.Fake.PageSize = 5
	g := start(t, env, static)
	env.Cloud.ResetCalls()
	got := list(t, g)
	if len(got) != 23 {
		t.Fatalf("Update listed %d instances, want 23", len(got))
	}
	calls := env.Cloud.Calls()
	if calls["DescribeAutoScalingGroups"] != 1 || calls["DescribeInstances"] != 5 || len(calls) != 2 {
		t.Errorf("calls = %v, want 1 DescribeAutoScalingGroups and 5 DescribeInstances pages", calls)
	}
}

// TestFailingAPINeverForgets: whatever call fails or is throttled past the SDK's
// retries, Update reports an error (not fewer instances), Decrease terminates nothing it
// did not report, and no running instance is deleted.
func TestFailingAPINeverForgets(t *testing.T) {
	throttled := &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Rate exceeded"}
	retried := defaultRetryMaxAttempts // the SDK retried before giving up
	cloudtest.Faults(t, func(t *testing.T) (provider.InstanceGroup, *cloudsim.Cloud) {
		env := awsfake.Start(t, awsfake.EnvOptions{})
		return start(t, env, static), env.Cloud
	}, "TerminateInstanceInAutoScalingGroup", []cloudtest.Fault{
		{Name: "groups throttled", Op: "DescribeAutoScalingGroups", Err: throttled, Listing: true, Decrease: true, MinCalls: retried},
		{Name: "instances throttled", Op: "DescribeInstances", Err: throttled, Listing: true, MinCalls: retried},
		{Name: "instances failing", Op: "DescribeInstances", Err: &cloudsim.Error{Kind: cloudsim.KindInternal, Message: "boom"}, Listing: true},
		{Name: "terminate throttled", Op: "TerminateInstanceInAutoScalingGroup", Err: throttled, Decrease: true, MinCalls: retried},
		{Name: "set desired throttled", Op: "SetDesiredCapacity", Err: throttled, Increase: true, MinCalls: retried},
	})
}

func TestIncreaseCapsAtMaxSize(t *testing.T) {
	env := awsfake.Start(t, awsfake.EnvOptions{Group: cloudsim.Group{Name: "small", Max: 3, Settings: cloudsim.Settings{ScaleInProtection: true}}})
	g := start(t, env, static)
	ctx := context.Background()
	n, err := g.Increase(ctx, 5)
	if n != 3 || !errors.Is(err, provider.ErrCapacity) {
		t.Errorf("Increase(5) on max 3 = %d, %v; want 3 and ErrCapacity", n, err)
	}
	n, err = g.Increase(ctx, 1)
	if n != 0 || !errors.Is(err, provider.ErrCapacity) {
		t.Errorf("Increase(1) on a full group = %d, %v", n, err)
	}
}

func TestInitErrors(t *testing.T) {
	env := awsfake.Start(t, awsfake.EnvOptions{})
	cases := []struct {
		name   string
		mutate func(map[string]any)
		want   string
	}{
		{"missing group", func(m map[string]any) { m["name"] = "nope" }, `auto scaling group "nope" not found`},
		{"missing profile", func(m map[string]any) { m["profile"] = "nope" }, "load AWS configuration"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var m map[string]any
			_ = json.Unmarshal(env.PluginConfig, &m)
			c.mutate(m)
			raw, _ := json.Marshal(m)
			g := New()
			if err := plugin.DecodeConfig(raw, g); err != nil {
				t.Fatal(err)
			}
			_, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: static})
			if !errors.Is(err, provider.ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Init = %v; want ErrInvalidConfig containing %q", err, c.want)
			}
		})
	}
	bad := New()
	err := plugin.DecodeConfig([]byte(`{"endpoint": "not a url", "retry_max_backoff": "soon"}`), bad)
	for _, want := range []string{"plugin_config.name: required", "plugin_config.endpoint", "plugin_config.retry_max_backoff"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v; want it to mention %q", err, want)
		}
	}
}

// TestJobOverSSH runs a real command over SSH, with the connector, on a VM that came from
// the plugin and the simulated cloud, authenticated with the key the plugin pushed
// through EC2 Instance Connect.
func TestJobOverSSH(t *testing.T) {
	env := awsfake.Start(t, awsfake.EnvOptions{SSH: true})
	g := start(t, env, provider.ConnectorConfig{Username: "ec2-user", Timeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := g.Increase(ctx, 1); err != nil {
		t.Fatal(err)
	}
	var id string
	for id == "" && ctx.Err() == nil {
		for i, s := range list(t, g) {
			if s == provider.StateRunning {
				id = i
			}
		}
	}
	info, err := g.ConnectInfo(ctx, id)
	if err != nil {
		t.Fatalf("ConnectInfo: %v", err)
	}
	if len(info.Key) == 0 || len(info.HostKey) == 0 || !strings.HasPrefix(info.InternalAddr, "127.0.0.1:") {
		t.Fatalf("ConnectInfo = %+v; want a pushed key, a host key and a loopback address with port", info)
	}
	// A stranger's key is refused: only the pushed (or static) keys log in.
	stranger := info
	_, stranger.Key, _ = cloudsim.NewClientKey()
	stranger.Timeout = 2 * time.Second
	cloudtest.CheckJobOverSSH(ctx, t, g, id, info, stranger, false)
}

func astypesLifecycle(s string) astypes.LifecycleState { return astypes.LifecycleState(s) }
func ec2State(s string) ec2types.InstanceStateName     { return ec2types.InstanceStateName(s) }

// TestDecreaseBacksOffWhenThrottled: once a terminate stays throttled after the SDK's
// retries, Decrease stops sending more and reports the rest as not attempted, so a
// throttling storm is not made worse; the host retries them with its next Decrease.
func TestDecreaseBacksOffWhenThrottled(t *testing.T) {
	env := awsfake.Start(t, awsfake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 20, Desired: 20,
		Settings: cloudsim.Settings{ScaleInProtection: true}}})
	g := start(t, env, static)
	all := ids(list(t, g))
	env.Cloud.ResetCalls() // Init's doctor probed TerminateInstanceInAutoScalingGroup once
	env.Cloud.Inject("TerminateInstanceInAutoScalingGroup", -1, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Rate exceeded"})
	done, err := g.Decrease(context.Background(), all)
	if len(done) != 0 || err == nil {
		t.Fatalf("Decrease = %v, %v; want nothing done and an error", done, err)
	}
	if n := strings.Count(err.Error(), "not attempted"); n < len(all)-decreaseWorkers {
		t.Errorf("%d instances reported as not attempted, want at least %d", n, len(all)-decreaseWorkers)
	}
	if n := env.Cloud.Calls()["TerminateInstanceInAutoScalingGroup"]; n > decreaseWorkers*defaultRetryMaxAttempts {
		t.Errorf("%d terminate calls under throttling, want at most %d", n, decreaseWorkers*defaultRetryMaxAttempts)
	}
	env.Cloud.ClearFaults()
	if got := list(t, g); len(got) != len(all) {
		t.Errorf("after the storm %d instances listed, want %d", len(got), len(all))
	}
	done, err = g.Decrease(context.Background(), all)
	if len(done) != len(all) || err != nil {
		t.Errorf("Decrease after the storm = %d done, %v", len(done), err)
	}
}

// TestExternalRemoval: an instance the cloud removes by itself (spot reclaim) is
// reported deleting and then not at all; the group replaces it.
func TestExternalRemoval(t *testing.T) {
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	env := awsfake.Start(t, awsfake.EnvOptions{Cloud: cloudsim.Options{Clock: clock, StopDelay: cloudsim.Fixed(time.Minute)},
		Group: cloudsim.Group{Name: "ci", Max: 5, Desired: 2, Settings: cloudsim.Settings{ScaleInProtection: true}}})
	g := start(t, env, static)
	victim := ids(list(t, g))[0]
	if err := env.Cloud.Reclaim(victim, "spot"); err != nil {
		t.Fatal(err)
	}
	got := list(t, g)
	if got[victim] != provider.StateDeleting || len(got) != 3 {
		t.Errorf("after reclaim: %v; want the victim deleting and a replacement", got)
	}
	clock.Advance(time.Minute)
	got = list(t, g)
	if _, ok := got[victim]; ok || len(got) != 2 {
		t.Errorf("after the reclaim finished: %v", got)
	}
	if _, err := g.ConnectInfo(context.Background(), victim); err == nil {
		t.Error("ConnectInfo of a reclaimed instance succeeded")
	}
	if err := env.Cloud.Check(); err != nil {
		t.Error(err)
	}
}

// TestConformanceInProcess runs the kit in process as well, which adds L0.panic.
func TestConformanceInProcess(t *testing.T) {
	env := awsfake.Start(t, awsfake.EnvOptions{SSH: true})
	cloudtest.RunConformance(t, env.Cloud, env.Group, conformance.Config{
		New:          func() provider.InstanceGroup { return New() },
		PluginConfig: env.PluginConfig,
		Connector:    provider.ConnectorConfig{Username: "ec2-user"},
		L1:           true,
	})
}

// TestEventualConsistency: an instance the group lists before EC2 does is reported as
// creating, not running, so the host does not try to connect to it yet; asked anyway,
// Heartbeat and ConnectInfo say it is not ready yet (ErrInstanceUnhealthy), not that it
// is unknown (ErrNotFound).
func TestEventualConsistency(t *testing.T) {
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	env := awsfake.Start(t, awsfake.EnvOptions{Cloud: cloudsim.Options{Clock: clock, ListLag: 15 * time.Second}})
	g := start(t, env, static)
	if _, err := g.Increase(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	for id, s := range list(t, g) {
		if s != provider.StateCreating {
			t.Errorf("%s is %s while EC2 does not list it yet, want creating", id, s)
		}
		if _, err := g.ConnectInfo(context.Background(), id); !errors.Is(err, provider.ErrInstanceUnhealthy) || errors.Is(err, provider.ErrNotFound) {
			t.Errorf("ConnectInfo during the lag = %v, want not ready yet (ErrInstanceUnhealthy, not ErrNotFound)", err)
		}
		if err := g.Heartbeat(context.Background(), id); !errors.Is(err, provider.ErrInstanceUnhealthy) || errors.Is(err, provider.ErrNotFound) ||
			!strings.Contains(err.Error(), "not ready yet") {
			t.Errorf("Heartbeat during the lag = %v, want not ready yet (ErrInstanceUnhealthy, not ErrNotFound)", err)
		}
	}
	if err := g.Heartbeat(context.Background(), "i-0000000000000fff"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("Heartbeat of an instance not in the group = %v, want ErrNotFound", err)
	}
	clock.Advance(15 * time.Second)
	for id, s := range list(t, g) {
		if s != provider.StateRunning {
			t.Errorf("%s is %s after the lag, want running", id, s)
		}
	}
}
