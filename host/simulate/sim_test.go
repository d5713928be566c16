package simulate

import (
	"context"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

func run(t *testing.T, jobs []Job, p Params) *Result {
	t.Helper()
	r, err := Run(context.Background(), jobs, p)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return r
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestRunAccounting(t *testing.T) {
	burst := func(n int, at, d float64) []float64 {
		var out []float64
		for range n {
			out = append(out, at, d)
		}
		return out
	}
	fixed45 := BootTime{Fixed: 45 * time.Second}
	tests := []struct {
		name string
		jobs []Job
		p    Params
		// check asserts what is specific to the case.
		check func(t *testing.T, r *Result)
	}{
		{
			name: "one job, no idle: it waits a boot plus the poll that sees the instance running",
			jobs: js(0, 60),
			p:    Params{Boot: fixed45, Scaler: taskscaler.Options{Policies: []taskscaler.Policy{{}}}},
			check: func(t *testing.T, r *Result) {
				if r.WaitP50S < 45 || r.WaitP50S > 47 {
					t.Errorf("wait %.1fs, want 45–47 s", r.WaitP50S)
				}
				if r.BootingInstanceSeconds != 45 || r.BusyInstanceSeconds != 60 || r.InstancesCreated != 1 {
					t.Errorf("booting %.0f busy %.0f created %d, want 45, 60, 1", r.BootingInstanceSeconds, r.BusyInstanceSeconds, r.InstancesCreated)
				}
				if r.ClairvoyantInstanceSeconds != 105 || r.InstanceSeconds < 105 {
					t.Errorf("floor %.0f, want 105, and at most the cost %.0f", r.ClairvoyantInstanceSeconds, r.InstanceSeconds)
				}
			},
		},
		{
			name: "warm pool: a job arriving after the idle instance booted does not wait",
			jobs: js(600, 30),
			p:    Params{Boot: fixed45, Scaler: taskscaler.Options{Policies: []taskscaler.Policy{{IdleCount: 1, IdleTime: time.Hour}}}},
			check: func(t *testing.T, r *Result) {
				if r.WaitMaxS != 0 {
					t.Errorf("wait %.1fs, want 0", r.WaitMaxS)
				}
				if r.IdleInstanceSeconds < 500 {
					t.Errorf("idle %.0f instance-seconds: the warm instance idled ~555 s before the job", r.IdleInstanceSeconds)
				}
			},
		},
		{
			name: "ephemeral: max_use_count 1 creates one instance per job",
			jobs: js(burst(5, 0, 30)...),
			p:    Params{Boot: fixed45, Scaler: taskscaler.Options{MaxUseCount: 1, Policies: []taskscaler.Policy{{}}}},
			check: func(t *testing.T, r *Result) {
				if r.InstancesCreated != 5 || r.MaxInstancesSeen != 5 {
					t.Errorf("created %d, max %d, want 5 and 5", r.InstancesCreated, r.MaxInstancesSeen)
				}
			},
		},
		{
			name: "capacity 4: a burst of 8 jobs needs 2 instances",
			jobs: js(burst(8, 10, 100)...),
			p:    Params{Boot: fixed45, Scaler: taskscaler.Options{CapacityPerInstance: 4, Policies: []taskscaler.Policy{{}}}},
			check: func(t *testing.T, r *Result) {
				if r.InstancesCreated != 2 {
					t.Errorf("created %d, want 2", r.InstancesCreated)
				}
			},
		},
		{
			name: "max_instances caps the fleet and the rest queue",
			jobs: js(burst(6, 0, 100)...),
			p:    Params{Boot: fixed45, Scaler: taskscaler.Options{MaxInstances: 2, Policies: []taskscaler.Policy{{}}}},
			check: func(t *testing.T, r *Result) {
				if r.MaxInstancesSeen != 2 || r.FailedJobs != 0 {
					t.Errorf("max %d failed %d, want 2 and 0", r.MaxInstancesSeen, r.FailedJobs)
				}
				if r.WaitMaxS < 245 {
					t.Errorf("max wait %.0fs: the last pair waits two job lengths after a boot", r.WaitMaxS)
				}
			},
		},
		{
			name: "preemptive mode: jobs without a reservation wait in GitLab's queue, past instance_acquire_timeout",
			jobs: js(burst(20, 0, 120)...),
			p: Params{Boot: fixed45, Scaler: taskscaler.Options{MaxUseCount: 1, InstanceAcquireTimeout: 2 * time.Minute,
				Policies: []taskscaler.Policy{{IdleCount: 1}}}},
			check: func(t *testing.T, r *Result) {
				if r.FailedJobs != 0 || r.InstancesCreated != 21 {
					t.Errorf("failed %d, created %d: want 0 and one instance per job plus the idle one", r.FailedJobs, r.InstancesCreated)
				}
				// One idle slot at a time: the queue drains one job per boot and poll.
				if r.WaitMaxS < 19*45 {
					t.Errorf("max wait %.0fs: want about 20 boots", r.WaitMaxS)
				}
				// That wait is spent in GitLab's queue, without a reservation.
				if r.QueuedJobs != 20 || r.QueueWaitMaxS < 19*45 || r.QueueWaitMaxS > r.WaitMaxS {
					t.Errorf("queued %d, queue wait max %.0fs (wait max %.0fs): want all 20 queued in GitLab for about 20 boots", r.QueuedJobs, r.QueueWaitMaxS, r.WaitMaxS)
				}
			},
		},
		{
			name: "capacity errors: every instance refused, jobs fail after instance_acquire_timeout",
			jobs: js(0, 10, 30, 10),
			p: Params{Boot: fixed45, CapacityErrorRate: 0.999999, Seed: 3,
				Scaler: taskscaler.Options{InstanceAcquireTimeout: 5 * time.Minute, Policies: []taskscaler.Policy{{}}}},
			check: func(t *testing.T, r *Result) {
				if r.FailedJobs != 2 || r.CapacityRefused == 0 || r.InstanceSeconds != 0 {
					t.Errorf("failed %d refused %d instance-seconds %.0f, want 2, > 0, 0", r.FailedJobs, r.CapacityRefused, r.InstanceSeconds)
				}
			},
		},
		{
			name: "log-normal boot, generated trace",
			jobs: mustGenerate(t, GenerateOptions{Seed: 5, Jobs: 400}),
			p: Params{Boot: BootTime{Median: time.Minute, P99: 3 * time.Minute}, Seed: 9,
				Scaler: taskscaler.Options{MaxUseCount: 10, Policies: []taskscaler.Policy{{IdleCount: 2, IdleTime: 10 * time.Minute}}}},
			check: func(t *testing.T, r *Result) {
				if r.WaitP99S < r.WaitP95S || r.WaitP95S < r.WaitP50S {
					t.Errorf("percentiles out of order: %.1f %.1f %.1f", r.WaitP50S, r.WaitP95S, r.WaitP99S)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, tt.jobs, tt.p)
			if !near(r.InstanceSeconds, r.IdleInstanceSeconds+r.BusyInstanceSeconds+r.BootingInstanceSeconds) {
				t.Errorf("instance-seconds %.3f != idle %.3f + busy %.3f + booting %.3f", r.InstanceSeconds, r.IdleInstanceSeconds, r.BusyInstanceSeconds, r.BootingInstanceSeconds)
			}
			if r.IdleInstanceSeconds < 0 || r.BootingInstanceSeconds < 0 {
				t.Errorf("negative idle %.3f or booting %.3f", r.IdleInstanceSeconds, r.BootingInstanceSeconds)
			}
			var work float64
			for _, j := range tt.jobs {
				work += j.Duration.Seconds()
			}
			capa := float64(max(tt.p.Scaler.CapacityPerInstance, 1))
			if r.FailedJobs == 0 && (r.BusyInstanceSeconds > work+1e-6 || r.BusyInstanceSeconds < work/capa-1e-6) {
				t.Errorf("busy %.1f instance-seconds for %.1f job-seconds on %g slots", r.BusyInstanceSeconds, work, capa)
			}
			// The series adds up to the totals.
			var sb, si, sbo float64
			for i := range r.Series.Busy {
				sb += r.Series.Busy[i] * r.Series.Step.Seconds()
				si += r.Series.Idle[i] * r.Series.Step.Seconds()
				sbo += r.Series.Booting[i] * r.Series.Step.Seconds()
			}
			if math.Abs(sb-r.BusyInstanceSeconds) > 1e-3 || math.Abs(si-r.IdleInstanceSeconds) > 1e-3 || math.Abs(sbo-r.BootingInstanceSeconds) > 1e-3 {
				t.Errorf("series sums busy %.1f idle %.1f booting %.1f, totals %.1f %.1f %.1f", sb, si, sbo, r.BusyInstanceSeconds, r.IdleInstanceSeconds, r.BootingInstanceSeconds)
			}
			tt.check(t, r)
		})
	}
}

func mustGenerate(t *testing.T, o GenerateOptions) []Job {
	t.Helper()
	jobs, err := Generate(o)
	if err != nil {
		t.Fatal(err)
	}
	return jobs
}

// TestRunDeterministic: the same trace, policy and seed give the same result.
func TestRunDeterministic(t *testing.T) {
	jobs := mustGenerate(t, GenerateOptions{Seed: 11, Jobs: 1500})
	p := Params{Boot: BootTime{Median: time.Minute, P99: 3 * time.Minute}, Seed: 4, CapacityErrorRate: 0.05,
		Scaler: taskscaler.Options{CapacityPerInstance: 2, MaxUseCount: 10, MaxInstances: 80,
			Policies: []taskscaler.Policy{{IdleCount: 4, IdleTime: 5 * time.Minute, ScaleFactor: 0.1}}}}
	a, b := run(t, jobs, p), run(t, jobs, p)
	a.Series, b.Series = nil, nil
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("two runs differ:\n%+v\n%+v", a, b)
	}
	p.Seed = 5
	if c := run(t, jobs, p); c.InstanceSeconds == a.InstanceSeconds && c.WaitP95S == a.WaitP95S {
		t.Fatal("another cloud seed gave exactly the same run")
	}
}

func TestRunRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	good := Params{Boot: BootTime{Fixed: time.Second}}
	if _, err := Run(ctx, nil, good); err == nil {
		t.Error("no jobs: want an error")
	}
	if _, err := Run(ctx, js(5, 1, 0, 1), good); err == nil {
		t.Error("unsorted jobs: want an error")
	}
	if _, err := Run(ctx, js(0, 1), Params{Boot: BootTime{Median: time.Second}}); err == nil {
		t.Error("median without p99: want an error")
	}
	if _, err := Run(ctx, js(0, 1), Params{Boot: BootTime{Fixed: time.Second}, CapacityErrorRate: 1}); err == nil {
		t.Error("capacity error rate 1: want an error")
	}
}

