package pool

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
)

// TestEveryExecutorIsRegistered ties config's list of the executors Flotilla runs to
// the executors the pool links: a name config accepts always has a Kind, and no Kind
// is unreachable from config.toml.
func TestEveryExecutorIsRegistered(t *testing.T) {
	want := slices.Sorted(slices.Values(config.Executors))
	if got := executors.Registered(); !slices.Equal(got, want) {
		t.Errorf("registered executors %q, config.Executors %q", got, want)
	}
}

// TestStartRefusesWhatTheExecutorCannotRun: a runner entry that would fail every job
// (a shell the instance executor cannot run, a Docker host docker-autoscaler cannot
// reach) is refused by Start with the executor's reason, before a plugin is launched
// or the inventory created.
func TestStartRefusesWhatTheExecutorCannotRun(t *testing.T) {
	cases := []struct {
		name, executor, extra, want string
	}{
		{"instance with pwsh", "instance", `shell = "pwsh"`, `executor instance: shell "pwsh"`},
		{"docker-autoscaler over tcp", "docker-autoscaler", "[runners.docker]\n  host = \"tcp://10.0.0.5:2375\"",
			`executor docker-autoscaler: [runners.docker] host "tcp://10.0.0.5:2375": only unix://`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, _, err := config.Parse("test.toml", []byte(`
[[runners]]
  name = "pool"
  executor = "`+c.executor+`"
  `+c.extra+`
  [runners.autoscaler]
    plugin = "local"
    max_instances = 1
`))
			if err != nil {
				t.Fatal(err)
			}
			state := t.TempDir()
			p, err := Start(context.Background(), cfg, &cfg.Runners[0], Options{StateDir: state})
			if err == nil {
				p.Shutdown(context.Background())
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("Start: %v\nwant it to contain %q", err, c.want)
			}
			if left, _ := os.ReadDir(state); len(left) != 0 {
				t.Errorf("Start left %d files in the state directory", len(left))
			}
		})
	}
}
