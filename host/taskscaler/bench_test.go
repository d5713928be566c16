package taskscaler

import (
	"context"
	"fmt"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// staticGroup lists a fixed set of running instances, so that the benchmark measures
// the scaler and not a fake's bookkeeping.
type staticGroup struct {
	ids []string
}

func (g *staticGroup) Init(context.Context, hclog.Logger, provider.Settings) (provider.ProviderInfo, error) {
	return provider.ProviderInfo{ID: "bench/static"}, nil
}
func (g *staticGroup) Update(_ context.Context, fn func(string, provider.State)) error {
	for _, id := range g.ids {
		fn(id, provider.StateRunning)
	}
	return nil
}
func (g *staticGroup) Increase(_ context.Context, n int) (int, error) {
	for range n {
		g.ids = append(g.ids, fmt.Sprintf("i-%06d", len(g.ids)))
	}
	return n, nil
}
func (g *staticGroup) Decrease(_ context.Context, ids []string) ([]string, error) { return ids, nil }
func (g *staticGroup) ConnectInfo(_ context.Context, id string) (provider.ConnectInfo, error) {
	return provider.ConnectInfo{ID: id, InternalAddr: "127.0.0.1"}, nil
}
func (g *staticGroup) Heartbeat(context.Context, string) error { return nil }
func (g *staticGroup) Shutdown(context.Context) error          { return nil }

// BenchmarkReconcile is B3: one reconcile cycle over a steady fleet of 100, 1k and
// 10k ready instances (capacity 30, each running 1–30 jobs), reporting the time and
// allocations per cycle and the time per instance.
func BenchmarkReconcile(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("instances=%d", n), func(b *testing.B) {
			ctx := context.Background()
			g := &staticGroup{}
			s, err := New(ctx, g, Options{Manual: true, Clock: clock.NewFake(t0), Logger: quiet(), CapacityPerInstance: 30,
				ScaleThrottle: ScaleThrottle{Limit: -1}, Policies: []Policy{{IdleCount: n * 30, IdleTime: 1 << 40}}})
			if err != nil {
				b.Fatal(err)
			}
			defer s.cancel()
			if err := s.Reconcile(ctx); err != nil { // creates n instances
				b.Fatal(err)
			}
			if err := s.Reconcile(ctx); err != nil { // they become ready
				b.Fatal(err)
			}
			// Give instance i (i mod 30)+1 jobs, then pin the policy so that the fleet
			// is exactly what is required: the cycle decides, but changes nothing.
			jobs := 0
			for i, id := range g.ids {
				in := s.instances[id]
				for k := range i%30 + 1 {
					s.takeLocked(in, k, fmt.Sprintf("job-%d-%d", i, k))
					jobs++
				}
			}
			if err := s.ConfigureSchedule([]Policy{{IdleCount: n*30 - jobs, IdleTime: 1 << 40}}); err != nil {
				b.Fatal(err)
			}
			if len(g.ids) != n {
				b.Fatalf("fleet %d, want %d", len(g.ids), n)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := s.Reconcile(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if len(g.ids) != n {
				b.Fatalf("the cycle changed the fleet: %d instances", len(g.ids))
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/instance")
		})
	}
}
