package googlecloud

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/gcpfake"
	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// start configures and initialises an in-process plugin against env.
func start(t *testing.T, env *gcpfake.Env, cc provider.ConnectorConfig) *InstanceGroup {
	t.Helper()
	g := New()
	if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
		t.Fatalf("decode plugin_config: %v", err)
	}
	if _, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: cc}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() { _ = g.Shutdown(context.Background()) })
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

func sorted(s []string) []string { s = slices.Clone(s); sort.Strings(s); return s }

var static = provider.ConnectorConfig{Username: "runner", UseStaticCredentials: true}

func group(name string, max, desired int) cloudsim.Group {
	return cloudsim.Group{Name: name, Max: max, Desired: desired, Settings: cloudsim.Settings{Zones: []string{gcpfake.DefaultZone}}}
}

// TestConformance runs the conformance kit at L1 against the built plugin binary,
// launched as the runner launches it, talking to the fake Compute Engine through the
// real SDK. Its VMs are SSH servers, so L1.connect dials real endpoints, authenticated
// with the ephemeral key the plugin put in instance metadata.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	env := gcpfake.Start(t, gcpfake.EnvOptions{SSH: true})
	var m map[string]any
	_ = json.Unmarshal(env.PluginConfig, &m)
	m["max_size"] = 4 // small enough for the kit's L1.max-size clause
	env.PluginConfig, _ = json.Marshal(m)
	cloudtest.RunConformance(t, env.Cloud, env.Group, conformance.Config{
		Binary:        conformancetest.Build(t, "./cmd/fleeting-plugin-googlecloud"),
		PluginConfig:  env.PluginConfig,
		Connector:     provider.ConnectorConfig{Username: "runner"},
		L1:            true,
		BadConfig:     json.RawMessage(`{"name": 5, "zoen": "europe-west1-b"}`),
		BadConfigWant: []string{"plugin_config.name", `plugin_config.zoen: unknown key`},
	})
}

// TestConformanceInProcess runs the kit in process as well, which adds L0.panic.
func TestConformanceInProcess(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{SSH: true})
	cloudtest.RunConformance(t, env.Cloud, env.Group, conformance.Config{
		New:          func() provider.InstanceGroup { return New() },
		PluginConfig: env.PluginConfig,
		Connector:    provider.ConnectorConfig{Username: "runner"},
		L1:           true,
	})
}

func TestLifecycleStates(t *testing.T) {
	opts, clock := cloudtest.LifecycleCloud()
	env := gcpfake.Start(t, gcpfake.EnvOptions{Cloud: opts})
	env.Fake.OperationPolls = 2 // operations are RUNNING for two polls: the plugin waits
	g := start(t, env, static)
	ctx := context.Background()
	if n, err := g.Increase(ctx, 3); n != 3 || err != nil {
		t.Fatalf("Increase(3) = %d, %v", n, err)
	}
	if c := env.Cloud.Calls()[gcpfake.OpWait]; c != 3 {
		t.Errorf("zoneOperations.wait called %d times for the resize, want 3 (two RUNNING answers, then DONE)", c)
	}
	cloudtest.CheckLifecycle(t, g, clock, env.Cloud)
	if grp, _ := env.Cloud.GetGroup(env.Group); grp.Desired != 2 {
		t.Errorf("targetSize = %d, want 2 (deleteInstances shrinks it)", grp.Desired)
	}
	// Every call was authenticated with the credentials_file's service account.
	if bearer, anonymous := env.Fake.Requests(); bearer == 0 || anonymous != 0 {
		t.Errorf("%d requests with a bearer token, %d without; want all with", bearer, anonymous)
	}
}

func TestStateMapping(t *testing.T) {
	cases := []struct {
		action, status string
		want           provider.State
		ok             bool
	}{
		{"CREATING", "", provider.StateCreating, true},
		{"CREATING", "PROVISIONING", provider.StateCreating, true},
		{"CREATING_WITHOUT_RETRIES", "STAGING", provider.StateCreating, true},
		{"VERIFYING", "RUNNING", provider.StateCreating, true},
		{"RECREATING", "STOPPING", provider.StateCreating, true},
		{"NONE", "RUNNING", provider.StateRunning, true},
		{"NONE", "STAGING", provider.StateCreating, true},
		{"NONE", "", provider.StateCreating, true},
		{"NONE", "STOPPING", provider.StateDeleting, true},
		{"DELETING", "RUNNING", provider.StateDeleting, true},
		{"ABANDONING", "RUNNING", provider.StateDeleting, true},
		{"NONE", "TERMINATED", "", false},
		{"NONE", "SUSPENDED", "", false},
		{"SOMETHING_NEW", "RUNNING", "", false},
	}
	for _, c := range cases {
		got, ok := instanceState(c.action, c.status)
		if got != c.want || ok != c.ok {
			t.Errorf("%s/%s = %s,%v; want %s,%v", c.action, c.status, got, ok, c.want, c.ok)
		}
	}
}

