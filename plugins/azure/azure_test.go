package azure

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/azurefake"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// static is the seed example's connector: a username and password on the image.
var static = provider.ConnectorConfig{Username: azurefake.Username, Password: azurefake.Password, UseStaticCredentials: true}

// start configures and initialises an in-process plugin against env.
func start(t testing.TB, env *azurefake.Env, cc provider.ConnectorConfig, tweak ...func(*InstanceGroup)) *InstanceGroup {
	t.Helper()
	g := New()
	if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
		t.Fatalf("decode plugin_config: %v", err)
	}
	for _, f := range tweak {
		f(g)
	}
	if _, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: cc}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return g
}

func list(t testing.TB, g *InstanceGroup) map[string]provider.State {
	t.Helper()
	out := map[string]provider.State{}
	if err := g.Update(context.Background(), func(id string, s provider.State) { out[id] = s }); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return out
}

func ids(m map[string]provider.State) []string {
	out := make([]string, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func sorted(s []string) []string { s = slices.Clone(s); sort.Strings(s); return s }

// TestConformance runs the conformance kit at L1 against the built plugin binary,
// launched as the runner launches it, talking to the fake ARM through the real SDK. Its
// VMs are SSH servers, so L1.connect dials real endpoints.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	env := azurefake.Start(t, azurefake.EnvOptions{SSH: true})
	cloudtest.RunConformance(t, env.Cloud, env.Group, conformance.Config{
		Binary:        conformancetest.Build(t, "./cmd/fleeting-plugin-azure"),
		PluginConfig:  env.PluginConfig,
		Connector:     static,
		L1:            true,
		BadConfig:     json.RawMessage(`{"name": 5, "subscripton_id": "x"}`),
		BadConfigWant: []string{"plugin_config.name", `plugin_config.subscripton_id: unknown key`},
	})
}

// TestConformanceInProcess runs the kit in process as well, which adds L0.panic.
func TestConformanceInProcess(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{SSH: true})
	cloudtest.RunConformance(t, env.Cloud, env.Group, conformance.Config{
		New:          func() provider.InstanceGroup { return New() },
		PluginConfig: env.PluginConfig,
		Connector:    static,
		L1:           true,
	})
}

func TestLifecycleStates(t *testing.T) {
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	env := azurefake.Start(t, azurefake.EnvOptions{Cloud: cloudsim.Options{Clock: clock,
		BootDelay: cloudsim.Fixed(40 * time.Second), StopDelay: cloudsim.Fixed(20 * time.Second)}})
	g := start(t, env, static)
	ctx := context.Background()
	if n, err := g.Increase(ctx, 3); n != 3 || err != nil {
		t.Fatalf("Increase(3) = %d, %v", n, err)
	}
	steps := []struct {
		advance time.Duration
		want    provider.State
	}{
		{0, provider.StateCreating},
		{39 * time.Second, provider.StateCreating},
		{time.Second, provider.StateRunning},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		got := list(t, g)
		if len(got) != 3 {
			t.Fatalf("after %v: %d instances, want 3", s.advance, len(got))
		}
		for id, st := range got {
			if st != s.want {
				t.Errorf("after +%v: %s is %s, want %s", s.advance, id, st, s.want)
			}
		}
	}
	all := ids(list(t, g))
	done, err := g.Decrease(ctx, all[:1])
	if err != nil || !slices.Equal(done, all[:1]) {
		t.Fatalf("Decrease = %v, %v", done, err)
	}
	if st := list(t, g)[all[0]]; st != provider.StateDeleting {
		t.Errorf("deleting instance is %s, want deleting", st)
	}
	env.Cloud.ResetCalls()
	if done, err := g.Decrease(ctx, all[:1]); err != nil || !slices.Equal(done, all[:1]) || env.Cloud.Calls()["VirtualMachineScaleSets.DeleteInstances"] != 0 {
		t.Errorf("Decrease of a deleting instance = %v, %v after %v; want it done without a call", done, err, env.Cloud.Calls())
	}
	clock.Advance(20 * time.Second)
	got := list(t, g)
	if _, ok := got[all[0]]; ok || len(got) != 2 {
		t.Errorf("after deletion: %v, want the other two only", got)
	}
	if grp, _ := env.Cloud.GetGroup(env.Group); grp.Desired != 2 {
		t.Errorf("capacity = %d, want 2 (deleteInstances lowers it)", grp.Desired)
	}
	if err := env.Cloud.Check(); err != nil {
		t.Error(err)
	}
}

