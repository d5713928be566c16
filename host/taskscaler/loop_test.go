package taskscaler

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/fake"
)

// TestBackgroundLoop runs the real loop on a fake clock: the acquisition is served
// after a few update_interval_when_expecting periods, not update_interval ones.
func TestBackgroundLoop(t *testing.T) {
	clk := clock.NewFake(t0)
	g := fake.New(fake.Options{CreatingUpdates: 2})
	readyCalls := 0
	s, err := New(context.Background(), g, Options{Clock: clk, Logger: quiet(),
		Ready: func(ctx context.Context, in InstanceInfo) error { readyCalls++; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		a   *Acquisition
		err error
	}
	done := make(chan result, 1)
	go func() {
		a, err := s.Acquire(context.Background(), "job")
		done <- result{a, err}
	}()
	var r result
	// Without progress for this long of real time the loop is taken to be sleeping
	// past the expecting interval. (A count of spins stood for time here before; on a
	// machine loaded by other test processes it ran out while the loop waited for a
	// CPU.)
	const stall = 15 * time.Second
	lastStep, updates := time.Now(), 0
wait:
	for {
		select {
		case r = <-done:
			break wait
		default:
		}
		// Fire the next timer only when it is due within update_interval_when_expecting:
		// while a job waits, the loop must never sleep for update_interval. Time stands
		// still while a readiness check runs in its goroutine, as it would take no time,
		// and moves only after the loop has run a cycle since the last step: a starved
		// loop (a loaded machine) must not see fake minutes pass in one real instant.
		if next, ok := clk.NextDeadline(); ok && clk.Pending() >= 2 && next.Sub(clk.Now()) <= DefaultUpdateIntervalWhenExpecting && !booting(s) &&
			g.CallCount("Update") > updates {
			updates = g.CallCount("Update")
			clk.Set(next)
			lastStep = time.Now()
		} else if time.Since(lastStep) > stall {
			t.Fatalf("the loop sleeps longer than %s while a job waits: next deadline %v", DefaultUpdateIntervalWhenExpecting, next)
		}
		runtime.Gosched()
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	// The instance is requested at once and polled every 2s while creating, so it is
	// ready after a few seconds of fake time, not after update_interval (1m).
	in, _ := s.Explain(r.a.InstanceID())
	if el := in.ReadyAt.Sub(t0); el > 20*time.Second {
		t.Fatalf("ready after %s of fake time; the expecting interval was not used", el)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if readyCalls != 1 || g.CallCount("Increase") != 1 {
		t.Fatalf("ready calls %d, increases %d", readyCalls, g.CallCount("Increase"))
	}
}

// booting reports whether an instance's readiness check is running.
func booting(s *Scaler) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, in := range s.instances {
		if in.phase == phaseBooting {
			return true
		}
	}
	return false
}

func TestStatusEndpoint(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{MaxInstances: 1, Policies: []Policy{{IdleCount: 2, IdleTime: time.Minute}}})
	e.reconcile(2)
	srv := httptest.NewServer(e.s)
	defer srv.Close()

	var st Status
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st.Instances.Running != 1 || st.Tasks.Idle != 1 || len(st.InstanceList) != 1 || st.MaxJobs != 1 {
		t.Fatalf("status %+v", st)
	}
	// Why was nothing (more) created: max_instances.
	if st.LastShortfall == nil || !strings.Contains(st.LastShortfall.Reason, "max_instances") || st.LastShortfall.Wanted != 1 {
		t.Fatalf("shortfall %+v", st.LastShortfall)
	}
	id := st.InstanceList[0].ID
	var in InstanceStatus
	resp, err = http.Get(srv.URL + "?instance=" + id)
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&in)
	resp.Body.Close()
	kinds := []string{}
	for _, ev := range in.History {
		kinds = append(kinds, ev.Kind)
	}
	if in.Cause != CauseCreated || strings.Join(kinds, ",") != "created,running,ready" || !strings.Contains(in.History[0].Reason, "trigger update") {
		t.Fatalf("explain %+v", in)
	}
	resp, err = http.Get(srv.URL + "?instance=nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown instance: %d", resp.StatusCode)
	}
}

func TestHistoryIsBounded(t *testing.T) {
	in := &instance{}
	for i := range historyLimit + 5 {
		in.event(t0.Add(time.Duration(i)*time.Second), "e", "")
	}
	h := in.orderedHistory()
	if len(h) != historyLimit || !h[0].Time.Equal(t0.Add(5*time.Second)) || !h[len(h)-1].Time.Equal(t0.Add((historyLimit+4)*time.Second)) {
		t.Fatalf("history %d entries, first %s last %s", len(h), h[0].Time, h[len(h)-1].Time)
	}
}
