package conformance_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// parseAddr is the Dial used with sdk/fake, whose instances have no real address: it
// checks only that the host could work out where to dial.
func parseAddr(_ context.Context, info provider.ConnectInfo) error {
	_, err := info.Addr(false)
	return err
}

// Fault-injected fakes: each wraps sdk/fake and breaks exactly one rule.

// decreaseAll deletes every instance, not only those it is given.
type decreaseAll struct{ *fake.Group }

func (g *decreaseAll) Decrease(ctx context.Context, ids []string) ([]string, error) {
	done, err := g.Group.Decrease(ctx, ids)
	var others []string
	for id := range g.Instances() {
		if !slices.Contains(ids, id) {
			others = append(others, id)
		}
	}
	if len(done) > 0 && len(others) > 0 {
		_, _ = g.Group.Decrease(ctx, others)
	}
	return done, err
}

// shutdownFails answers Shutdown with an error. (sdk/plugin runs a plugin's Shutdown
// once and repeats its answer, so a Go plugin's second call cannot differ from its first.)
type shutdownFails struct{ *fake.Group }

func (g *shutdownFails) Shutdown(ctx context.Context) error {
	_ = g.Group.Shutdown(ctx)
	return errors.New("shutdown: client already closed")
}

// slowUpdate does a slow "cloud call" that ignores its context.
type slowUpdate struct{ *fake.Group }

func (g *slowUpdate) Update(ctx context.Context, fn func(string, provider.State)) error {
	time.Sleep(3 * time.Second)
	return g.Group.Update(context.WithoutCancel(ctx), fn)
}

// unstableIDs reports each instance under a new ID in every Update.
type unstableIDs struct {
	*fake.Group
	mu sync.Mutex
	n  int
}

func (g *unstableIDs) Update(ctx context.Context, fn func(string, provider.State)) error {
	g.mu.Lock()
	g.n++
	n := g.n
	g.mu.Unlock()
	return g.Group.Update(ctx, func(id string, s provider.State) { fn(fmt.Sprintf("%s~%d", id, n), s) })
}

func stable(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i], _, _ = strings.Cut(id, "~")
	}
	return out
}

func (g *unstableIDs) Decrease(ctx context.Context, ids []string) ([]string, error) {
	done, err := g.Group.Decrease(ctx, stable(ids))
	if len(done) > 0 {
		done = ids // it accepted them, under the names it was given
	}
	return done, err
}

func (g *unstableIDs) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	return g.Group.ConnectInfo(ctx, stable([]string{id})[0])
}

func (g *unstableIDs) Heartbeat(ctx context.Context, id string) error {
	return g.Group.Heartbeat(ctx, stable([]string{id})[0])
}

// ignoresMaxSize announces a MaxSize of 4 but creates whatever it is asked for.
type ignoresMaxSize struct{ *fake.Group }

func (g *ignoresMaxSize) Init(ctx context.Context, l hclog.Logger, s provider.Settings) (provider.ProviderInfo, error) {
	info, err := g.Group.Init(ctx, l, s)
	info.MaxSize = 4
	return info, err
}

// validated has a configuration of two required keys; firstOnly makes its Validate
// stop at the first problem.
type validated struct {
	*fake.Group
	A         string `json:"a"`
	B         string `json:"b"`
	firstOnly bool
}

func (g *validated) Validate() error {
	var errs []error
	if g.A == "" {
		errs = append(errs, errors.New("plugin_config.a: required"))
	}
	if g.B == "" {
		errs = append(errs, errors.New("plugin_config.b: required"))
	}
	if g.firstOnly && len(errs) > 1 {
		errs = errs[:1]
	}
	return errors.Join(errs...)
}

// suspendOnly has Suspend but no Resume, so it is not a provider.Suspender: the SDK
// serves neither and announces no suspend_resume.
type suspendOnly struct{ *fake.Group }

func (g *suspendOnly) Suspend(context.Context, []string) ([]string, error) { return nil, nil }

// noAddress reports connect info without any address.
type noAddress struct{ *fake.Group }

func (g *noAddress) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	info, err := g.Group.ConnectInfo(ctx, id)
	info.InternalAddr, info.ExternalAddr = "", ""
	return info, err
}