func TestStateMapping(t *testing.T) {
	cases := []struct {
		provisioning, power string
		want                provider.State
	}{
		{"Creating", "starting", provider.StateCreating},
		{"Creating", "", provider.StateCreating},
		{"Succeeded", "running", provider.StateRunning},
		{"Succeeded", "starting", provider.StateCreating},
		{"Succeeded", "", provider.StateCreating}, // no instance view yet
		{"Updating", "running", provider.StateRunning},
		{"Deleting", "stopping", provider.StateDeleting},
		{"Deleting", "running", provider.StateDeleting},
		{"Failed", "running", provider.StateRunning}, // e.g. an extension failed: the VM still works
		{"Failed", "", provider.StateTimeout},
		{"Succeeded", "deallocated", provider.StateTimeout},
		{"Succeeded", "stopped", provider.StateTimeout},
		{"Migrating", "running", provider.StateRunning}, // unknown states are still reported
	}
	for _, c := range cases {
		if got := instanceState(c.provisioning, c.power); got != c.want {
			t.Errorf("%s/%s = %s, want %s", c.provisioning, c.power, got, c.want)
		}
	}
}

// TestDecreaseSubsetAndUnknown: only the named instances of this scale set are touched.
func TestDecreaseSubsetAndUnknown(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{})
	if err := env.Cloud.CreateGroup(cloudsim.Group{Name: "other", Max: 5, Desired: 1}); err != nil {
		t.Fatal(err)
	}
	other, _ := env.Cloud.VMs("other")
	g := start(t, env, static)
	ctx := context.Background()
	if _, err := g.Increase(ctx, 5); err != nil {
		t.Fatal(err)
	}
	all := ids(list(t, g))
	done, err := g.Decrease(ctx, []string{all[1], all[3], "9999", other[0].ID})
	if !slices.Equal(sorted(done), sorted([]string{all[1], all[3]})) {
		t.Errorf("done = %v, want %v", done, []string{all[1], all[3]})
	}
	if !errors.Is(err, provider.ErrNotFound) || !strings.Contains(err.Error(), "9999") || !strings.Contains(err.Error(), "instance "+other[0].ID+":") {
		t.Errorf("error = %v, want ErrNotFound naming both foreign IDs", err)
	}
	left := list(t, g)
	for _, id := range []string{all[0], all[2], all[4]} {
		if left[id] != provider.StateRunning {
			t.Errorf("%s is %q, want running", id, left[id])
		}
	}
	if vm, _ := env.Cloud.GetVM(other[0].ID); vm.State != cloudsim.Running {
		t.Errorf("the other scale set's VM is %s", vm.State)
	}
	if d, err := g.Decrease(ctx, nil); d != nil || err != nil {
		t.Errorf("empty Decrease = %v, %v", d, err)
	}
	if err := env.Cloud.Check(); err != nil {
		t.Error(err)
	}
}