// TestRunTenThousandJobs replays a full synthetic day (the B1 workload) once, so that
// the whole event loop is exercised at scale; its speed is B1's business.
func TestRunTenThousandJobs(t *testing.T) {
	if testing.Short() {
		t.Skip("replays 10,000 jobs")
	}
	jobs := mustGenerate(t, GenerateOptions{Seed: 1, Jobs: 10000})
	r := run(t, jobs, Params{Boot: BootTime{Fixed: 45 * time.Second}, Scaler: taskscaler.Options{MaxUseCount: 10, Policies: []taskscaler.Policy{{}}}})
	if r.Jobs != 10000 || r.FailedJobs != 0 {
		t.Fatalf("jobs %d failed %d", r.Jobs, r.FailedJobs)
	}
	// No idle pool: nobody waits much longer than a boot and a poll.
	if r.WaitP99S > 45+2+1 || r.ExcessOverFloor < 0 || r.ExcessOverFloor > 0.1 {
		t.Fatalf("wait p99 %.1fs, excess over the floor %.3f: want at most B + one poll, and within 10 %% of C*", r.WaitP99S, r.ExcessOverFloor)
	}
}

// TestQueueWait: in preemptive mode with idle_count = 1 on ephemeral instances, the
// runner asks GitLab for one job per boot, so jobs queue there for hours, and the
// report says why and what to change. Not preemptive, or with max_instances as the
// limit, the report says so instead.
func TestQueueWait(t *testing.T) {
	jobs := mustGenerate(t, GenerateOptions{Seed: 4, Jobs: 1000, MaxFanout: 8})
	boot := time.Minute
	params := func(pol taskscaler.Policy, maxInstances int) Params {
		return Params{Boot: BootTime{Fixed: boot}, Scaler: taskscaler.Options{MaxUseCount: 1, MaxInstances: maxInstances,
			Policies: []taskscaler.Policy{pol}}}
	}
	tests := []struct {
		name string
		p    Params
		// queued says whether jobs must wait in GitLab's queue for longer than a boot.
		queued bool
		// want and not are fragments the warning must and must not contain.
		want, not []string
	}{
		{"preemptive, idle_count 1", params(taskscaler.Policy{IdleCount: 1, IdleTime: 20 * time.Minute}, 0), true,
			[]string{"waited in GitLab's queue", "Preemptive mode caps throughput", "policy[0] idle_count = 1: 1 per 1m0s boot, 60 jobs/h",
				"busiest hour", "within one boot", `preemptive_mode = false, raise idle_count, or use mode = "forecast"`}, []string{"max_instances"}},
		{"not preemptive", params(taskscaler.Policy{IdleCount: 1, IdleTime: 20 * time.Minute, PreemptiveMode: boolPtr(false)}, 0), false, nil, nil},
		{"not preemptive, max_instances 3", params(taskscaler.Policy{PreemptiveMode: boolPtr(false)}, 3), true,
			[]string{"waited in GitLab's queue", "All max_instances = 3 instances were in use"}, []string{"Preemptive"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, jobs, tt.p)
			var text strings.Builder
			if err := WriteText(&text, r); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(text.String(), "queued in GitLab") {
				t.Errorf("the report lacks the GitLab queue line:\n%s", text.String())
			}
			if !tt.queued {
				if r.QueuedJobs != 0 || r.QueueWaitP95S != 0 || len(r.Warnings) != 0 {
					t.Errorf("queued %d, queue wait p95 %.1fs, warnings %q: want none", r.QueuedJobs, r.QueueWaitP95S, r.Warnings)
				}
				return
			}
			if r.QueueWaitP95S < boot.Seconds() || r.QueuedJobs == 0 || r.QueueWaitP95S > r.WaitP95S {
				t.Errorf("queued %d, queue wait p95 %.1fs (wait p95 %.1fs): want jobs queued longer than a boot, within their wait", r.QueuedJobs, r.QueueWaitP95S, r.WaitP95S)
			}
			if len(r.Warnings) != 1 {
				t.Fatalf("warnings %q: want one", r.Warnings)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.Warnings[0], w) {
					t.Errorf("the warning lacks %q:\n%s", w, r.Warnings[0])
				}
			}
			for _, w := range tt.not {
				if strings.Contains(r.Warnings[0], w) {
					t.Errorf("the warning mentions %q:\n%s", w, r.Warnings[0])
				}
			}
			if !strings.Contains(text.String(), r.Warnings[0]) {
				t.Errorf("the report lacks the warning:\n%s", text.String())
			}
		})
	}
	// The case: the median job waits hours in GitLab's queue.
	r := run(t, jobs, tests[0].p)
	t.Logf("preemptive idle_count 1: queue wait p50 %.0fs p95 %.0fs, %d of %d jobs queued", r.QueueWaitP50S, r.QueueWaitP95S, r.QueuedJobs, r.Jobs)
	if r.QueueWaitP50S < 3600 || r.QueuedJobs < r.Jobs/2 {
		t.Errorf("preemptive idle_count 1: queue wait p50 %.0fs, %d of %d jobs queued: want the median job queued for an hour or more", r.QueueWaitP50S, r.QueuedJobs, r.Jobs)
	}
}

