package pool

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/plugins/local"
)

// TestMain lets this test binary serve the embedded local plugin, as the runner does.
func TestMain(m *testing.M) {
	local.ServeIfAsked(os.Args)
	os.Exit(m.Run())
}

// load parses a one-runner config of the local plugin with max_instances = 1 and
// pluginConfig as its [runners.autoscaler.plugin_config]; autoscaler lines go into
// [runners.autoscaler] (keys first, then tables such as a policy).
func load(t testing.TB, pluginConfig string, autoscaler ...string) *config.Config {
	t.Helper()
	cfg, _, err := config.Parse("test.toml", []byte(fmt.Sprintf(`
[[runners]]
  name = "pool"
  token = "glrt-abcdefghijklmnop"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
    max_instances = 1
%s
    [runners.autoscaler.plugin_config]
%s
`, strings.Join(autoscaler, "\n"), pluginConfig)))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestStartFailureLeavesNothingRunning(t *testing.T) {
	cfg := load(t, fmt.Sprintf("      root_dir = %q\n      max_instancez = 3\n", t.TempDir()))
	reg := prometheus.NewRegistry()
	m, err := Start(context.Background(), cfg, &cfg.Runners[0], Options{Logger: quiet, StateDir: t.TempDir(), Metrics: reg})
	if err == nil {
		m.Shutdown(context.Background())
		t.Fatal("Start accepted an unknown plugin_config key")
	}
	if !strings.Contains(err.Error(), "plugin_config.max_instancez") {
		t.Fatalf("error does not name the key: %v", err)
	}
	// The metrics registered before the failure are gone again, so a retry can register.
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("%d metric families left registered after a failed Start", len(mfs))
	}
}

func TestStartAndShutdown(t *testing.T) {
	root := t.TempDir()
	cfg := load(t, fmt.Sprintf("      root_dir = %q\n", root))
	reg := prometheus.NewRegistry()
	m, err := Start(context.Background(), cfg, &cfg.Runners[0], Options{Logger: quiet, StateDir: t.TempDir(), Metrics: reg, DeleteOnShutdown: true})
	if err != nil {
		t.Fatal(err)
	}
	mfs, _ := reg.Gather()
	var sawRunnerLabel bool
	for _, mf := range mfs {
		for _, mm := range mf.GetMetric() {
			for _, l := range mm.GetLabel() {
				if l.GetName() == "runner" && l.GetValue() == "abcdefghi" {
					sawRunnerLabel = true
				}
			}
		}
	}
	if !sawRunnerLabel {
		t.Errorf("metrics lack the runner label with the short token (never the whole token)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Errorf("metrics still registered after Shutdown")
	}
	// The plugin released its root_dir: a new pool on the same directory starts.
	m2, err := Start(context.Background(), cfg, &cfg.Runners[0], Options{Logger: quiet, StateDir: t.TempDir()})
	if err != nil {
		t.Fatalf("restart on the same root_dir: %v", err)
	}
	m2.Shutdown(ctx)
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "local-") {
			t.Errorf("instance %s left in %s", e.Name(), filepath.Base(root))
		}
	}
}