// TestUpdatePaginates: with more VMs than fit a page, Update follows nextLink and makes
// nothing but list calls, never one call per instance.
func TestUpdatePaginates(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "big", Max: 50, Desired: 23}})
	env.Fake.PageSize = 5
	g := start(t, env, static)
	env.Cloud.ResetCalls()
	got := list(t, g)
	if len(got) != 23 {
		t.Fatalf("Update listed %d instances, want 23", len(got))
	}
	// The first Update makes ConnectInfo's lookups for each running VM once (see
	// TestLateListing).
	calls := env.Cloud.Calls()
	lookups := map[string]int{"VirtualMachineScaleSetVMs.List": 5, "VirtualMachineScaleSetVMs.Get": 23,
		"NetworkInterfaces.ListVirtualMachineScaleSetVMNetworkInterfaces": 23, "PublicIPAddresses.ListVirtualMachineScaleSetVMPublicIPAddresses": 23}
	if !mapsEqual(calls, lookups) {
		t.Errorf("calls = %v, want %v", calls, lookups)
	}
	env.Cloud.ResetCalls()
	list(t, g)
	calls = env.Cloud.Calls()
	if calls["VirtualMachineScaleSetVMs.List"] != 5 || len(calls) != 1 {
		t.Errorf("calls = %v, want 5 VirtualMachineScaleSetVMs.List pages and nothing else", calls)
	}
}

// TestDecreaseBatches: deleteInstances carries delete_batch_size IDs at a time, and once
// a batch stays throttled the rest are not sent.
func TestDecreaseBatches(t *testing.T) {
	cases := []struct {
		name       string
		throttle   bool
		wantCalls  int
		wantDone   int
		wantErrSub string
	}{
		{"all batches", false, 3, 8, ""},
		{"throttled", true, defaultRetryMax + 1, 0, "not attempted"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 10, Desired: 8}})
			g := start(t, env, static, func(g *InstanceGroup) { g.DeleteBatchSize = 3 })
			all := ids(list(t, g))
			if c.throttle {
				env.Cloud.Inject("VirtualMachineScaleSets.DeleteInstances", -1, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "too many requests"})
			}
			env.Cloud.ResetCalls()
			done, err := g.Decrease(context.Background(), all)
			if len(done) != c.wantDone || (c.wantErrSub == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.wantErrSub)) {
				t.Errorf("Decrease = %d done, %v; want %d done, error containing %q", len(done), err, c.wantDone, c.wantErrSub)
			}
			if n := env.Cloud.Calls()["VirtualMachineScaleSets.DeleteInstances"]; n != c.wantCalls {
				t.Errorf("%d deleteInstances calls, want %d", n, c.wantCalls)
			}
			env.Cloud.ClearFaults()
			if got := list(t, g); len(got) != len(all)-c.wantDone {
				t.Errorf("%d instances left, want %d", len(got), len(all)-c.wantDone)
			}
			if err := env.Cloud.Check(); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestFailingAPINeverForgets: whatever call fails or is throttled past the retries,
// Update reports an error (not fewer instances), Decrease deletes nothing it was not
// asked to, and no running instance is deleted.
func TestFailingAPINeverForgets(t *testing.T) {
	throttled := &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "too many requests"}
	internal := &cloudsim.Error{Kind: cloudsim.KindInternal, Message: "boom"}
	retried := defaultRetryMax + 1 // azcore retries 429 and 5xx
	cloudtest.Faults(t, func(t *testing.T) (provider.InstanceGroup, *cloudsim.Cloud) {
		env := azurefake.Start(t, azurefake.EnvOptions{})
		return start(t, env, static), env.Cloud
	}, "VirtualMachineScaleSets.DeleteInstances", []cloudtest.Fault{
		{Name: "list throttled", Op: "VirtualMachineScaleSetVMs.List", Err: throttled, Listing: true, Decrease: true, MinCalls: retried},
		{Name: "list failing", Op: "VirtualMachineScaleSetVMs.List", Err: internal, Listing: true, Decrease: true, MinCalls: retried},
		{Name: "get scale set throttled", Op: "VirtualMachineScaleSets.Get", Err: throttled, Increase: true, MinCalls: retried},
		{Name: "update throttled", Op: "VirtualMachineScaleSets.Update", Err: throttled, Increase: true, MinCalls: retried},
		{Name: "delete throttled", Op: "VirtualMachineScaleSets.DeleteInstances", Err: throttled, Decrease: true, MinCalls: retried},
		{Name: "delete denied", Op: "VirtualMachineScaleSets.DeleteInstances", Err: &cloudsim.Error{Kind: cloudsim.KindDenied, Message: "no"},
			Decrease: true, MinCalls: 1, MaxCalls: 1}, // a refusal is not retried
	})
}