func TestCapWarnings(t *testing.T) {
	// 120 jobs in the first hour, one every 30 s.
	var pairs []float64
	for i := range 120 {
		pairs = append(pairs, float64(30*i), 60)
	}
	jobs := js(pairs...)
	params := func(maxUse int, pols ...taskscaler.Policy) Params {
		return Params{Boot: BootTime{Fixed: time.Minute}, Scaler: taskscaler.Options{MaxUseCount: maxUse, Policies: pols}}
	}
	tests := []struct {
		name string
		p    Params
		want []string // one fragment per warning
	}{
		{"ephemeral, idle_count 1: 60 jobs/h below 120", params(1, taskscaler.Policy{IdleCount: 1}),
			[]string{"policy[0]: preemptive mode with idle_count = 1 and max_use_count = 1 starts at most 1 job per 1m0s boot (60 jobs/h), below the trace's busiest hour of 120 jobs"}},
		{"ephemeral, idle_count 2: 120 jobs/h is not below 120", params(1, taskscaler.Policy{IdleCount: 2}), nil},
		{"reused, idle_count 1: 60 jobs/h is not far below 120", params(0, taskscaler.Policy{IdleCount: 1}), nil},
		{"reused, second policy idle_count 1 of a faster trace", params(10, taskscaler.Policy{}, taskscaler.Policy{IdleCount: 1}), nil},
		{"not preemptive", params(1, taskscaler.Policy{IdleCount: 1, PreemptiveMode: boolPtr(false)}), nil},
		{"forecast", params(1, taskscaler.Policy{Mode: taskscaler.ModeForecast, IdleCount: 1}), nil},
		{"preemptive_mode = true, idle_count 0", params(0, taskscaler.Policy{}, taskscaler.Policy{PreemptiveMode: boolPtr(true)}),
			[]string{"policy[1]: preemptive_mode = true with idle_count = 0", "no job starts while it is active"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CapWarnings(jobs, tt.p)
			if len(tt.want) == 0 {
				if len(got) != 0 {
					t.Errorf("warnings %q: want none", got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("warnings %q: want one", got)
			}
			for _, w := range tt.want {
				if !strings.Contains(got[0], w) {
					t.Errorf("the warning lacks %q:\n%s", w, got[0])
				}
			}
		})
	}
	// Reused instances: the cap warns far below the busiest hour.
	fast := make([]float64, 0, 2*400)
	for i := range 400 {
		fast = append(fast, float64(9*i), 60)
	}
	got := CapWarnings(js(fast...), params(10, taskscaler.Policy{}, taskscaler.Policy{IdleCount: 1}))
	if len(got) != 1 || !strings.Contains(got[0], "policy[1]: preemptive mode with idle_count = 1 starts at most 1 job on new capacity per 1m0s boot (60 jobs/h), far below the trace's busiest hour of 400 jobs") {
		t.Errorf("warnings %q: want one about policy[1] far below 400 jobs", got)
	}
}

func TestPeakJobsWithin(t *testing.T) {
	jobs := js(0, 1, 10, 1, 3599, 1, 3600, 1, 3600.5, 1, 7300, 1)
	for _, tt := range []struct {
		d    time.Duration
		want int
	}{{time.Hour, 4}, {time.Second, 2}, {time.Millisecond, 1}, {3 * time.Hour, 6}} {
		if got := PeakJobsWithin(jobs, tt.d); got != tt.want {
			t.Errorf("PeakJobsWithin(%s) = %d, want %d", tt.d, got, tt.want)
		}
	}
	if PeakHourlyJobs(jobs) != 4 {
		t.Errorf("PeakHourlyJobs = %d, want 4", PeakHourlyJobs(jobs))
	}
}
