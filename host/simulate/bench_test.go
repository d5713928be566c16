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

// b1Policies are the policies of the B1 frontier (benchmarks.md §2 baselines a–c),
// against Flotilla's shipped example policy.
var b1Policies = []struct {
	name string
	p    taskscaler.Policy
}{
	// The policy every example config ships: idle_count 5, idle_time 20m, with
	// GitLab's default of preemptive mode whenever idle_count > 0.
	{"flotilla-default", taskscaler.Policy{IdleCount: 5, IdleTime: 20 * time.Minute}},
	// The same without preemptive mode: demand beyond the idle pool scales up at once.
	{"flotilla-default-nonpreemptive", taskscaler.Policy{IdleCount: 5, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)}},
	// (a) Pure reactive: no idle pool, instances go as soon as they are idle.
	{"no-idle", taskscaler.Policy{}},
	// (b) A fixed idle pool of 10 slots, demand beyond it scaling up at once.
	{"fixed-idle-10", taskscaler.Policy{IdleCount: 10, IdleTime: 5 * time.Minute, PreemptiveMode: boolPtr(false)}},
	// (c) Proportional idle: 20 % of the running jobs.
	{"proportional-0.2", taskscaler.Policy{ScaleFactor: 0.2, IdleTime: 5 * time.Minute}},
}

// BenchmarkB1PolicyFrontier is B1: each policy replays the same seeded 10,000-job
// synthetic day through the real taskscaler on the simulated cloud, with a fixed 45 s
// boot and a log-normal one (median 60 s, p99 180 s), at max_use_count 10 and 1. It
// reports job wait percentiles, idle (booting included) instance-seconds per job,
// and the excess of instance-seconds over the clairvoyant floor C*.
func BenchmarkB1PolicyFrontier(b *testing.B) {
	jobs, err := Generate(GenerateOptions{Seed: 1, Jobs: 10000, Days: 1})
	if err != nil {
		b.Fatal(err)
	}
	boots := []struct {
		name string
		b    BootTime
	}{
		{"boot=fixed45s", BootTime{Fixed: 45 * time.Second}},
		{"boot=lognormal60s-p99-180s", BootTime{Median: time.Minute, P99: 3 * time.Minute}},
	}
	for _, bt := range boots {
		for _, maxUse := range []int{10, 1} {
			for _, pol := range b1Policies {
				b.Run(fmt.Sprintf("%s/max_use=%d/policy=%s", bt.name, maxUse, pol.name), func(b *testing.B) {
					p := Params{Boot: bt.b, Seed: 1, Scaler: taskscaler.Options{MaxUseCount: maxUse, Policies: []taskscaler.Policy{pol.p}}}
					var r *Result
					for range b.N {
						if r, err = Run(context.Background(), jobs, p); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(r.WaitP50S, "wait_p50_s")
					b.ReportMetric(r.WaitP95S, "wait_p95_s")
					b.ReportMetric(r.WaitP99S, "wait_p99_s")
					b.ReportMetric(r.IdlePerJobS, "idle+boot_s/job")
					b.ReportMetric(r.InstanceSeconds/float64(r.Jobs), "inst_s/job")
					b.ReportMetric(r.ClairvoyantInstanceSeconds/float64(r.Jobs), "floor_s/job")
					b.ReportMetric(100*r.ExcessOverFloor, "excess_%")
					b.ReportMetric(r.ZeroIdleWaitS, "zero_idle_wait_s")
					b.ReportMetric(float64(r.FailedJobs), "failed_jobs")
				})
			}
		}
	}
}

// latencyGroup answers every call at once and notes when Increase is called, so that
// B2 measures the scaler's decision, not a cloud.
type latencyGroup struct {
	provider.NoSuspend
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