// TestThrottledThenRecovers: a few 429s are absorbed by the retry policy and the call
// succeeds.
func TestThrottledThenRecovers(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 10, Desired: 2}})
	g := start(t, env, static)
	env.Cloud.ResetCalls()
	env.Cloud.Inject("VirtualMachineScaleSetVMs.List", 2, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "too many requests"})
	if got := list(t, g); len(got) != 2 {
		t.Errorf("Update after two 429s listed %v", got)
	}
	if n := env.Cloud.ThrottledCalls()["VirtualMachineScaleSetVMs.List"]; n != 2 {
		t.Errorf("%d throttled calls, want 2", n)
	}
}

func TestIncreaseLimits(t *testing.T) {
	cases := []struct {
		name      string
		group     cloudsim.Group
		spg       *bool
		delta     int
		wantN     int
		wantCap   bool
		wantTotal int
	}{
		{"fits", cloudsim.Group{Name: "ci", Max: 1000}, nil, 5, 5, false, 5},
		{"quota", cloudsim.Group{Name: "ci", Max: 1000, Capacity: 3}, nil, 5, 0, true, 0},
		{"single placement group", cloudsim.Group{Name: "ci", Max: 1000, Desired: 98}, nil, 5, 2, true, 100},
		{"multiple placement groups", cloudsim.Group{Name: "ci", Max: 1000, Desired: 98}, new(bool), 5, 5, false, 103},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := azurefake.Start(t, azurefake.EnvOptions{Group: c.group, ScaleSet: azurefake.ScaleSetOptions{SinglePlacementGroup: c.spg}})
			g := start(t, env, static)
			n, err := g.Increase(context.Background(), c.delta)
			if n != c.wantN || c.wantCap != errors.Is(err, provider.ErrCapacity) || (!c.wantCap && err != nil) {
				t.Errorf("Increase(%d) = %d, %v; want %d (capacity error: %v)", c.delta, n, err, c.wantN, c.wantCap)
			}
			if grp, _ := env.Cloud.GetGroup("ci"); grp.Desired != c.wantTotal {
				t.Errorf("capacity %d, want %d", grp.Desired, c.wantTotal)
			}
		})
	}
}

func TestInitErrors(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{})
	cases := []struct {
		name   string
		mutate func(map[string]any)
		want   string
	}{
		{"missing scale set", func(m map[string]any) { m["name"] = "nope" }, `scale set "nope" not found`},
		{"wrong resource group", func(m map[string]any) { m["resource_group_name"] = "other-rg" }, `not found in resource group "other-rg"`},
		{"flexible", nil, "orchestration-mode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var m map[string]any
			_ = json.Unmarshal(env.PluginConfig, &m)
			if c.mutate != nil {
				c.mutate(m)
			} else {
				env.Fake.SetOptions(env.Group, azurefake.ScaleSetOptions{OrchestrationMode: "Flexible"})
				defer env.Fake.SetOptions(env.Group, azurefake.ScaleSetOptions{})
			}
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
	err := plugin.DecodeConfig([]byte(`{"endpoint": "http://example.com", "retry_max_delay": "soon", "delete_batch_size": -1, "operation_wait": "-1s"}`), bad)
	for _, want := range []string{"plugin_config.name: required", "plugin_config.subscription_id: required",
		"plugin_config.resource_group_name: required", "plain http is allowed only to a loopback address",
		"plugin_config.retry_max_delay", "plugin_config.delete_batch_size", "plugin_config.operation_wait"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v; want it to mention %q", err, want)
		}
	}
}