func TestKitOnFaultInjectedFakes(t *testing.T) {
	opts := fake.Options{MaxSize: 5, CreatingUpdates: 1, DeletingUpdates: 1}
	shared := func(wrap func(*fake.Group) provider.InstanceGroup) func() provider.InstanceGroup {
		g := fake.New(opts)
		return func() provider.InstanceGroup { return wrap(g) }
	}
	tests := []struct {
		name    string
		new     func() provider.InstanceGroup
		tweak   func(*conformance.Config)
		failing []string
		// skipped are the clauses a conforming plugin of this generation skips;
		// generation, when not 0, is the generation the report must name.
		skipped    []string
		generation int
	}{
		{name: "sdk/fake conforms", new: shared(func(g *fake.Group) provider.InstanceGroup { return g }),
			generation: 2},
		{name: "a first-generation plugin (no Heartbeat) conforms",
			new:     shared(func(g *fake.Group) provider.InstanceGroup { return fake.FirstGeneration(g) }),
			skipped: []string{"L1.heartbeat"}, generation: 1},
		{name: "a third-generation plugin (Suspend and Resume) conforms",
			new:     shared(func(g *fake.Group) provider.InstanceGroup { return &fake.Suspending{Group: g} }),
			skipped: []string{"L0.unsupported"}, generation: 3},
		{name: "fake with a validated configuration conforms",
			new: shared(func(g *fake.Group) provider.InstanceGroup { return &validated{Group: g} }),
			tweak: func(c *conformance.Config) {
				c.PluginConfig = json.RawMessage(`{"a":"x","b":"y"}`)
				c.BadConfig, c.BadConfigWant = json.RawMessage(`{"a":""}`), []string{"plugin_config.a", "plugin_config.b"}
			}},
		{name: "Decrease deletes instances it was not given",
			new:     shared(func(g *fake.Group) provider.InstanceGroup { return &decreaseAll{g} }),
			failing: []string{"L1.decrease.subset"}},
		{name: "Shutdown fails",
			new:     shared(func(g *fake.Group) provider.InstanceGroup { return &shutdownFails{g} }),
			failing: []string{"L0.shutdown.idempotent"}},
		{name: "Update ignores cancellation",
			new: shared(func(g *fake.Group) provider.InstanceGroup { return &slowUpdate{g} }),
			// L0 only: every Update of this plugin is slow.
			tweak:   func(c *conformance.Config) { c.L1, c.Prompt = false, time.Second },
			failing: []string{"L0.cancel"}},
		{name: "instance IDs not stable",
			new:     shared(func(g *fake.Group) provider.InstanceGroup { return &unstableIDs{Group: g} }),
			failing: []string{"L1.increase"}},
		{name: "MaxSize ignored",
			new:     func() provider.InstanceGroup { return nil }, // replaced below
			failing: []string{"L1.max-size"}},
		{name: "config errors report only the first problem",
			new: shared(func(g *fake.Group) provider.InstanceGroup { return &validated{Group: g, firstOnly: true} }),
			tweak: func(c *conformance.Config) {
				c.PluginConfig = json.RawMessage(`{"a":"x","b":"y"}`)
				c.BadConfig, c.BadConfigWant = json.RawMessage(`{"a":""}`), []string{"plugin_config.a", "plugin_config.b"}
			},
			failing: []string{"L0.config.all-problems"}},
		{name: "Suspend without Resume is served as neither",
			new:        shared(func(g *fake.Group) provider.InstanceGroup { return &suspendOnly{g} }),
			generation: 2},
		{name: "connect info without an address",
			new:     shared(func(g *fake.Group) provider.InstanceGroup { return &noAddress{g} }),
			failing: []string{"L1.connect"}},
		{name: "instances forgotten by a relaunch",
			new:     func() provider.InstanceGroup { return fake.New(opts) },
			failing: []string{"L1.relaunch"}},
	}
	for _, tt := range tests {
		if tt.name == "MaxSize ignored" {
			g := fake.New(fake.Options{CreatingUpdates: 1, DeletingUpdates: 1}) // no limit of its own
			tt.new = func() provider.InstanceGroup { return &ignoresMaxSize{g} }
		}
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := conformance.Config{New: tt.new, L1: true, Timeout: 20 * time.Second,
				PollInterval: 5 * time.Millisecond, Dial: parseAddr}
			if tt.tweak != nil {
				tt.tweak(&cfg)
			}
			rep, err := conformance.Check(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			_ = rep.WriteText(&b)
			if got := rep.Failed(); !slices.Equal(got, tt.failing) {
				t.Fatalf("failing clauses = %v, want %v\n%s", got, tt.failing, b.String())
			}
			for _, res := range rep.Results {
				if res.Status == conformance.Skip && res.Clause != "L0.version" && len(tt.failing) == 0 && !slices.Contains(tt.skipped, res.Clause) {
					t.Errorf("%s skipped on a conforming plugin: %s", res.Clause, res.Detail)
				}
			}
			for _, id := range tt.skipped {
				if res, _ := rep.Result(id); res.Status != conformance.Skip {
					t.Errorf("%s: %s, want skipped (the plugin does not implement what it checks)\n%s", id, res.Status, b.String())
				}
			}
			if tt.generation != 0 && rep.Generation != tt.generation {
				t.Errorf("report names generation %d, want %d\n%s", rep.Generation, tt.generation, b.String())
			}
			if want := fmt.Sprintf("plugin interface: fleeting generation %d", tt.generation); tt.generation != 0 && !strings.Contains(b.String(), want) {
				t.Errorf("text report does not say %q:\n%s", want, b.String())
			}
		})
	}
}

