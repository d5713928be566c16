package googlecloud

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/api/googleapi"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/gcpfake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// dropper stands between the plugin and the fake and drops the connection of chosen
// requests, as a timeout or a reset connection does: before the fake sees the request,
// or after the fake acted on it (its answer is lost, so the client cannot tell).
type dropper struct {
	next http.Handler

	mu      sync.Mutex
	rule    *dropRule
	dropped int
}

type dropRule struct {
	method string
	suffix string // of the URL path
	after  bool   // the fake acts first
	times  int
}

// arm drops the next times requests matching method and the path suffix.
func (d *dropper) arm(method, suffix string, after bool, times int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.rule = &dropRule{method: method, suffix: suffix, after: after, times: times}
	d.dropped = 0
}

func (d *dropper) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped
}

func (d *dropper) take(r *http.Request) (after, drop bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rule == nil || d.rule.times == 0 || r.Method != d.rule.method || !strings.HasSuffix(r.URL.Path, d.rule.suffix) {
		return false, false
	}
	d.rule.times--
	d.dropped++
	return d.rule.after, true
}

func (d *dropper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if after, drop := d.take(r); drop {
		if after {
			d.next.ServeHTTP(httptest.NewRecorder(), r)
		}
		panic(http.ErrAbortHandler) // the connection closes without an answer
	}
	d.next.ServeHTTP(w, r)
}

// startDropping starts a fake GCP behind a dropper and points the plugin at the dropper.
func startDropping(t *testing.T, opts gcpfake.EnvOptions) (*gcpfake.Env, *dropper) {
	t.Helper()
	env := gcpfake.Start(t, opts)
	d := &dropper{next: env.Fake.Server.Config.Handler}
	srv := httptest.NewServer(d)
	t.Cleanup(srv.Close)
	var m map[string]any
	if err := json.Unmarshal(env.PluginConfig, &m); err != nil {
		t.Fatal(err)
	}
	m["endpoint"] = srv.URL
	env.PluginConfig, _ = json.Marshal(m)
	return env, d
}

