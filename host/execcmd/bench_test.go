package execcmd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
	"github.com/flotilla-ci/flotilla/host/pipelinerun"
	"github.com/flotilla-ci/flotilla/host/pool"
)

// BenchmarkB6TrivialJob measures the wall time of a trivial job (`true`) through the
// whole `runner exec` path — plan, slot from the taskscaler on a warm idle local
// instance, SSH session on the pooled connection, source copy, script, after-job
// cleanup — against running the same script directly with bash, in the same run.
func BenchmarkB6TrivialJob(b *testing.B) {
	state := b.TempDir()
	cfgText := fmt.Sprintf(`concurrent = 1
[[runners]]
  name = "bench"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 1
    max_instances = 1
    update_interval_when_expecting = "50ms"
    [runners.autoscaler.plugin_config]
      root_dir = %q
    [[runners.autoscaler.policy]]
      idle_count = 1
      idle_time = "1h"
`, filepath.Join(state, "instances"))
	cfg, _, err := config.Parse("bench.toml", []byte(cfgText))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	m, err := pool.Start(ctx, cfg, &cfg.Runners[0], pool.Options{StateDir: filepath.Join(state, "state"), DeleteOnShutdown: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Shutdown(context.Background())
	p, err := pipeline.Parse("bench.yml", []byte("job:\n  script: ['true']\n"))
	if err != nil {
		b.Fatal(err)
	}
	src := b.TempDir()
	runner := &pipelinerun.Runner{Pool: m, LogDir: filepath.Join(state, "logs"),
		Options: executors.RunOptions{Executor: "instance"}}
	runOnce := func() time.Duration {
		plan, _ := p.Plan()
		plan.Jobs[0].Source = jobs.Source{Kind: jobs.SourceLocal, Dir: src}
		start := time.Now()
		sum, err := runner.Run(ctx, plan)
		if err != nil || !sum.Passed {
			b.Fatalf("job failed: %v %+v", err, sum)
		}
		return time.Since(start)
	}
	runOnce() // the first run waits for the instance to boot; measure warm runs only
	var viaRunner, direct []time.Duration
	b.ResetTimer()
	for range b.N {
		viaRunner = append(viaRunner, runOnce())
		start := time.Now()
		if err := exec.Command("bash", "-c", "true").Run(); err != nil {
			b.Fatal(err)
		}
		direct = append(direct, time.Since(start))
	}
	b.StopTimer()
	p50 := func(d []time.Duration) time.Duration {
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return d[len(d)/2]
	}
	b.ReportMetric(float64(p50(viaRunner).Microseconds())/1000, "job-p50-ms")
	b.ReportMetric(float64(p50(direct).Microseconds())/1000, "direct-p50-ms")
	b.ReportMetric(float64(p50(viaRunner))/float64(p50(direct)), "ratio")
}
