package webui

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
)

// source is a StatusSource whose status the test sets.
type source struct {
	mu sync.Mutex
	st taskscaler.Status
}

func (s *source) Status() taskscaler.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st
}

func (s *source) set(f func(*taskscaler.Status)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

// TestRecorderJobs follows jobs from their request to their end: waits and run times,
// unfinished jobs kept whatever the bound, finished ones newest first and bounded.
func TestRecorderJobs(t *testing.T) {
	r := NewRecorder(&source{}, RecorderOptions{Jobs: 2})
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	r.JobReceived(1, "a", at(0))
	r.JobOnSlot(1, "i-1", at(3))
	r.JobReceived(2, "b", at(1))
	r.JobFinished(1, JobPassed, "", at(10))
	r.JobReceived(3, "c", at(11)) // never gets a slot
	r.JobFinished(3, JobFailed, "runner_system_failure", at(15))
	r.JobReceived(4, "d", at(16))
	r.JobFinished(4, JobFailed, "job_canceled", at(17))
	r.JobOnSlot(99, "i-1", at(17)) // not received here: ignored
	r.JobFinished(98, JobPassed, "", at(17))

	jobs, _, _ := r.Past()
	now := at(20)
	tests := []struct {
		id         int64
		state      string
		wait, run  time.Duration
		instance   string
		failReason string
	}{
		{2, JobWaiting, 19 * time.Second, 0, "", ""}, // unfinished first
		{4, JobFailed, time.Second, 0, "", "job_canceled"},
		{3, JobFailed, 4 * time.Second, 0, "", "runner_system_failure"},
		// job 1 fell off: only 2 finished jobs are kept
	}
	if len(jobs) != len(tests) {
		t.Fatalf("jobs %+v, want %d", jobs, len(tests))
	}
	for i, tt := range tests {
		j := jobs[i]
		if j.ID != tt.id || j.State != tt.state || j.Wait(now) != tt.wait || j.RunTime(now) != tt.run || j.Instance != tt.instance || j.FailureReason != tt.failReason {
			t.Errorf("job %d = %+v (wait %s, run %s), want %+v", i, j, j.Wait(now), j.RunTime(now), tt)
		}
	}
	r.JobOnSlot(2, "i-2", at(21))
	jobs, _, _ = r.Past()
	if j := jobs[0]; j.State != JobRunning || j.Wait(at(30)) != 20*time.Second || j.RunTime(at(30)) != 9*time.Second || j.Instance != "i-2" {
		t.Errorf("job 2 on its slot: %+v", j)
	}
}

// TestRecorderDecisions keeps a run of decisions with the same outcome once, and a
// decision seen twice once.
func TestRecorderDecisions(t *testing.T) {
	src := &source{}
	r := NewRecorder(src, RecorderOptions{Decisions: 3})
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	decide := func(s int, reason string, wanted, requested int) {
		src.set(func(st *taskscaler.Status) {
			st.LastDecision = taskscaler.Decision{Time: at(s), Trigger: "update", Reason: reason, Wanted: wanted, Requested: requested}
			if requested < wanted { // as the taskscaler, keeps the last shortfall
				d := st.LastDecision
				st.LastShortfall = &d
			}
		})
	}
	r.Observe(at(0)) // no decision yet
	decide(1, "no demand and no idle target", 0, 0)
	r.Observe(at(1))
	r.Observe(at(1)) // the same decision, seen again
	decide(2, "no demand and no idle target", 0, 0)
	r.Observe(at(2))
	decide(3, "requesting 1 of 2 wanted: max_instances 1 reached", 2, 1)
	r.Observe(at(3))
	decide(4, "enough capacity", 0, 0)
	r.Observe(at(4))
	decide(5, "no demand and no idle target", 0, 0)
	r.Observe(at(5))
	// A shortfall replaced by another decision before the next look is still seen:
	// the status keeps the last shortfall.
	decide(6, "requesting 0 of 1 wanted: circuit breaker open", 1, 0)
	decide(7, "enough capacity", 0, 0)
	r.Observe(at(7))

	_, ds, _ := r.Past()
	want := []struct {
		first, last int
		count       int
		reason      string
		shortfall   bool
	}{
		// the first ones fell off (3 kept)
		{5, 5, 1, "no demand and no idle target", false},
		{6, 6, 1, "requesting 0 of 1 wanted: circuit breaker open", true},
		{7, 7, 1, "enough capacity", false},
	}
	if len(ds) != len(want) {
		t.Fatalf("decisions %+v, want %d", ds, len(want))
	}
	for i, w := range want {
		d := ds[i]
		if !d.Time.Equal(at(w.first)) || !d.Last.Equal(at(w.last)) || d.Count != w.count || d.Reason != w.reason || d.Shortfall != w.shortfall {
			t.Errorf("decision %d = %+v, want %+v", i, d, w)
		}
	}

	src.set(func(st *taskscaler.Status) { *st = taskscaler.Status{} })
	r2 := NewRecorder(src, RecorderOptions{})
	for s := 10; s < 13; s++ {
		decide(s, "no demand and no idle target", 0, 0)
		r2.Observe(at(s))
	}
	if _, ds, _ := r2.Past(); len(ds) != 1 || ds[0].Count != 3 || !ds[0].Time.Equal(at(10)) || !ds[0].Last.Equal(at(12)) {
		t.Errorf("a run of the same outcome: %+v, want one decision seen 3 times from 10s to 12s", ds)
	}
}

// TestPercentile is the nearest-rank percentile.
func TestPercentile(t *testing.T) {
	s := func(n ...int) []time.Duration {
		var out []time.Duration
		for _, x := range n {
			out = append(out, time.Duration(x)*time.Second)
		}
		return out
	}
	tests := []struct {
		ws       []time.Duration
		p50, p95 time.Duration
	}{
		{s(7), 7 * time.Second, 7 * time.Second},
		{s(1, 2), time.Second, 2 * time.Second},
		{s(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 5 * time.Second, 10 * time.Second},
		{s(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60), 0, 0},
		{s(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30, 60), 0, 30 * time.Second},
	}
	for _, tt := range tests {
		if p50, p95 := percentile(tt.ws, 50), percentile(tt.ws, 95); p50 != tt.p50 || p95 != tt.p95 {
			t.Errorf("%v: p50 %s p95 %s, want %s %s", tt.ws, p50, p95, tt.p50, tt.p95)
		}
	}
}

// TestPollSamples runs the sampler on a fake clock: a history sample every 15s of
// polls each second, bounded to the span, with the instance and job counts and the
// waits of the window; decisions caught at each poll.
func TestPollSamples(t *testing.T) {
	clk := clock.NewFake(t0)
	src := &source{}
	r := NewRecorder(src, RecorderOptions{Every: 15 * time.Second, Span: time.Minute, WaitWindow: 30 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Poll(ctx, clk, time.Second, func() []*Recorder { return []*Recorder{r} })
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	// advance moves the clock by n polls, each one observed before the next.
	advance := func(n int) {
		for range n {
			clk.BlockUntil(1)
			clk.Advance(time.Second)
		}
		clk.BlockUntil(1)
	}
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }

	advance(0) // first poll at t0
	src.set(func(st *taskscaler.Status) {
		st.Instances = taskscaler.InstanceCounts{Booting: 1}
		st.Tasks = taskscaler.TaskCounts{Pending: 1}
		st.LastDecision = taskscaler.Decision{Time: at(1), Trigger: "reserve", Wanted: 1, Requested: 1, Reason: "requesting 1 instances"}
	})
	r.JobReceived(1, "a", at(0))
	advance(2) // the decision is caught within a poll
	r.JobOnSlot(1, "i", at(12))
	r.JobReceived(2, "b", at(13)) // still waiting at the next sample: 2s so far
	src.set(func(st *taskscaler.Status) {
		st.Instances = taskscaler.InstanceCounts{Running: 1}
		st.Tasks = taskscaler.TaskCounts{Acquired: 1, Pending: 1}
	})
	advance(13) // t0+15s: the second sample
	_, ds, hist := r.Past()
	if len(ds) != 1 || ds[0].Reason != "requesting 1 instances" {
		t.Errorf("decisions %+v, want the one made", ds)
	}
	if len(hist) != 2 {
		t.Fatalf("%d samples at t0+15s, want 2: %+v", len(hist), hist)
	}
	s0, s1 := hist[0], hist[1]
	if !s0.Time.Equal(t0) || s0.Instances.Booting != 0 || s0.Waits != 0 {
		t.Errorf("sample 0 = %+v, want the empty state at t0", s0)
	}
	if !s1.Time.Equal(at(15)) || s1.Instances.Running != 1 || s1.Tasks.Acquired != 1 || s1.Tasks.Pending != 1 ||
		s1.Waits != 2 || s1.WaitP50 != 2*time.Second || s1.WaitP95 != 12*time.Second {
		t.Errorf("sample 1 = %+v, want 1 running instance, 1+1 jobs, waits 12s and 2s so far", s1)
	}

	r.JobOnSlot(2, "i", at(16))
	advance(30) // t0+45s: job 1's wait (at 12s) left the 30s window, job 2's (16s) not
	_, _, hist = r.Past()
	if last := hist[len(hist)-1]; !last.Time.Equal(at(45)) || last.Waits != 1 || last.WaitP95 != 3*time.Second {
		t.Errorf("sample at 45s = %+v, want one wait of 3s in the window", last)
	}
	advance(60) // t0+105s: a minute of samples is 4 of them
	_, _, hist = r.Past()
	if len(hist) != 4 || !hist[3].Time.Equal(at(105)) || !hist[0].Time.Equal(at(60)) {
		t.Errorf("samples after 105s: %d from %s to %s, want 4 from 60s to 105s", len(hist), hist[0].Time.Sub(t0), hist[len(hist)-1].Time.Sub(t0))
	}
	if last := hist[3]; last.Waits != 0 || last.WaitP50 != 0 {
		t.Errorf("sample with no wait in the window = %+v", last)
	}
}