// TestJobOverSSH runs a real command over SSH, with the connector and the seed's static
// username and password, on a VM that came from the plugin and the simulated cloud.
func TestJobOverSSH(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{SSH: true})
	cc := static
	cc.Timeout = 10 * time.Second
	g := start(t, env, cc)
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
	if info.Password != azurefake.Password || len(info.Key) != 0 || len(info.HostKey) == 0 ||
		!strings.HasPrefix(info.InternalAddr, "127.0.0.1:") || !strings.HasPrefix(info.ExternalAddr, "127.0.0.1:") {
		t.Fatalf("ConnectInfo = %+v; want the static password, a host key and loopback addresses with the SSH port", info)
	}
	// A wrong password is refused.
	wrong := info
	wrong.Password, wrong.Timeout = "not-the-password", 2*time.Second
	cloudtest.CheckJobOverSSH(ctx, t, g, id, info, wrong, true)
	if _, err := g.ConnectInfo(ctx, id); !errors.Is(err, provider.ErrNotFound) && !errors.Is(err, provider.ErrInstanceUnhealthy) {
		t.Errorf("ConnectInfo of a deleted instance = %v", err)
	}
}

// TestConnectInfoAddresses: the private address comes from the NIC, the public one only
// when the IP configuration has one, and no SSH port tag means no port.
func TestConnectInfoAddresses(t *testing.T) {
	cases := []struct {
		name       string
		noPublicIP bool
		wantPublic string
		wantCalls  map[string]int
	}{
		{"public IP", false, "203.0.113.2", map[string]int{"VirtualMachineScaleSetVMs.Get": 1,
			"NetworkInterfaces.ListVirtualMachineScaleSetVMNetworkInterfaces": 1, "PublicIPAddresses.ListVirtualMachineScaleSetVMPublicIPAddresses": 1}},
		{"private only", true, "", map[string]int{"VirtualMachineScaleSetVMs.Get": 1,
			"NetworkInterfaces.ListVirtualMachineScaleSetVMNetworkInterfaces": 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 5, Desired: 1},
				ScaleSet: azurefake.ScaleSetOptions{NoPublicIP: c.noPublicIP}})
			g := start(t, env, provider.ConnectorConfig{})
			env.Cloud.ResetCalls()
			info, err := g.ConnectInfo(context.Background(), "0")
			if err != nil {
				t.Fatal(err)
			}
			if info.InternalAddr != "10.0.0.1" || info.ExternalAddr != c.wantPublic || info.Username != "azureuser" || info.OS != "linux" {
				t.Errorf("ConnectInfo = %+v", info)
			}
			if got := env.Cloud.Calls(); !mapsEqual(got, c.wantCalls) {
				t.Errorf("calls = %v, want %v", got, c.wantCalls)
			}
		})
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestExternalRemoval: an instance Azure removes by itself (an operator, a spot
// eviction) is reported deleting and then not at all.
func TestExternalRemoval(t *testing.T) {
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	env := azurefake.Start(t, azurefake.EnvOptions{Cloud: cloudsim.Options{Clock: clock, StopDelay: cloudsim.Fixed(time.Minute)},
		Group: cloudsim.Group{Name: "ci", Max: 5, Desired: 2}})
	g := start(t, env, static)
	victim := ids(list(t, g))[0]
	if err := env.Cloud.Reclaim(victim, "spot-eviction"); err != nil {
		t.Fatal(err)
	}
	got := list(t, g)
	if got[victim] != provider.StateDeleting || len(got) != 3 {
		t.Errorf("after the eviction: %v; want the victim deleting and a replacement", got)
	}
	clock.Advance(time.Minute)
	got = list(t, g)
	if _, ok := got[victim]; ok || len(got) != 2 {
		t.Errorf("after the eviction finished: %v", got)
	}
	if _, err := g.ConnectInfo(context.Background(), victim); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("ConnectInfo of an evicted instance = %v, want ErrNotFound", err)
	}
}

// rewriteTransport changes VM listings on their way to the SDK: it marks the listed
// instance IDs failed (provisioning) and stopped, as a broken image would leave them.
type rewriteTransport struct {
	failed map[string]bool
	seen   atomic.Int32
}

