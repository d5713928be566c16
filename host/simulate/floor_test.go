package simulate

import (
	"math/rand/v2"
	"testing"
	"time"
)

func js(pairs ...float64) []Job {
	var out []Job
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, Job{Arrival: seconds(pairs[i]), Duration: seconds(pairs[i+1])})
	}
	return out
}

func TestClairvoyantFloorKnownOptima(t *testing.T) {
	const B = 10 * time.Second
	tests := []struct {
		name         string
		jobs         []Job
		capa, maxUse int
		want         time.Duration
	}{
		// One job: boot + run.
		{"single", js(0, 5), 1, 0, 15 * time.Second},
		// Back to back: the second reuses the first's instance for free.
		{"back to back", js(0, 5, 5, 5), 1, 0, 20 * time.Second},
		// Gap 4 < B: keep the instance 4 s rather than boot for 10.
		{"short gap", js(0, 5, 9, 5), 1, 0, 24 * time.Second},
		// Gap 30 > B: boot anew (cost B) rather than keep it 30 s.
		{"long gap", js(0, 5, 35, 5), 1, 0, 30 * time.Second},
		// Overlapping jobs need two chains.
		{"overlap", js(0, 10, 5, 10), 1, 0, 40 * time.Second},
		// Ends at 5 and 8, starts at 9 and 30: the newest end (8) serves 9 (gap 1),
		// 30 boots: 5+8+1+? — d = 5+8+1+1, links = B + B + 1 + B.
		{"lifo beats fifo", js(0, 5, 0, 8, 9, 1, 30, 1), 1, 0, (5+8+1+1)*time.Second + 3*B + time.Second},
		// max_use_count 1: every job boots.
		{"ephemeral", js(0, 5, 5, 5), 1, 1, 30 * time.Second},
		// Two slots per instance: the one-slot floor halved.
		{"two slots", js(0, 10, 5, 10), 2, 0, 20 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ClairvoyantFloor(tt.jobs, B, tt.capa, tt.maxUse); got != tt.want {
				t.Fatalf("ClairvoyantFloor = %s, want %s", got, tt.want)
			}
			if tt.capa == 1 && tt.maxUse != 1 {
				if got := ClairvoyantFloorFlow(tt.jobs, B, len(tt.jobs)); got != tt.want {
					t.Fatalf("ClairvoyantFloorFlow = %s, want %s", got, tt.want)
				}
			}
		})
	}
}

// TestClairvoyantFloorMatchesMinCostFlow checks the stack algorithm against the
// min-cost flow on random small traces, dense and sparse.
func TestClairvoyantFloorMatchesMinCostFlow(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 1))
	for trial := range 300 {
		n := 1 + rng.IntN(14)
		span := []float64{20, 100, 1000}[trial%3]
		var jobs []Job
		for range n {
			jobs = append(jobs, Job{Arrival: seconds(float64(rng.IntN(int(span)))), Duration: seconds(float64(1 + rng.IntN(30)))})
		}
		sortJobs(jobs)
		B := time.Duration(1+rng.IntN(40)) * time.Second
		fast := ClairvoyantFloor(jobs, B, 1, 0)
		flow := ClairvoyantFloorFlow(jobs, B, n)
		if fast != flow {
			t.Fatalf("trial %d, B %s, jobs %v: stack %s, min-cost flow %s", trial, B, jobs, fast, flow)
		}
		if lo := ClairvoyantFloor(jobs, B, 1, 1); fast > lo {
			t.Fatalf("reuse floor %s above the ephemeral floor %s", fast, lo)
		}
	}
}

func sortJobs(jobs []Job) {
	for i := 1; i < len(jobs); i++ {
		for k := i; k > 0 && jobs[k].Arrival < jobs[k-1].Arrival; k-- {
			jobs[k], jobs[k-1] = jobs[k-1], jobs[k]
		}
	}
}

func TestBootTime(t *testing.T) {
	ln := BootTime{Median: time.Minute, P99: 3 * time.Minute}
	if got := ln.Quantile(0.5); got < 59*time.Second || got > 61*time.Second {
		t.Errorf("median %s, want 1m", got)
	}
	if got := ln.Quantile(0.99); got < 179*time.Second || got > 181*time.Second {
		t.Errorf("p99 %s, want 3m", got)
	}
	if m := ln.Mean(); m <= time.Minute || m >= 3*time.Minute {
		t.Errorf("mean %s: want between median and p99", m)
	}
	fixed := BootTime{Fixed: 45 * time.Second}
	if fixed.Quantile(0.95) != 45*time.Second || fixed.Mean() != 45*time.Second {
		t.Error("a fixed boot time has every quantile equal to it")
	}
	for _, bad := range []BootTime{{Fixed: time.Second, Median: time.Second, P99: time.Second}, {Median: time.Second}, {Median: time.Minute, P99: time.Second}, {Fixed: -1}} {
		if bad.Validate() == nil {
			t.Errorf("%+v: want a validation error", bad)
		}
	}
}