// TestDecreaseSubsetAndUnknown: only the named instances of this group are touched.
func TestDecreaseSubsetAndUnknown(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{})
	if err := env.Cloud.CreateGroup(group("other", 5, 1)); err != nil {
		t.Fatal(err)
	}
	g := start(t, env, static)
	ctx := context.Background()
	if _, err := g.Increase(ctx, 5); err != nil {
		t.Fatal(err)
	}
	all := ids(list(t, g))
	other, _ := env.Cloud.VMs("other")
	done, err := g.Decrease(ctx, []string{all[1], all[3], "flotilla-dead", other[0].ID})
	if !slices.Equal(sorted(done), []string{all[1], all[3]}) {
		t.Errorf("done = %v, want %v", done, []string{all[1], all[3]})
	}
	if !errors.Is(err, provider.ErrNotFound) || !strings.Contains(err.Error(), "flotilla-dead") || !strings.Contains(err.Error(), other[0].ID) {
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
	if _, err := g.ConnectInfo(ctx, other[0].ID); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("ConnectInfo of another group's instance = %v, want ErrNotFound", err)
	}
	if err := env.Cloud.Check(); err != nil {
		t.Error(err)
	}
}

// TestDecreaseBatches: deleteInstances names at most deleteBatchSize instances, and
// instances the latest listing showed cost no extra listing.
func TestDecreaseBatches(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{Group: group("ci", 100, 7)})
	g := start(t, env, static)
	defer func(n int) { deleteBatchSize = n }(deleteBatchSize)
	deleteBatchSize = 3
	all := ids(list(t, g))
	env.Cloud.ResetCalls()
	done, err := g.Decrease(context.Background(), all)
	if err != nil || len(done) != 7 {
		t.Fatalf("Decrease = %v, %v", done, err)
	}
	calls := env.Cloud.Calls()
	if calls[gcpfake.OpDeleteInstances] != 3 || calls[gcpfake.OpListManaged] != 0 {
		t.Errorf("calls = %v, want 3 deleteInstances batches and no listing", calls)
	}
	if vms, _ := env.Cloud.VMs("ci"); len(vms) != 0 {
		t.Errorf("%d VMs left", len(vms))
	}
}

// TestUpdatePaginates: with more instances than fit a page, Update makes one paginated
// listManagedInstances listing and nothing else, never a call per instance.
func TestUpdatePaginates(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{Group: group("big", 50, 23)})
	env.Fake.PageSize = 5
	g := start(t, env, static)
	env.Cloud.ResetCalls()
	got := list(t, g)
	if len(got) != 23 {
		t.Fatalf("Update listed %d instances, want 23", len(got))
	}
	// The first Update looks each running instance up once (see TestLateListing).
	calls := env.Cloud.Calls()
	if calls[gcpfake.OpListManaged] != 5 || calls[gcpfake.OpGetInstance] != 23 || len(calls) != 2 {
		t.Errorf("calls = %v, want 5 listManagedInstances pages and 23 instances.get", calls)
	}
	env.Cloud.ResetCalls()
	list(t, g)
	calls = env.Cloud.Calls()
	if calls[gcpfake.OpListManaged] != 5 || len(calls) != 1 {
		t.Errorf("calls = %v, want 5 listManagedInstances pages only", calls)
	}
}

