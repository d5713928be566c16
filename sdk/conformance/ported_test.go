package conformance_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// TestPortedFleetingPlugins builds one plugin of each generation of GitLab's fleeting
// interface, written for GitLab's fleeting with only the import paths changed
// (testdata/ported), and runs each as the host does: a real go-plugin process launched
// by sdk/pluginclient. Each builds, conforms (the clauses of what it does not implement
// are skipped, and the report names its generation), announces what it implements, and
// answers what it does not implement with ErrNotSupported.
func TestPortedFleetingPlugins(t *testing.T) {
	addr := listen(t)
	hb, sr := provider.CapabilityHeartbeat, provider.CapabilitySuspendResume
	tests := []struct {
		dir        string
		generation int
		caps       []provider.Capability
		skipped    []string
	}{
		{"gen1-no-heartbeat", 1, nil, []string{"L0.panic", "L1.heartbeat", "L1.max-size"}},
		{"gen2-heartbeat", 2, []provider.Capability{hb}, []string{"L0.panic", "L1.max-size"}},
		{"gen3-suspend-resume", 3, []provider.Capability{hb, sr}, []string{"L0.unsupported", "L0.panic", "L1.max-size"}},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			bin := conformancetest.Build(t, "./testdata/ported/"+tt.dir)
			dir := t.TempDir()
			config := json.RawMessage(fmt.Sprintf(`{"dir":%q,"address":%q}`, dir, addr))

			rep, err := conformance.Check(t.Context(), conformance.Config{Binary: bin, L1: true, PluginConfig: config,
				Timeout: 20 * time.Second, PollInterval: 5 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			var text strings.Builder
			_ = rep.WriteText(&text)
			var skipped []string
			for _, res := range rep.Results {
				if res.Status == conformance.Skip {
					skipped = append(skipped, res.Clause)
				}
			}
			if !rep.OK() || !slices.Equal(skipped, tt.skipped) || rep.Generation != tt.generation {
				t.Fatalf("failing %v, skipped %v, generation %d; want none, %v, %d\n%s",
					rep.Failed(), skipped, rep.Generation, tt.skipped, tt.generation, text.String())
			}

			checkThroughHost(t, bin, config, tt.caps)
			if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
				t.Fatalf("instances left behind in %s: %v %v", dir, entries, err)
			}
		})
	}
}

// checkThroughHost launches the plugin as the host does and checks what the host sees:
// the capabilities the SDK announced for it, and Heartbeat, Suspend and Resume either
// working or answering ErrNotSupported.
func checkThroughHost(t *testing.T, bin string, config []byte, caps []provider.Capability) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	p, err := pluginclient.Launch(ctx, bin, config, pluginclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	info, err := p.Init(ctx, hclog.NewNullLogger(), provider.Settings{})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if !slices.Equal(info.Capabilities, caps) {
		t.Errorf("capabilities %v, want %v", info.Capabilities, caps)
	}
	if n, err := p.Increase(ctx, 1); n != 1 || err != nil {
		t.Fatalf("Increase(1) = %d, %v", n, err)
	}
	states := func() map[string]provider.State {
		got := map[string]provider.State{}
		if err := p.Update(ctx, func(id string, s provider.State) { got[id] = s }); err != nil {
			t.Fatalf("Update: %v", err)
		}
		return got
	}
	listed := states()
	if len(listed) != 1 {
		t.Fatalf("after Increase(1) the plugin lists %v, want one instance", listed)
	}
	var id string
	for id = range listed { // the only one
	}

	err = p.Heartbeat(ctx, id)
	if implemented := slices.Contains(caps, provider.CapabilityHeartbeat); implemented && err != nil ||
		!implemented && !errors.Is(err, provider.ErrNotSupported) {
		t.Errorf("Heartbeat(%s) = %v; implemented %v", id, err, implemented)
	}

	suspends := slices.Contains(caps, provider.CapabilitySuspendResume)
	for _, step := range []struct {
		name string
		call func(context.Context, []string) ([]string, error)
		want provider.State
	}{{"Suspend", p.Suspend, provider.StateSuspended}, {"Resume", p.Resume, provider.StateRunning}} {
		done, err := step.call(ctx, []string{id})
		switch {
		case !suspends && !errors.Is(err, provider.ErrNotSupported):
			t.Errorf("%s of a plugin without it = %v, %v; want ErrNotSupported", step.name, done, err)
		case suspends && (err != nil || !slices.Equal(done, []string{id})):
			t.Errorf("%s(%s) = %v, %v", step.name, id, done, err)
		case suspends && states()[id] != step.want:
			t.Errorf("after %s: %v, want %s %s", step.name, states(), id, step.want)
		}
	}

	if done, err := p.Decrease(ctx, []string{id}); err != nil || len(done) != 1 {
		t.Fatalf("Decrease = %v, %v", done, err)
	}
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}