func (rt *rewriteTransport) Do(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, "/virtualMachines") {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	var page map[string]any
	if json.Unmarshal(body, &page) == nil {
		for _, v := range page["value"].([]any) {
			vm := v.(map[string]any)
			if rt.failed[vm["instanceId"].(string)] {
				rt.seen.Add(1)
				props := vm["properties"].(map[string]any)
				props["provisioningState"] = "Failed"
				props["instanceView"] = map[string]any{"statuses": []map[string]string{{"code": "ProvisioningState/failed"}, {"code": "PowerState/stopped"}}}
			}
		}
		body, _ = json.Marshal(page)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Del("Content-Length")
	return resp, nil
}

var _ policy.Transporter = (*rewriteTransport)(nil)

// TestBrokenInstancesCleanedUp: a VM that failed to provision is reported as timed out
// (the host forgets it) and the plugin deletes it itself, once.
func TestBrokenInstancesCleanedUp(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 5, Desired: 3}})
	rt := &rewriteTransport{failed: map[string]bool{"1": true}}
	g := start(t, env, static, func(g *InstanceGroup) { g.Transport = rt })
	env.Cloud.ResetCalls()
	got := list(t, g)
	want := map[string]provider.State{"0": provider.StateRunning, "1": provider.StateTimeout, "2": provider.StateRunning}
	if len(got) != 3 || got["0"] != want["0"] || got["1"] != want["1"] || got["2"] != want["2"] {
		t.Errorf("Update = %v, want %v", got, want)
	}
	if rt.seen.Load() == 0 {
		t.Fatal("the transport rewrote nothing")
	}
	if vm, _ := env.Cloud.GetVM("1"); vm.TermReason != "VirtualMachineScaleSets.DeleteInstances" {
		t.Errorf("failed VM 1 ended by %q, want the plugin's deleteInstances", vm.TermReason)
	}
	list(t, g)
	if n := env.Cloud.Calls()["VirtualMachineScaleSets.DeleteInstances"]; n != 1 {
		t.Errorf("%d deleteInstances calls, want 1 (cleaned up once)", n)
	}
	for _, id := range []string{"0", "2"} {
		if vm, _ := env.Cloud.GetVM(id); vm.State != cloudsim.Running {
			t.Errorf("healthy VM %s is %s", id, vm.State)
		}
	}
}

// TestLongRunningOperations: Increase waits for its operation through InProgress polls
// (at most operation_wait), and a scale-out whose allocation fails reports the accepted
// instances with ErrCapacity (the capacity was committed; the VMs' states tell the rest).
// Decrease does not wait: an accepted deleteInstances is committed.
func TestLongRunningOperations(t *testing.T) {
	cases := []struct {
		name      string
		polls     int
		wait      string
		fail      *cloudsim.Error
		wantN     int
		wantCap   bool
		wantPolls int // Operations.Get calls for one Increase and one Decrease
	}{
		{"done at once", 0, "", nil, 2, false, 1},
		{"in progress", 3, "", nil, 2, false, 4},
		{"allocation failed", 1, "", &cloudsim.Error{Code: "AllocationFailed", Message: "Allocation failed. We do not have sufficient capacity for the requested VM size in this region."}, 2, true, 2},
		{"not waited", 3, "0s", nil, 2, false, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 10}})
			g := start(t, env, static, func(g *InstanceGroup) { g.OperationWait = c.wait })
			env.Fake.OperationPolls = c.polls
			if c.fail != nil {
				env.Fake.FailNextOperation(c.fail)
			}
			env.Cloud.ResetCalls()
			n, err := g.Increase(context.Background(), 2)
			if n != c.wantN || c.wantCap != errors.Is(err, provider.ErrCapacity) || (!c.wantCap && err != nil) {
				t.Errorf("Increase(2) = %d, %v; want %d (capacity error: %v)", n, err, c.wantN, c.wantCap)
			}
			all := ids(list(t, g))
			if done, err := g.Decrease(context.Background(), all); len(done) != 2 || err != nil {
				t.Errorf("Decrease = %v, %v", done, err)
			}
			if got := env.Cloud.Calls()["Operations.Get"]; got != c.wantPolls {
				t.Errorf("%d operation polls, want %d", got, c.wantPolls)
			}
		})
	}
}

