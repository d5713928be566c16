package azure

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/azurefake"
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
	env := azurefake.Start(b, azurefake.EnvOptions{
		Cloud: cloudsim.Options{Clock: clock, Seed: 7,
			BootDelay: cloudsim.LogNormal{Median: 40 * time.Second, P99: 2 * time.Minute},
			StopDelay: cloudsim.Fixed(20 * time.Second)},
		Group:         cloudsim.Group{Name: "b4", Max: 1000},
		ScaleSet:      azurefake.ScaleSetOptions{SinglePlacementGroup: new(bool)}, // 200 VMs need more than one placement group
		RetryMaxDelay: "1ms",
	})
	if throttled {
		// ARM's per-subscription buckets (reads and writes counted apart), made tight
		// enough that the plugin's few calls run into them: writes one per 20 s (burst
		// 1), reads 0.3/s (burst 4), so each scaling decision competes with listings.
		env.Cloud.Throttle("arm-write", 0.05, 1)
		env.Cloud.Throttle("arm-read", 0.3, 4)
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
	env.Cloud.ResetCalls()
	for range 10 { // ten idle minutes at the peak: listings only
		if err := g.Update(ctx, func(string, provider.State) {}); err != nil {
			b.Fatalf("idle Update: %v", err)
		}
		clock.Advance(b4Idle)
	}
	res.idleCalls = env.Cloud.TotalCalls("")
	res.downTime, res.downEvents = phase(0)
	for _, n := range env.Cloud.ThrottledCalls() {
		res.throttled += n
	}
	if err := env.Cloud.Check(); err != nil {
		b.Fatalf("lost or duplicated instances: %v", err)
	}
	for _, vm := range env.Cloud.AllVMs() {
		if vm.TermReason != "VirtualMachineScaleSets.DeleteInstances" {
			b.Fatalf("VM %s ended by %q, not by the plugin", vm.ID, vm.TermReason)
		}
	}
	if n := len(env.Cloud.AllVMs()); n != b4Peak {
		b.Fatalf("%d VMs created for a peak of %d", n, b4Peak)
	}
	return res
}

// BenchmarkB4CloudAPI is B4 for Azure: API calls per scaling event and per idle minute,
// and convergence time (virtual) for a 0 → 200 → 0 ramp, with and without throttling.
// A listing of 200 VMs is two pages (the fake's page size is 100), so calls/update is 2
// at the peak; operation polls count as calls too.
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
			b.ReportMetric(float64(r.idleCalls)/10, "calls/idle-min")
			b.ReportMetric(float64(r.listCalls)/float64(max(r.updates, 1)), "calls/update")
			b.ReportMetric(r.upTime.Seconds(), "virtual-s-to-200")
			b.ReportMetric(r.downTime.Seconds(), "virtual-s-to-0")
			b.ReportMetric(float64(r.upEvents+r.downEvents), "scaling-events")
			b.ReportMetric(float64(r.throttled), "throttled-calls")
		})
	}
}

func decodeForBench(env *azurefake.Env, g *InstanceGroup) error {
	if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
		return err
	}
	g.RetryMaxRetries = 2 // give up fast in a storm: the ramp's next tick retries
	_, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: static})
	return err
}