// TestRetriesDroppedConnections: a request whose connection drops (before the cloud saw
// it, or after it acted and the answer was lost) is retried, at Init and in every call,
// and a retried mutation is not applied twice.
func TestRetriesDroppedConnections(t *testing.T) {
	igmPath := "/instanceGroupManagers/ci"
	cases := []struct {
		name    string
		method  string
		suffix  string
		after   bool
		atInit  bool
		run     func(t *testing.T, g *InstanceGroup, env *gcpfake.Env)
		minSeen int // calls of the fake's operation the retry must have made
	}{
		{name: "Init: instanceGroupManagers.get", method: http.MethodGet, suffix: igmPath, atInit: true},
		{name: "Init: projects.testIamPermissions", method: http.MethodPost, suffix: ":testIamPermissions",
			run: func(t *testing.T, g *InstanceGroup, _ *gcpfake.Env) {
				findings, err := g.Doctor(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range findings {
					if f.Check == "permissions" {
						t.Errorf("doctor: %s: %s; want the permissions checked after a retry", f.Check, f.Message)
					}
				}
			}},
		{name: "Update: listManagedInstances dropped", method: http.MethodPost, suffix: "/listManagedInstances",
			run: func(t *testing.T, g *InstanceGroup, _ *gcpfake.Env) { wantListed(t, g, 2) }},
		{name: "Update: listManagedInstances answer lost", method: http.MethodPost, suffix: "/listManagedInstances", after: true,
			run: func(t *testing.T, g *InstanceGroup, _ *gcpfake.Env) { wantListed(t, g, 2) }},
		{name: "Increase: resize answer lost", method: http.MethodPost, suffix: "/resize", after: true,
			run: func(t *testing.T, g *InstanceGroup, env *gcpfake.Env) {
				if n, err := g.Increase(context.Background(), 2); n != 2 || err != nil {
					t.Errorf("Increase(2) = %d, %v", n, err)
				}
				if grp, _ := env.Cloud.GetGroup(env.Group); grp.Desired != 4 {
					t.Errorf("targetSize = %d after Increase(2) from 2, want 4 (the retry must not add 2 more)", grp.Desired)
				}
			}},
		{name: "Decrease: deleteInstances answer lost", method: http.MethodPost, suffix: "/deleteInstances", after: true,
			run: func(t *testing.T, g *InstanceGroup, env *gcpfake.Env) {
				victim := ids(list(t, g))[0]
				if done, err := g.Decrease(context.Background(), []string{victim}); len(done) != 1 || err != nil {
					t.Errorf("Decrease = %v, %v", done, err)
				}
				if grp, _ := env.Cloud.GetGroup(env.Group); grp.Desired != 1 {
					t.Errorf("targetSize = %d after deleting 1 of 2, want 1", grp.Desired)
				}
				if got := env.Cloud.Reasons()[gcpfake.OpDeleteInstances]; got != 1 {
					t.Errorf("%d instances deleted, want 1", got)
				}
			}},
		{name: "zoneOperations.wait dropped", method: http.MethodPost, suffix: "/wait",
			run: func(t *testing.T, g *InstanceGroup, _ *gcpfake.Env) {
				if n, err := g.Increase(context.Background(), 1); n != 1 || err != nil {
					t.Errorf("Increase(1) = %d, %v", n, err)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env, d := startDropping(t, gcpfake.EnvOptions{Group: group("ci", 10, 2)})
			if c.atInit {
				d.arm(c.method, c.suffix, c.after, 1)
			}
			g := start(t, env, static)
			if !c.atInit {
				list(t, g)
				d.arm(c.method, c.suffix, c.after, 1)
				c.run(t, g, env)
			}
			if d.count() != 1 {
				t.Errorf("%d requests dropped, want 1: the case did not exercise %s %s", d.count(), c.method, c.suffix)
			}
			if err := env.Cloud.Check(); err != nil {
				t.Error(err)
			}
		})
	}
}

func wantListed(t *testing.T, g *InstanceGroup, n int) {
	t.Helper()
	got := 0
	if err := g.Update(context.Background(), func(string, provider.State) { got++ }); err != nil || got != n {
		t.Errorf("Update = %v with %d instances, want %d", err, got, n)
	}
}

// TestRetryable: which errors are retried. Transport failures are, whether or not the
// request reached the server; a caller that gave up (context) and client errors are not.
func TestRetryable(t *testing.T) {
	urlErr := func(err error) error { return &url.Error{Op: "Post", URL: "https://compute.example/x", Err: err} }
	opErr := func(errno syscall.Errno) error {
		return urlErr(&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", errno)})
	}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"EOF", urlErr(io.EOF), true},
		{"unexpected EOF reading the body", fmt.Errorf("read body: %w", io.ErrUnexpectedEOF), true},
		{"connection reset", opErr(syscall.ECONNRESET), true},
		{"connection refused", opErr(syscall.ECONNREFUSED), true},
		{"broken pipe", opErr(syscall.EPIPE), true},
		{"network timeout", urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}), true},
		{"http2 connection lost", urlErr(errors.New("http2: client connection lost")), true},
		{"503", &googleapi.Error{Code: http.StatusServiceUnavailable}, true},
		{"429", &googleapi.Error{Code: http.StatusTooManyRequests}, true},
		{"context canceled", urlErr(context.Canceled), false},
		{"context deadline", urlErr(context.DeadlineExceeded), false},
		{"400", &googleapi.Error{Code: http.StatusBadRequest}, false},
		{"404", &googleapi.Error{Code: http.StatusNotFound}, false},
		{"other", errors.New("invalid character 'x' looking for beginning of value"), false},
	}
	for _, c := range cases {
		if got := retryable(c.err); got != c.want {
			t.Errorf("%s: retryable(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// TestLateListing: Compute Engine is eventually consistent, and the group lists a new
// instance as RUNNING before instances.get shows it. Until it does, Update reports the
// instance as creating, and Heartbeat and ConnectInfo say it is not ready yet
// (ErrInstanceUnhealthy), not that it is unknown (ErrNotFound). Once seen, an instance
// costs no more lookups in Update.
func TestLateListing(t *testing.T) {
	const lag = 15 * time.Second
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	env := gcpfake.Start(t, gcpfake.EnvOptions{Cloud: cloudsim.Options{Clock: clock, ListLag: lag}, Group: group("ci", 5, 0)})
	g := start(t, env, static)
	ctx := context.Background()
	if n, err := g.Increase(ctx, 2); n != 2 || err != nil {
		t.Fatalf("Increase(2) = %d, %v", n, err)
	}
	clock.Advance(time.Second) // booted: the group shows them RUNNING
	got := list(t, g)
	if len(got) != 2 {
		t.Fatalf("Update listed %v, want 2 instances", got)
	}
	for id, s := range got {
		if s != provider.StateCreating {
			t.Errorf("%s is %s while instances.get does not show it, want creating", id, s)
		}
		if err := g.Heartbeat(ctx, id); !errors.Is(err, provider.ErrInstanceUnhealthy) || errors.Is(err, provider.ErrNotFound) ||
			!strings.Contains(err.Error(), "not ready yet") {
			t.Errorf("Heartbeat during the lag = %v, want not ready yet (ErrInstanceUnhealthy, not ErrNotFound)", err)
		}
		if _, err := g.ConnectInfo(ctx, id); !errors.Is(err, provider.ErrInstanceUnhealthy) || errors.Is(err, provider.ErrNotFound) {
			t.Errorf("ConnectInfo during the lag = %v, want not ready yet (ErrInstanceUnhealthy, not ErrNotFound)", err)
		}
	}
	if err := g.Heartbeat(ctx, "flotilla-99999"); !errors.Is(err, provider.ErrNotFound) {
		t.Errorf("Heartbeat of an instance not in the group = %v, want ErrNotFound", err)
	}
	clock.Advance(lag)
	for id, s := range list(t, g) {
		if s != provider.StateRunning {
			t.Errorf("%s is %s once instances.get shows it, want running", id, s)
		}
		if err := g.Heartbeat(ctx, id); err != nil {
			t.Errorf("Heartbeat after the lag: %v", err)
		}
		if info, err := g.ConnectInfo(ctx, id); err != nil || info.InternalAddr == "" {
			t.Errorf("ConnectInfo after the lag = %+v, %v", info, err)
		}
	}
	env.Cloud.ResetCalls()
	list(t, g)
	if calls := env.Cloud.Calls(); calls[gcpfake.OpListManaged] != 1 || len(calls) != 1 {
		t.Errorf("calls = %v; want one listManagedInstances only for instances already seen", calls)
	}
}
