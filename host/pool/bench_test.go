package pool

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// scriptStart is a job log that notes when the job's script starts (its step_script
// section opens), as the runner sees it.
type scriptStart struct {
	mu  sync.Mutex
	buf bytes.Buffer
	at  time.Time
}

func (s *scriptStart) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	if s.at.IsZero() && bytes.Contains(s.buf.Bytes(), []byte("section_start:")) && bytes.Contains(s.buf.Bytes(), []byte(":step_script")) {
		s.at = time.Now()
	}
	return len(p), nil
}

// startLatencies runs n jobs one after the other on p and returns, for each, the time
// from the slot being held to the job's script starting.
func startLatencies(b *testing.B, p *Pool, n int) []time.Duration {
	var d []time.Duration
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		var log scriptStart
		var held time.Time
		res, _ := p.Run(ctx, scriptJob(fmt.Sprint(i), "true"), fmt.Sprintf("b10-%d", i), &log,
			RunOptions{Runtime: executors.RunOptions{Executor: "instance"}, OnSlot: func(Slot) { held = time.Now() }})
		cancel()
		if res.Status != executors.StatusSuccess || log.at.IsZero() {
			b.Fatalf("job %d: %+v\n%s", i, res, log.buf.String())
		}
		d = append(d, log.at.Sub(held))
	}
	slices.Sort(d)
	return d
}

func percentile(d []time.Duration, p int) time.Duration {
	return d[min(len(d)-1, (len(d)*p+99)/100-1)]
}

// BenchmarkB10VMIsolationStart is B10: a job's start overhead under vm_isolation on a
// warm instance (the slot held → the script starts: the VM created, booted and
// connected to, the executor prepared in it), next to the same job without isolation,
// p50 and p95 over a few jobs; the accelerator is in the name.
func BenchmarkB10VMIsolationStart(b *testing.B) {
	const runs = 5
	v := newVMHost(b)
	warm := "    [[runners.autoscaler.policy]]\n      idle_count = 1\n      idle_time = \"1h\""
	isolated := v.start(b, poolSpec{autoscaler: warm, deleteOnShutdown: true})
	eventually.True(b, "a warm instance", time.Minute, func() bool { return len(isolated.Status().InstanceList) == 1 })
	plainCfg := load(b, fmt.Sprintf("      root_dir = %q", b.TempDir()), warm)
	plain, err := Start(context.Background(), plainCfg, &plainCfg.Runners[0], Options{Logger: quiet, StateDir: b.TempDir(), DeleteOnShutdown: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { shutdownPool(b, plain) })
	b.Run("accel="+v.h.Info().Accelerator, func(b *testing.B) {
		var vm, direct []time.Duration
		for range b.N {
			vm = append(vm, startLatencies(b, isolated, runs)...)
			direct = append(direct, startLatencies(b, plain, runs)...)
		}
		slices.Sort(vm)
		slices.Sort(direct)
		b.ReportMetric(percentile(vm, 50).Seconds(), "vm-p50-s")
		b.ReportMetric(percentile(vm, 95).Seconds(), "vm-p95-s")
		b.ReportMetric(percentile(direct, 50).Seconds(), "direct-p50-s")
		b.ReportMetric(0, "ns/op")
	})
}