func TestRunMapsClausesToSubtests(t *testing.T) {
	g := fake.New(fake.Options{MaxSize: 4})
	conformancetest.Run(t, conformance.Config{New: func() provider.InstanceGroup { return g }, L1: true,
		Timeout: 20 * time.Second, PollInterval: 5 * time.Millisecond, Dial: parseAddr})
	if left := g.Instances(); len(left) != 0 {
		t.Fatalf("the kit left instances behind: %v", left)
	}
	if g.Shutdowns() == 0 {
		t.Fatal("the kit never called Shutdown")
	}
}

func TestConfigMustNameOnePlugin(t *testing.T) {
	for _, cfg := range []conformance.Config{{}, {Binary: "x", New: func() provider.InstanceGroup { return nil }}} {
		if _, err := conformance.Check(context.Background(), cfg); err == nil {
			t.Errorf("Check(%+v) accepted a config naming %s", cfg, map[bool]string{true: "two plugins", false: "no plugin"}[cfg.Binary != ""])
		}
	}
}

// listen accepts and closes TCP connections on loopback: the "instance" of a plugin
// whose instances are all reached at one address.
func listen(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

const testPlugin = "github.com/flotilla-ci/flotilla/sdk/conformance/testdata/testplugin"

func TestKitOnBinaries(t *testing.T) {
	minimal := conformancetest.Build(t, "github.com/flotilla-ci/flotilla/examples/minimal-plugin")
	broken := conformancetest.Build(t, testPlugin)
	addr := listen(t)
	tests := []struct {
		name    string
		binary  string
		config  string
		panic   bool
		failing []string
		skipped []string
	}{
		{name: "minimal example", binary: minimal, config: `{"dir":%q,"address":%q}`,
			skipped: []string{"L0.panic", "L1.max-size"}},
		{name: "test plugin with a panic hook", binary: broken, config: `{"dir":%q,"address":%q,"max_size":4}`, panic: true},
		{name: "Decrease deletes everything", binary: broken, config: `{"dir":%q,"address":%q,"fault":"decrease-all"}`,
			failing: []string{"L1.decrease.subset"}, skipped: []string{"L0.panic", "L1.max-size"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := conformance.Config{Binary: tt.binary, L1: true, Timeout: 20 * time.Second, PollInterval: 5 * time.Millisecond,
				PluginConfig: json.RawMessage(fmt.Sprintf(tt.config, dir, addr))}
			if tt.panic {
				cfg.Panic = func(ctx context.Context, g provider.InstanceGroup) error {
					return g.(provider.Heartbeater).Heartbeat(ctx, "panic")
				}
			}
			rep, err := conformance.Check(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			_ = rep.WriteText(&b)
			var skipped []string
			for _, res := range rep.Results {
				if res.Status == conformance.Skip {
					skipped = append(skipped, res.Clause)
				}
			}
			if got := rep.Failed(); !slices.Equal(got, tt.failing) || !slices.Equal(skipped, tt.skipped) {
				t.Fatalf("failing %v, skipped %v; want %v and %v\n%s", got, skipped, tt.failing, tt.skipped, b.String())
			}
			if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
				t.Fatalf("instances left behind in %s: %v %v", dir, entries, err)
			}
		})
	}
}
