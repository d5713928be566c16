package simulate

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// ciDay is the CI-shaped day: pipelines fanning out 1–8 jobs at once,
// log-normal durations around 3 minutes, a day/night rate curve.
func ciDay(t testing.TB, seed uint64, jobs, days int) []Job {
	t.Helper()
	out, err := Generate(GenerateOptions{Seed: seed, Jobs: jobs, Days: days, MaxFanout: 8})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runPolicy replays jobs with ephemeral or long-lived instances under one policy.
func runPolicy(t testing.TB, jobs []Job, boot BootTime, capa, maxUse, maxInstances int, pol taskscaler.Policy) *Result {
	t.Helper()
	p := Params{Boot: boot, Seed: 1, Scaler: taskscaler.Options{CapacityPerInstance: capa, MaxUseCount: maxUse,
		MaxInstances: maxInstances, Policies: []taskscaler.Policy{pol}}}
	r, err := Run(context.Background(), jobs, p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var forecastPolicy = taskscaler.Policy{Mode: taskscaler.ModeForecast, IdleTime: time.Minute}

// The forecast policy keeps the p95 wait within its 5 s target, and costs no more than
// the cheapest fixed idle_count that waits as little, on seeded CI-shaped traces
// (boot 60 s; ephemeral instances, and long-lived ones with 4 slots). Deterministic:
// the simulator runs on a virtual clock.
func TestForecastPolicyAgainstFixedIdlePools(t *testing.T) {
	if testing.Short() {
		t.Skip("replays several days of jobs")
	}
	boot := BootTime{Fixed: time.Minute}
	for _, tr := range []struct {
		name         string
		jobs         []Job
		capa, maxUse int
		boot         BootTime // zero: the fixed 60 s boot
		fixed        []int
		maxCostRel   float64 // an absolute goal on top, where one holds
	}{
		{"seed 1, one day", ciDay(t, 1, 1712, 1), 1, 1, BootTime{}, []int{10, 12, 14, 16, 18}, 0},
		{"seed 2, one day", ciDay(t, 2, 1712, 1), 1, 1, BootTime{}, []int{10, 12, 14, 16, 18}, 0},
		{"seed 3, three days", ciDay(t, 3, 5136, 3), 1, 1, BootTime{}, []int{12, 14, 16}, 0},
		{"10,000 jobs a day", ciDay(t, 1, 10000, 1), 1, 1, BootTime{}, []int{30, 35}, 1.6},
		{"log-normal boot (median 60 s, p99 180 s)", ciDay(t, 1, 1712, 1), 1, 1, BootTime{Median: time.Minute, P99: 3 * time.Minute}, []int{10, 12, 14, 16}, 0},
		{"long-lived, seed 1", ciDay(t, 1, 1712, 1), 4, 0, BootTime{}, []int{1, 2, 3, 4, 5, 6}, 0},
		{"long-lived, seed 2", ciDay(t, 2, 1712, 1), 4, 0, BootTime{}, []int{1, 2, 3, 4, 5, 6}, 0},
		{"long-lived, seed 3", ciDay(t, 3, 1712, 1), 4, 0, BootTime{}, []int{1, 2, 3, 4, 5, 6}, 0},
		{"long-lived, three days", ciDay(t, 1, 5136, 3), 4, 0, BootTime{}, []int{1, 2, 3, 4, 5}, 0},
	} {
		t.Run(tr.name, func(t *testing.T) {
			boot := boot
			if tr.boot != (BootTime{}) {
				boot = tr.boot
			}
			fc := runPolicy(t, tr.jobs, boot, tr.capa, tr.maxUse, 400, forecastPolicy)
			cost := 1 + fc.ExcessOverFloor
			if fc.WaitP95S > 5 {
				t.Errorf("forecast: wait p95 %.1f s, want ≤ 5 s", fc.WaitP95S)
			}
			if tr.maxCostRel > 0 && cost > tr.maxCostRel {
				t.Errorf("forecast: cost %.2f × the floor, want ≤ %.1f", cost, tr.maxCostRel)
			}
			for _, n := range tr.fixed {
				r := runPolicy(t, tr.jobs, boot, tr.capa, tr.maxUse, 400, taskscaler.Policy{IdleCount: n, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)})
				t.Logf("idle_count %d: p95 %.1f s, cost %.2f; forecast: p95 %.1f s, cost %.2f", n, r.WaitP95S, 1+r.ExcessOverFloor, fc.WaitP95S, cost)
				if r.WaitP95S <= max(fc.WaitP95S, 5) && 1+r.ExcessOverFloor < cost {
					t.Errorf("idle_count %d waits as little (p95 %.1f s) for less: %.2f × the floor against the forecast's %.2f",
						n, r.WaitP95S, 1+r.ExcessOverFloor, cost)
				}
			}
		})
	}
}

// max_instances is a limit the forecast never crosses, however high the forecast.
func TestForecastPolicyKeepsMaxInstances(t *testing.T) {
	jobs := ciDay(t, 4, 600, 1)
	for _, limit := range []int{3, 8} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			r := runPolicy(t, jobs, BootTime{Fixed: time.Minute}, 1, 1, limit, forecastPolicy)
			if r.MaxInstancesSeen > limit {
				t.Fatalf("%d instances at once, max_instances %d", r.MaxInstancesSeen, limit)
			}
			if r.MaxInstancesSeen < limit {
				t.Fatalf("only %d instances at once: a day of bursts should reach max_instances %d", r.MaxInstancesSeen, limit)
			}
		})
	}
}