// TestFailingAPINeverForgets: whatever call fails, is throttled past the retries, or
// fails inside its operation, Update reports an error (not fewer instances), Decrease
// deletes nothing it does not report, and no running instance is deleted.
func TestFailingAPINeverForgets(t *testing.T) {
	throttled := &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Rate Limit Exceeded"}
	boom := &cloudsim.Error{Kind: cloudsim.KindInternal, Message: "boom"}
	exhausted := &cloudsim.Error{Kind: cloudsim.KindCapacity, Code: "ZONE_RESOURCE_POOL_EXHAUSTED", Message: "The zone does not have enough resources"}
	retried := defaultRetryMaxAttempts
	var env *gcpfake.Env
	// failOperation makes the operation started by op fail after the call was accepted.
	failOperation := func(op string, err *cloudsim.Error) (func(), func()) {
		return func() { env.Fake.FailOperations(op, -1, err) }, func() { env.Fake.ClearFaults() }
	}
	deleteInject, deleteClear := failOperation(gcpfake.OpDeleteInstances, boom)
	resizeInject, resizeClear := failOperation(gcpfake.OpResize, exhausted)
	cloudtest.Faults(t, func(t *testing.T) (provider.InstanceGroup, *cloudsim.Cloud) {
		env = gcpfake.Start(t, gcpfake.EnvOptions{})
		return start(t, env, static), env.Cloud
	}, gcpfake.OpDeleteInstances, []cloudtest.Fault{
		{Name: "list throttled", Op: gcpfake.OpListManaged, Err: throttled, Listing: true, MinCalls: retried},
		{Name: "list failing", Op: gcpfake.OpListManaged, Err: boom, Listing: true},
		{Name: "get group throttled", Op: gcpfake.OpGetIGM, Err: throttled, Increase: true, MinCalls: retried},
		{Name: "delete throttled", Op: gcpfake.OpDeleteInstances, Err: throttled, Decrease: true, MinCalls: retried},
		{Name: "resize throttled", Op: gcpfake.OpResize, Err: throttled, Increase: true, MinCalls: retried},
		// When only the wait for the deletion failed, the deletion may have happened:
		// the victim was asked for, so its going is no loss.
		{Name: "operation wait throttled", Op: gcpfake.OpWait, Err: throttled, Decrease: true, Increase: true, MinCalls: retried, VictimMayGo: true},
		{Name: "delete operation fails", Op: gcpfake.OpDeleteInstances, Inject: deleteInject, Clear: deleteClear, Decrease: true},
		{Name: "resize operation fails", Op: gcpfake.OpResize, Inject: resizeInject, Clear: resizeClear, Increase: true,
			Check: func(t *testing.T, _ int, err error) {
				if err == nil || !strings.Contains(err.Error(), "ZONE_RESOURCE_POOL_EXHAUSTED") {
					t.Errorf("Increase error %v does not carry the operation's error code", err)
				}
			}},
	})
}

func TestIncreaseCapsAtMaxSize(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{})
	var m map[string]any
	_ = json.Unmarshal(env.PluginConfig, &m)
	m["max_size"] = 3
	env.PluginConfig, _ = json.Marshal(m)
	g := start(t, env, static)
	ctx := context.Background()
	n, err := g.Increase(ctx, 5)
	if n != 3 || !errors.Is(err, provider.ErrCapacity) {
		t.Errorf("Increase(5) with max_size 3 = %d, %v; want 3 and ErrCapacity", n, err)
	}
	n, err = g.Increase(ctx, 1)
	if n != 0 || !errors.Is(err, provider.ErrCapacity) {
		t.Errorf("Increase(1) on a full group = %d, %v", n, err)
	}
	if grp, _ := env.Cloud.GetGroup(env.Group); grp.Desired != 3 {
		t.Errorf("targetSize = %d, want 3", grp.Desired)
	}
}

func TestInitErrors(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{})
	if err := env.Cloud.CreateGroup(cloudsim.Group{Name: "regional", Max: 10, Settings: cloudsim.Settings{Zones: []string{"europe-west1-b", "europe-west1-c"}}}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(map[string]any)
		want   string
	}{
		{"missing group", func(m map[string]any) { m["name"] = "nope" }, `managed instance group "nope" not found`},
		{"regional group", func(m map[string]any) { m["name"] = "regional" }, "only zonal groups are supported"},
		{"wrong zone", func(m map[string]any) { m["zone"] = "europe-west1-c" }, "not found in project flotilla-test, zone europe-west1-c"},
		{"missing credentials file", func(m map[string]any) { m["credentials_file"] = "/nonexistent/key.json" }, "plugin_config.credentials_file: read /nonexistent/key.json"},
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
}

func TestValidate(t *testing.T) {
	cases := []struct {
		config string
		want   []string
	}{
		{`{}`, []string{"plugin_config.name: required", "plugin_config.project: required", "plugin_config.zone: required"}},
		// The seed configuration's zone is a region: say so, and suggest a zone.
		{`{"name": "g", "project": "p", "zone": "europe-west1"}`, []string{`plugin_config.zone: "europe-west1" is a region`, "europe-west1-b"}},
		{`{"name": "g", "project": "p", "zone": "Europe West"}`, []string{"is not a zone name"}},
		{`{"name": "g", "project": "p", "zone": "us-central1-a", "endpoint": "not a url", "retry_max_backoff": "soon", "retry_max_attempts": -1, "max_size": 1001}`,
			[]string{"plugin_config.endpoint", "plugin_config.retry_max_backoff", "plugin_config.retry_max_attempts", "plugin_config.max_size"}},
		{`{"name": "g", "project": "p", "zone": "us-central1-a", "credentials_file": "~/.config/gcloud/application_default_credentials.json"}`, nil},
	}
	for _, c := range cases {
		err := plugin.DecodeConfig([]byte(c.config), New())
		if len(c.want) == 0 && err != nil {
			t.Errorf("%s: %v", c.config, err)
		}
		for _, w := range c.want {
			if err == nil || !strings.Contains(err.Error(), w) || !errors.Is(err, provider.ErrInvalidConfig) {
				t.Errorf("%s: Validate = %v; want ErrInvalidConfig mentioning %q", c.config, err, w)
			}
		}
	}
}

