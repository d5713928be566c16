package cloudtest

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// The B4 ramp (README, Performance): 0 → RampPeak → 0 instances on
// virtual time, decided every RampTick as a scheduler would, with ten idle minutes at
// the peak (one listing per minute, taskscaler's update_interval).
const (
	RampPeak  = 200
	RampTick  = 10 * time.Second
	rampIdle  = time.Minute
	rampLimit = 2 * time.Hour // virtual time after which a phase counts as not converged
)

// RampStart is the virtual time every ramp starts at.
var RampStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Ramp is one cloud's setup for B4: an initialised plugin over a simulated cloud.
type Ramp struct {
	Group provider.InstanceGroup
	Cloud *cloudsim.Cloud
	Clock *cloudsim.VirtualClock
	// TermReason is how the fake records a deletion the plugin asked for; any other
	// reason means something else deleted a VM.
	TermReason string
}

// RampResult is what one ramp measured.
type RampResult struct {
	UpCalls, DownCalls, IdleCalls int // calls made by Increase, by Decrease, while idle
	ListCalls, Updates            int // calls made by Update, and Updates made, while scaling
	UpEvents, DownEvents          int
	UpTime, DownTime              time.Duration
	Throttled                     int
}

// Run drives the ramp through the plugin and checks the cloud's accounting: every VM
// was created once and deleted by the plugin.
func (r Ramp) Run(b *testing.B) RampResult {
	ctx := context.Background()
	var res RampResult
	counted := func(n *int, fn func()) {
		before := r.Cloud.TotalCalls("")
		fn()
		*n += r.Cloud.TotalCalls("") - before
	}
	throttled := func() {
		for _, n := range r.Cloud.ThrottledCalls() {
			res.Throttled += n
		}
	}
	// phase runs ticks until the listing shows want running instances and nothing
	// else; it returns the virtual time taken and the number of scaling decisions.
	phase := func(want int) (time.Duration, int) {
		start, events := r.Clock.Now(), 0
		for r.Clock.Now().Sub(start) < rampLimit {
			states := map[string]provider.State{}
			var err error
			res.Updates++
			counted(&res.ListCalls, func() { err = r.Group.Update(ctx, func(id string, s provider.State) { states[id] = s }) })
			if err != nil {
				r.Clock.Advance(RampTick) // a failed listing changes nothing: try next tick
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
				return r.Clock.Now().Sub(start), events
			}
			active := len(running) + len(creating)
			switch {
			case active < want:
				events++
				counted(&res.UpCalls, func() { _, _ = r.Group.Increase(ctx, want-active) })
			case active > want:
				sort.Strings(running)
				victims := append(creating, running...)[:active-want]
				events++
				counted(&res.DownCalls, func() { _, _ = r.Group.Decrease(ctx, victims) })
			}
			r.Clock.Advance(RampTick)
		}
		b.Fatalf("ramp to %d did not converge within %v of virtual time", want, rampLimit)
		return 0, 0
	}

	res.UpTime, res.UpEvents = phase(RampPeak)
	throttled() // ResetCalls clears the throttle counters too
	r.Cloud.ResetCalls()
	for range 10 {
		if err := r.Group.Update(ctx, func(string, provider.State) {}); err != nil {
			b.Fatalf("idle Update: %v", err)
		}
		r.Clock.Advance(rampIdle)
	}
	res.IdleCalls = r.Cloud.TotalCalls("")
	throttled()
	r.Cloud.ResetCalls()
	res.DownTime, res.DownEvents = phase(0)
	throttled()
	if err := r.Cloud.Check(); err != nil {
		b.Fatalf("lost or duplicated instances: %v", err)
	}
	for _, vm := range r.Cloud.AllVMs() {
		if vm.TermReason != r.TermReason {
			b.Fatalf("VM %s ended by %q, not by the plugin (%s)", vm.ID, vm.TermReason, r.TermReason)
		}
	}
	if n := len(r.Cloud.AllVMs()); n != RampPeak {
		b.Fatalf("%d VMs created for a peak of %d", n, RampPeak)
	}
	return res
}

// Report publishes a ramp's figures as benchmark metrics.
func (res RampResult) Report(b *testing.B) {
	b.ReportMetric(float64(res.UpCalls)/float64(max(res.UpEvents, 1)), "calls/scale-up-event")
	b.ReportMetric(float64(res.DownCalls)/float64(max(res.DownEvents, 1)), "calls/scale-down-event")
	b.ReportMetric(float64(res.DownCalls)/float64(RampPeak), "calls/instance-removed")
	b.ReportMetric(float64(res.IdleCalls)/10, "calls/idle-min")
	b.ReportMetric(float64(res.ListCalls)/float64(max(res.Updates, 1)), "calls/update")
	b.ReportMetric(res.UpTime.Seconds(), "virtual-s-to-200")
	b.ReportMetric(res.DownTime.Seconds(), "virtual-s-to-0")
	b.ReportMetric(float64(res.UpEvents+res.DownEvents), "scaling-events")
	b.ReportMetric(float64(res.Throttled), "throttled-calls")
}

// RampCloud is the simulated cloud every ramp runs on: boots log-normal around 40 s
// (p99 2 min), stops in 20 s, on a virtual clock starting at RampStart.
func RampCloud() (cloudsim.Options, *cloudsim.VirtualClock) {
	clock := cloudsim.NewVirtualClock(RampStart)
	return cloudsim.Options{Clock: clock, Seed: 7,
		BootDelay: cloudsim.LogNormal{Median: 40 * time.Second, P99: 2 * time.Minute},
		StopDelay: cloudsim.Fixed(20 * time.Second)}, clock
}

// Benchmark runs the ramp unthrottled and throttled; setup builds a fresh ramp for
// each run (throttled says whether to set the cloud's API buckets).
func Benchmark(b *testing.B, setup func(b *testing.B, throttled bool) Ramp) {
	for _, throttled := range []bool{false, true} {
		name := "unthrottled"
		if throttled {
			name = "throttled"
		}
		b.Run(name, func(b *testing.B) {
			var res RampResult
			for b.Loop() {
				res = setup(b, throttled).Run(b)
			}
			res.Report(b)
		})
	}
}