// TestOperationWaitBounded: a capacity update that is still running after
// operation_wait does not hold Increase: the accepted count is returned without error.
func TestOperationWaitBounded(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 10}})
	g := start(t, env, static, func(g *InstanceGroup) { g.OperationWait = "30ms" })
	env.Fake.OperationPolls = 1 << 30
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := g.Increase(ctx, 3)
	if n != 3 || err != nil || ctx.Err() != nil {
		t.Errorf("Increase(3) with a never-ending operation = %d, %v (context: %v); want 3, nil", n, err, ctx.Err())
	}
	if env.Cloud.Calls()["Operations.Get"] < 2 {
		t.Errorf("operation polled %d times, want it polled while waiting", env.Cloud.Calls()["Operations.Get"])
	}
}

// TestLateListing: Azure's views are eventually consistent, and the scale set lists a
// new VM as running before the VM and its network interface can be looked up. Until
// they can, Update reports the VM as creating, and Heartbeat and ConnectInfo say it is
// not ready yet (ErrInstanceUnhealthy), not that it is unknown (ErrNotFound). Once
// seen, a VM costs no more lookups in Update.
func TestLateListing(t *testing.T) {
	const lag = 15 * time.Second
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	env := azurefake.Start(t, azurefake.EnvOptions{Cloud: cloudsim.Options{Clock: clock, ListLag: lag},
		Group: cloudsim.Group{Name: "ci", Max: 5}})
	g := start(t, env, static)
	ctx := context.Background()
	if n, err := g.Increase(ctx, 2); n != 2 || err != nil {
		t.Fatalf("Increase(2) = %d, %v", n, err)
	}
	clock.Advance(time.Second) // booted: the listing shows them running
	got := list(t, g)
	if len(got) != 2 {
		t.Fatalf("Update listed %v, want 2 VMs", got)
	}
	for id, s := range got {
		if s != provider.StateCreating {
			t.Errorf("%s is %s while its lookups do not show it, want creating", id, s)
		}
		if err := g.Heartbeat(ctx, id); !errors.Is(err, provider.ErrInstanceUnhealthy) || errors.Is(err, provider.ErrNotFound) ||
			!strings.Contains(err.Error(), "not ready yet") {
			t.Errorf("Heartbeat during the lag = %v, want not ready yet (ErrInstanceUnhealthy, not ErrNotFound)", err)
		}
		if _, err := g.ConnectInfo(ctx, id); !errors.Is(err, provider.ErrInstanceUnhealthy) || errors.Is(err, provider.ErrNotFound) {
			t.Errorf("ConnectInfo during the lag = %v, want not ready yet (ErrInstanceUnhealthy, not ErrNotFound)", err)
		}
	}
	if err := g.Heartbeat(ctx, "99"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("Heartbeat of a VM not in the scale set = %v, want ErrNotFound", err)
	}
	clock.Advance(lag)
	for id, s := range list(t, g) {
		if s != provider.StateRunning {
			t.Errorf("%s is %s once its lookups show it, want running", id, s)
		}
		if err := g.Heartbeat(ctx, id); err != nil {
			t.Errorf("Heartbeat after the lag: %v", err)
		}
		if info, err := g.ConnectInfo(ctx, id); err != nil || info.InternalAddr == "" || info.ExternalAddr == "" {
			t.Errorf("ConnectInfo after the lag = %+v, %v", info, err)
		}
	}
	env.Cloud.ResetCalls()
	list(t, g)
	if calls := env.Cloud.Calls(); calls["VirtualMachineScaleSetVMs.List"] != 1 || len(calls) != 1 {
		t.Errorf("calls = %v; want one VirtualMachineScaleSetVMs.List only for VMs already seen", calls)
	}
}
