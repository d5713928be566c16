package simulate

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func boolPtr(b bool) *bool { return &b }

// b1Policies are the policies of the B1 frontier: GitLab's fixed idle pools, from
// none to 20 idle slots, a hand-tuned day/night schedule, and the forecast policy.
var b1Policies = []struct {
	name string
	p    []taskscaler.Policy
}{
	{"idle_count=0", []taskscaler.Policy{{}}},
	// GitLab's default once idle_count > 0: preemptive mode.
	{"idle_count=5,preemptive", []taskscaler.Policy{{IdleCount: 5, IdleTime: 20 * time.Minute}}},
	{"idle_count=5", []taskscaler.Policy{{IdleCount: 5, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)}}},
	{"idle_count=8", []taskscaler.Policy{{IdleCount: 8, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)}}},
	{"idle_count=12", []taskscaler.Policy{{IdleCount: 12, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)}}},
	{"idle_count=20", []taskscaler.Policy{{IdleCount: 20, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)}}},
	// Hand-tuned periods: 8 by night, 12 from 08:00 to 19:59 on weekdays.
	{"idle_count=12-by-day-8-by-night", []taskscaler.Policy{
		{IdleCount: 8, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)},
		{Periods: []string{"* 8-19 * * mon-fri"}, IdleCount: 12, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)}}},
	{"forecast", []taskscaler.Policy{{Mode: taskscaler.ModeForecast, IdleTime: time.Minute}}},
}

// BenchmarkB1PolicyFrontier is B1: each policy replays the same seeded CI-shaped day
// (pipelines fanning out 1–8 jobs at once, log-normal durations around 3 minutes, a
// day/night rate curve) through the real taskscaler on the simulated cloud with a
// 60 s boot. Shapes: 1,712 jobs on ephemeral instances (capacity 1, max_use_count
// 1), 10,000 jobs on ephemeral instances, 1,712 jobs with a log-normal boot (median
// 60 s, p99 180 s), and 1,712 jobs on long-lived instances (capacity 4, max_use_count
// 0). It reports job wait percentiles and the cost as a multiple of the clairvoyant
// floor, all measured in one run.
func BenchmarkB1PolicyFrontier(b *testing.B) {
	shapes := []struct {
		name         string
		jobs         int
		boot         BootTime
		capa, maxUse int
	}{
		{"jobs=1712/ephemeral", 1712, BootTime{Fixed: time.Minute}, 1, 1},
		{"jobs=10000/ephemeral", 10000, BootTime{Fixed: time.Minute}, 1, 1},
		{"jobs=1712/ephemeral/boot=lognormal60s-p99-180s", 1712, BootTime{Median: time.Minute, P99: 3 * time.Minute}, 1, 1},
		{"jobs=1712/capacity=4,max_use=0", 1712, BootTime{Fixed: time.Minute}, 4, 0},
	}
	for _, sh := range shapes {
		jobs, err := Generate(GenerateOptions{Seed: 1, Jobs: sh.jobs, Days: 1, MaxFanout: 8})
		if err != nil {
			b.Fatal(err)
		}
		for _, pol := range b1Policies {
			b.Run(fmt.Sprintf("%s/policy=%s", sh.name, pol.name), func(b *testing.B) {
				p := Params{Boot: sh.boot, Seed: 1, Scaler: taskscaler.Options{CapacityPerInstance: sh.capa, MaxUseCount: sh.maxUse,
					MaxInstances: 400, Policies: pol.p}}
				var r *Result
				for range b.N {
					if r, err = Run(context.Background(), jobs, p); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(r.WaitP50S, "wait_p50_s")
				b.ReportMetric(r.WaitP95S, "wait_p95_s")
				b.ReportMetric(r.WaitP99S, "wait_p99_s")
				b.ReportMetric(1+r.ExcessOverFloor, "cost/floor")
				b.ReportMetric(r.IdlePerJobS, "idle+boot_s/job")
				b.ReportMetric(float64(r.FailedJobs), "failed_jobs")
			})
		}
	}
}

// latencyGroup answers every call at once and notes when Increase is called, so that
// B2 measures the scaler's decision, not a cloud.
type latencyGroup struct {
	mu      sync.Mutex
	want    int
	total   int
	first   time.Time
	all     time.Time
	done    chan struct{}
	updated chan struct{}
	onceUpd sync.Once
	ids     int
}

func (g *latencyGroup) Init(context.Context, hclog.Logger, provider.Settings) (provider.ProviderInfo, error) {
	return provider.ProviderInfo{ID: "bench/latency"}, nil
}
func (g *latencyGroup) Update(context.Context, func(string, provider.State)) error {
	g.onceUpd.Do(func() { close(g.updated) })
	return nil
}
func (g *latencyGroup) Increase(_ context.Context, n int) (int, error) {
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.first.IsZero() {
		g.first = now
	}
	g.total += n
	if g.total >= g.want && g.all.IsZero() {
		g.all = now
		close(g.done)
	}
	return n, nil
}
func (g *latencyGroup) Decrease(_ context.Context, ids []string) ([]string, error) { return ids, nil }
func (g *latencyGroup) ConnectInfo(_ context.Context, id string) (provider.ConnectInfo, error) {
	return provider.ConnectInfo{ID: id}, nil
}
func (g *latencyGroup) Heartbeat(context.Context, string) error { return nil }
func (g *latencyGroup) Shutdown(context.Context) error          { return nil }

func pct(v []time.Duration, q float64) time.Duration {
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// BenchmarkB2DecisionLatency is B2: with the real clock and the real background loop,
// a step burst of 1, 30 or 300 jobs becomes visible (each job's Reserve, in
// non-preemptive mode, counts its demand), and the time to the first Increase and to
// Increase calls covering the whole burst is measured against a provider that answers
// instantly. Each iteration is one burst on a fresh scaler; p50/p99 are over the
// iterations. scale_throttle is unlimited so that the burst is not spread over time
// by design.
func BenchmarkB2DecisionLatency(b *testing.B) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, n := range []int{1, 30, 300} {
		b.Run(fmt.Sprintf("burst=%d", n), func(b *testing.B) {
			ctx := context.Background()
			var first, all []time.Duration
			for i := range b.N {
				g := &latencyGroup{want: n, done: make(chan struct{}), updated: make(chan struct{})}
				s, err := taskscaler.New(ctx, g, taskscaler.Options{Logger: quiet, ScaleThrottle: taskscaler.ScaleThrottle{Limit: -1},
					Policies: []taskscaler.Policy{{}}})
				if err != nil {
					b.Fatal(err)
				}
				<-g.updated // the loop's first cycle has started
				t0 := time.Now()
				for k := range n {
					if err := s.Reserve(ctx, fmt.Sprintf("job-%d-%d", i, k)); err != nil {
						b.Fatal(err)
					}
				}
				select {
				case <-g.done:
				case <-time.After(10 * time.Second):
					b.Fatalf("burst of %d: only %d instances requested after 10s", n, g.total)
				}
				g.mu.Lock()
				first = append(first, g.first.Sub(t0))
				all = append(all, g.all.Sub(t0))
				g.mu.Unlock()
				if err := s.Shutdown(ctx); err != nil {
					b.Fatal(err)
				}
			}
			us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
			b.ReportMetric(us(pct(first, 0.50)), "first_increase_p50_µs")
			b.ReportMetric(us(pct(first, 0.99)), "first_increase_p99_µs")
			b.ReportMetric(us(pct(all, 0.50)), "all_requested_p50_µs")
			b.ReportMetric(us(pct(all, 0.99)), "all_requested_p99_µs")
		})
	}
}
