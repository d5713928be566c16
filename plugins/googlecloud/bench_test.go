package googlecloud

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/gcpfake"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// b4Tick is the simulated scheduler's decision interval; b4Idle is taskscaler's 1 m
// update_interval, used for the idle phase.
const (
	b4Tick  = 10 * time.Second
	b4Idle  = time.Minute
	b4Peak  = 200
	b4Limit = 2 * time.Hour // virtual time after which a phase counts as not converged
)

// b4Result is what one ramp measured.
type b4Result struct {
	upCalls, downCalls, idleCalls int // calls made by Increase, by Decrease, while idle
	listCalls, updates            int // calls made by Update, and Updates made, while scaling
	upEvents, downEvents          int
	upTime, downTime              time.Duration
	throttled                     int
}

// rampOnce drives one 0 → b4Peak → 0 ramp through the plugin against a simulated
// cloud on virtual time, as a scheduler would: every tick it lists the group once and
// makes at most one Increase or Decrease decision for the difference.
func rampOnce(b *testing.B, throttled bool) b4Result {
	clock := cloudsim.NewVirtualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	env := gcpfake.Start(b, gcpfake.EnvOptions{
		Cloud: cloudsim.Options{Clock: clock, Seed: 7,
			BootDelay: cloudsim.LogNormal{Median: 40 * time.Second, P99: 2 * time.Minute},
			StopDelay: cloudsim.Fixed(20 * time.Second)},
		Group:           group("b4", 1000, 0),
		RetryMaxBackoff: "1ms",
	})
	if throttled {
		// Compute Engine meters reads, writes and operation reads per project. With
		// batch APIs a ramp of 200 needs few calls, so the buckets are scaled down
		// until it runs into them: per 10 s tick 1.5 reads, 0.5 writes and 1
		// operation poll refill, less than a tick with a decision uses.
		env.Cloud.Throttle("compute-read", 0.15, 2)
		env.Cloud.Throttle("compute-write", 0.05, 1)
		env.Cloud.Throttle("compute-operations", 0.1, 1)
	}
	g := New()
	if err := decodeForBench(env, g); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var res b4Result

	// phase runs ticks until the listing shows want running instances and nothing
	// else; it returns the virtual time taken and the number of scaling decisions.
	counted := func(n *int, fn func()) {
		before := env.Cloud.TotalCalls("")
		fn()
		*n += env.Cloud.TotalCalls("") - before
	}
	phase := func(want int) (time.Duration, int) {
		start, events := clock.Now(), 0
		for clock.Now().Sub(start) < b4Limit {
			states := map[string]provider.State{}
			var err error
			res.updates++
			counted(&res.listCalls, func() { err = g.Update(ctx, func(id string, s provider.State) { states[id] = s }) })
			if err != nil {
				clock.Advance(b4Tick) // a failed listing changes nothing: try next tick
				continue
			}
			var running, creating []string
			for id, s := range states {
				switch s {
				case provider.StateRunning:
					running = append(running, id)
				case provider.StateCreating:
					creating = append(creating, id)
				}
			}
			if len(running) == want && len(states) == want {
				return clock.Now().Sub(start), events
			}
			active := len(running) + len(creating)
			switch {
			case active < want:
				events++
				counted(&res.upCalls, func() { _, _ = g.Increase(ctx, want-active) })
			case active > want:
				sort.Strings(running)
				victims := append(creating, running...)[:active-want]
				events++
				counted(&res.downCalls, func() { _, _ = g.Decrease(ctx, victims) })
			}
			clock.Advance(b4Tick)
		}
		b.Fatalf("ramp to %d did not converge within %v of virtual time", want, b4Limit)
		return 0, 0
	}

	res.upTime, res.upEvents = phase(b4Peak)
	throttledCalls := func() {
		for _, n := range env.Cloud.ThrottledCalls() {
			res.throttled += n
		}
	}
	throttledCalls() // ResetCalls below clears the throttle counters too
	env.Cloud.ResetCalls()
	for range 10 { // ten idle minutes at the peak: listings only
		if err := g.Update(ctx, func(string, provider.State) {}); err != nil {
			b.Fatalf("idle Update: %v", err)
		}
		clock.Advance(b4Idle)
	}
	res.idleCalls = env.Cloud.TotalCalls("")
	throttledCalls()
	env.Cloud.ResetCalls()
	res.downTime, res.downEvents = phase(0)
	throttledCalls()
	if err := env.Cloud.Check(); err != nil {
		b.Fatalf("lost or duplicated instances: %v", err)
	}
	for _, vm := range env.Cloud.AllVMs() {
		if vm.TermReason != gcpfake.OpDeleteInstances {
			b.Fatalf("VM %s ended by %q, not by the plugin", vm.ID, vm.TermReason)
		}
	}
	if n := len(env.Cloud.AllVMs()); n != b4Peak {
		b.Fatalf("%d VMs created for a peak of %d", n, b4Peak)
	}
	return res
}

// BenchmarkB4CloudAPI is B4 for Google Cloud: API calls per scaling event and per idle minute,
// and convergence time (virtual) for a 0 → 200 → 0 ramp, with and without throttling.
func BenchmarkB4CloudAPI(b *testing.B) {
	for _, tc := range []struct {
		name      string
		throttled bool
	}{{"unthrottled", false}, {"throttled", true}} {
		b.Run(tc.name, func(b *testing.B) {
			var r b4Result
			for b.Loop() {
				r = rampOnce(b, tc.throttled)
			}
			b.ReportMetric(float64(r.upCalls)/float64(max(r.upEvents, 1)), "calls/scale-up-event")
			b.ReportMetric(float64(r.downCalls)/float64(b4Peak), "calls/instance-removed")
			b.ReportMetric(float64(r.downCalls)/float64(max(r.downEvents, 1)), "calls/scale-down-event")
			b.ReportMetric(float64(r.idleCalls)/10, "calls/idle-min")
			b.ReportMetric(float64(r.listCalls)/float64(max(r.updates, 1)), "calls/update")
			b.ReportMetric(r.upTime.Seconds(), "virtual-s-to-200")
			b.ReportMetric(r.downTime.Seconds(), "virtual-s-to-0")
			b.ReportMetric(float64(r.upEvents+r.downEvents), "scaling-events")
			b.ReportMetric(float64(r.throttled), "throttled-calls")
		})
	}
}

func decodeForBench(env *gcpfake.Env, g *InstanceGroup) error {
	if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
		return err
	}
	_, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: static})
	return err
}