// TestJobOverSSH runs a real command over SSH, with the connector, on a VM that came from
// the plugin and the simulated cloud, authenticated with the ephemeral key the plugin
// added to the instance's ssh-keys metadata.
func TestJobOverSSH(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{SSH: true})
	g := start(t, env, provider.ConnectorConfig{Username: "runner", Timeout: 10 * time.Second})
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
	env.Cloud.ResetCalls()
	info, err := g.ConnectInfo(ctx, id)
	if err != nil {
		t.Fatalf("ConnectInfo: %v", err)
	}
	if len(info.Key) == 0 || len(info.HostKey) == 0 || !strings.HasPrefix(info.InternalAddr, "127.0.0.1:") || info.Username != "runner" {
		t.Fatalf("ConnectInfo = %+v; want a key, a host key and a loopback address with port", info)
	}
	// The key is added once per instance: a second ConnectInfo only reads.
	if _, err := g.ConnectInfo(ctx, id); err != nil {
		t.Fatal(err)
	}
	if c := env.Cloud.Calls(); c[gcpfake.OpSetMetadata] != 1 || c[gcpfake.OpGetInstance] != 2 {
		t.Errorf("calls for two ConnectInfo = %v, want 2 instances.get and 1 setMetadata", c)
	}
	// A stranger's key is refused: only the metadata (or static) keys log in.
	stranger := info
	_, stranger.Key, _ = cloudsim.NewClientKey()
	stranger.Timeout = 2 * time.Second
	cloudtest.CheckJobOverSSH(ctx, t, g, id, info, stranger, false)
	if _, err := g.ConnectInfo(ctx, id); err == nil {
		t.Error("ConnectInfo of a deleted instance succeeded")
	}
}

// TestStaticCredentialsNoMetadata: with use_static_credentials the plugin never writes
// instance metadata, and ConnectInfo carries the configured key.
func TestStaticCredentialsNoMetadata(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{SSH: true, Group: group("ci", 5, 1)})
	g := start(t, env, provider.ConnectorConfig{Username: "runner", UseStaticCredentials: true, Key: env.ClientKey, Timeout: 10 * time.Second})
	id := ids(list(t, g))[0]
	info, err := g.ConnectInfo(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(info.Key, env.ClientKey) || env.Cloud.Calls()[gcpfake.OpSetMetadata] != 0 {
		t.Errorf("key changed or metadata written: setMetadata calls %d", env.Cloud.Calls()[gcpfake.OpSetMetadata])
	}
	c, err := connector.Dial(context.Background(), info, connector.DialOptions{HostKeys: connector.NewMemoryHostKeyStore()})
	if err != nil {
		t.Fatalf("dial with the static key: %v", err)
	}
	c.Close()
}

// TestExternalRemoval: an instance deleted outside the plugin is reported deleting and
// then not at all; Decrease of it (from a stale listing) does not fail the batch.
func TestExternalRemoval(t *testing.T) {
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	env := gcpfake.Start(t, gcpfake.EnvOptions{Cloud: cloudsim.Options{Clock: clock, StopDelay: cloudsim.Fixed(time.Minute)},
		Group: group("ci", 5, 3)})
	g := start(t, env, static)
	all := ids(list(t, g))
	victim := all[0]
	if err := env.Cloud.Reclaim(victim, "operator"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	// The plugin's last listing still has the victim: deleteInstances skips it.
	done, err := g.Decrease(context.Background(), []string{victim, all[1]})
	if err != nil || len(done) != 2 {
		t.Errorf("Decrease = %v, %v; want both accepted", done, err)
	}
	got := list(t, g)
	if _, ok := got[victim]; ok {
		t.Errorf("after the removal finished: %v", got)
	}
	if _, err := g.ConnectInfo(context.Background(), victim); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("ConnectInfo of a removed instance = %v, want ErrNotFound", err)
	}
	if err := env.Cloud.Check(); err != nil {
		t.Error(err)
	}
}

// TestRetriesRateLimits: rate limiting (429, or 403 with a rate-limit reason) and
// transient 5xx are retried until the call succeeds; other errors are not retried.
func TestRetriesRateLimits(t *testing.T) {
	cases := []struct {
		name      string
		err       *cloudsim.Error
		wantCalls int
		wantErr   bool
	}{
		{"429 rateLimitExceeded", &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Rate Limit Exceeded"}, 3, false},
		{"403 userRateLimitExceeded", &cloudsim.Error{Kind: cloudsim.KindDenied, Code: "userRateLimitExceeded", Message: "User Rate Limit Exceeded"}, 3, false},
		{"500 backendError", &cloudsim.Error{Kind: cloudsim.KindInternal, Message: "backend error"}, 3, false},
		{"403 forbidden", &cloudsim.Error{Kind: cloudsim.KindDenied, Message: "Required 'compute.instanceGroupManagers.get' permission"}, 1, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := gcpfake.Start(t, gcpfake.EnvOptions{Group: group("ci", 5, 2)})
			g := start(t, env, static)
			env.Cloud.ResetCalls()
			env.Cloud.Inject(gcpfake.OpListManaged, 2, c.err)
			n := 0
			err := g.Update(context.Background(), func(string, provider.State) { n++ })
			if (err != nil) != c.wantErr || (!c.wantErr && n != 2) {
				t.Errorf("Update = %v with %d instances; want error %v", err, n, c.wantErr)
			}
			if got := env.Cloud.Calls()[gcpfake.OpListManaged]; got != c.wantCalls {
				t.Errorf("listManagedInstances called %d times, want %d", got, c.wantCalls)
			}
		})
	}
}

// TestDecreaseBacksOffWhenThrottled: once a deleteInstances batch stays throttled after
// the retries, Decrease sends no more batches and reports the rest as not attempted, so
// a throttling storm is not made worse; the runner retries them with its next Decrease.
func TestDecreaseBacksOffWhenThrottled(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{Group: group("ci", 20, 6)})
	g := start(t, env, static)
	defer func(n int) { deleteBatchSize = n }(deleteBatchSize)
	deleteBatchSize = 2
	all := ids(list(t, g))
	env.Cloud.Inject(gcpfake.OpDeleteInstances, -1, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "Rate Limit Exceeded"})
	done, err := g.Decrease(context.Background(), all)
	if len(done) != 0 || err == nil || !strings.Contains(err.Error(), "delete 4 more instance(s) from group ci: not attempted") {
		t.Fatalf("Decrease = %v, %v; want nothing done and the last 4 not attempted", done, err)
	}
	if n := env.Cloud.Calls()[gcpfake.OpDeleteInstances]; n != defaultRetryMaxAttempts {
		t.Errorf("%d deleteInstances calls under throttling, want %d (one batch, retried)", n, defaultRetryMaxAttempts)
	}
	env.Cloud.ClearFaults()
	if got := list(t, g); len(got) != len(all) {
		t.Errorf("after the storm %d instances listed, want %d", len(got), len(all))
	}
	done, err = g.Decrease(context.Background(), all)
	if len(done) != len(all) || err != nil {
		t.Errorf("Decrease after the storm = %d done, %v", len(done), err)
	}
	if err := env.Cloud.Check(); err != nil {
		t.Error(err)
	}
}

// TestSSHKeyFingerprintRace: when another writer changed the metadata between the
// plugin's read and its setMetadata (a stale fingerprint), the plugin reads again and
// retries; once the key is there, ConnectInfo only reads.
func TestSSHKeyFingerprintRace(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{Group: group("ci", 5, 1)})
	g := start(t, env, provider.ConnectorConfig{Username: "runner"})
	id := ids(list(t, g))[0]
	env.Cloud.ResetCalls()
	env.Cloud.Inject(gcpfake.OpSetMetadata, 1, &cloudsim.Error{Kind: cloudsim.KindInvalid, Code: "conditionNotMet",
		Message: "Supplied fingerprint does not match current metadata fingerprint."})
	info, err := g.ConnectInfo(context.Background(), id)
	if err != nil || len(info.Key) == 0 || info.Username != "runner" {
		t.Fatalf("ConnectInfo = %+v, %v", info, err)
	}
	if c := env.Cloud.Calls(); c[gcpfake.OpSetMetadata] != 2 || c[gcpfake.OpGetInstance] != 2 {
		t.Errorf("calls = %v; want setMetadata refused once, then the instance read again and the key set", c)
	}
	env.Cloud.ResetCalls()
	if _, err := g.ConnectInfo(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	if c := env.Cloud.Calls(); c[gcpfake.OpSetMetadata] != 0 {
		t.Errorf("the key was set again: %v", c)
	}
}
