package taskscaler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/fake"
)

// hostKeyErr reads like the connector's error for a changed host key, wrapped by the
// host's acquire heartbeat.
func hostKeyErr(id string) error {
	return fmt.Errorf("acquire heartbeat: dial ssh 127.0.0.1:22 as ci [instance %s]: host key: host key of instance %q at 127.0.0.1:22 changed: "+
		"pinned SHA256:aaa (ssh-ed25519) on first use, server now presents SHA256:bbb (ssh-ed25519)", id, id)
}

// TestProbeFailureBacksOffAndReplaces is issue 11's fourth defect: a failing acquire
// heartbeat was retried at once (the cycle's plugin Heartbeat reset the failures), so
// failure_threshold was never reached, the instance never replaced, and the probe's
// own error never shown.
func TestProbeFailureBacksOffAndReplaces(t *testing.T) {
	var mu sync.Mutex
	probes := map[string]int{}
	bad := map[string]bool{}
	e := newEnv(t, fake.Options{}, Options{FailureThreshold: 3, MaxInstances: 1, Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}},
		Probe: func(ctx context.Context, in InstanceInfo) error {
			mu.Lock()
			defer mu.Unlock()
			probes[in.ID]++
			if bad[in.ID] {
				return hostKeyErr(in.ID)
			}
			return nil
		}})
	ctx := context.Background()
	e.reconcile(2)
	a := e.live()[0]
	mu.Lock()
	bad[a] = true // its host key changed after it passed readiness (and its probe)
	base := probes[a]
	mu.Unlock()

	_, err := e.s.TryAcquire(ctx, "job")
	if err == nil || !strings.Contains(err.Error(), "host key of instance \""+a+"\" at 127.0.0.1:22 changed") {
		t.Fatalf("TryAcquire: %v; want the probe's host-key error", err)
	}
	// However often the scaler cycles, the instance is not probed again before its
	// backoff: no re-dial loop.
	for range 10 {
		e.reconcile(1)
		e.s.TryAcquire(ctx, "job")
	}
	if probes[a] != base+1 {
		t.Fatalf("instance probed %d times without time passing, want 1", probes[a]-base)
	}
	st, _ := e.s.Explain(a)
	if st.Healthy || st.HealthFailures != 1 || !strings.Contains(st.HealthError, "host key of instance") || !st.NextHealthCheck.Equal(t0.Add(healthRecheckMin)) {
		t.Fatalf("explain: %+v", st)
	}
	var out bytes.Buffer
	WriteInstance(&out, st)
	WriteReport(&out, Report{Scalers: []Status{e.s.Status()}})
	if strings.Count(out.String(), "host key of instance") < 2 {
		t.Fatalf("runner status does not show the health error:\n%s", out.String())
	}
	// Rechecks (Heartbeat and probe) follow the backoff; the third failure reaches
	// failure_threshold and the instance is replaced.
	for i, wait := range []time.Duration{healthRecheckMin, 2 * healthRecheckMin} {
		e.clk.Advance(wait - time.Millisecond)
		e.reconcile(1)
		if probes[a]-base != i+1 {
			t.Fatalf("probed %d times before the backoff of %s ended", probes[a]-base, wait)
		}
		e.clk.Advance(time.Millisecond)
		e.reconcile(1)
		if probes[a]-base != i+2 {
			t.Fatalf("not rechecked after the backoff of %s: %d probes", wait, probes[a]-base)
		}
	}
	st, _ = e.s.Explain(a)
	if !strings.Contains(st.RemoveReason, "3 consecutive health check failures (failure_threshold 3): probe: acquire heartbeat:") ||
		!strings.Contains(st.RemoveReason, "host key of instance") {
		t.Fatalf("not replaced for its probe failures: %+v", st)
	}
	e.reconcile(3)
	acq, err := e.s.TryAcquire(ctx, "job")
	if err != nil || acq.InstanceID() == a {
		t.Fatalf("after the replacement: %v", err)
	}
}

// TestUnreachableInstancesOpenTheBreaker: when no instance can pass the probe (a wrong
// client key), instances are not created and replaced forever: the probe is part of
// readiness, tried again with a backoff up to failure_threshold, and the instances that
// never pass open the circuit breaker with the probe's own words.
func TestUnreachableInstancesOpenTheBreaker(t *testing.T) {
	var mu sync.Mutex
	probed := map[string][]time.Time{}
	e := newEnv(t, fake.Options{}, Options{Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}},
		Breaker: Breaker{Threshold: 3, Backoff: time.Minute}, FailureThreshold: 3,
		Probe: func(ctx context.Context, in InstanceInfo) error {
			mu.Lock()
			probed[in.ID] = append(probed[in.ID], time.Now())
			mu.Unlock()
			return fmt.Errorf("acquire heartbeat: dial ssh 127.0.0.1:22 as ci [instance %s]: auth: unable to authenticate, attempted methods [none publickey]", in.ID)
		}})
	e.reconcile(10)
	if got := e.increases(); len(got) != 1 {
		t.Fatalf("increases %v before time passed: an unready instance was replaced at once", got)
	}
	for range 50 { // 50 s: under the breaker's one-minute backoff
		e.clk.Advance(time.Second)
		e.reconcile(1)
	}
	for id, at := range probed {
		if len(at) != 3 {
			t.Errorf("instance %s probed %d times, want failure_threshold (3)", id, len(at))
		}
	}
	if got := e.increases(); len(got) != 3 {
		t.Fatalf("increases %v: want 3, then the breaker open", got)
	}
	st := e.s.Status()
	if st.Breaker.State != "open" || !strings.Contains(st.Breaker.LastFailure, "ready: probe: acquire heartbeat:") ||
		!strings.Contains(st.Breaker.LastFailure, "unable to authenticate") {
		t.Fatalf("breaker %+v", st.Breaker)
	}
	if st.Tasks.Idle != 0 {
		t.Fatalf("an unreachable instance counts as idle: %+v", st.Tasks)
	}
}

// TestAcquireTimeoutNamesTheFailingPlugin is issue 11's third defect, the scaler's
// part: with the plugin dead, the acquire timeout blamed capacity.
func TestAcquireTimeoutNamesTheFailingPlugin(t *testing.T) {
	dead := errors.New("update: plugin local: plugin process exited")
	e := newEnv(t, fake.Options{}, Options{InstanceAcquireTimeout: 5 * time.Minute})
	for range 100 {
		e.g.FailNext("Update", dead)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := e.s.Acquire(context.Background(), "job")
		errc <- err
	}()
	e.clk.BlockUntil(1)
	// The waiting Acquire requests its instance right after it starts its timer.
	eventually.True(t, "the waiting Acquire to request an instance", 10*time.Second, func() bool { return e.g.CallCount("Increase") > 0 })
	for range 9 {
		e.clk.Advance(30 * time.Second)
		if err := e.s.Reconcile(context.Background()); !errors.Is(err, dead) || strings.Contains(err.Error(), "update: update:") {
			t.Fatalf("Reconcile: %v", err)
		}
	}
	e.clk.Advance(30 * time.Second)
	err := <-errc
	want := "unable to acquire instance within the configured timeout of 5m0s: the plugin's Update has failed for 4m30s (9 attempts in a row, retried with backoff): update: plugin local: plugin process exited; no capacity"
	if err == nil || !strings.HasPrefix(err.Error(), want) || !isNoCapacity(err) {
		t.Fatalf("got %v\nwant prefix %q", err, want)
	}
	if !strings.Contains(err.Error(), "waiting for 1 instances requested 5m0s ago by this run") {
		t.Fatalf("the pending creation is not named: %v", err)
	}
	if st := e.s.Status(); !strings.HasPrefix(st.UpdateFailing, "the plugin's Update has failed for 4m30s") {
		t.Fatalf("status: %q", st.UpdateFailing)
	}
}

// TestFailingUpdateBacksOff runs the real loop over a plugin whose Update always
// fails: kicks do not call it, and retries back off instead of following a 100ms
// interval.
func TestFailingUpdateBacksOff(t *testing.T) {
	clk := clock.NewFake(t0)
	g := fake.New(fake.Options{})
	for range 10000 {
		g.FailNext("Update", errors.New("update: plugin local: plugin process exited"))
	}
	s, err := New(context.Background(), g, Options{Clock: clk, Logger: quiet(), UpdateInterval: 100 * time.Millisecond,
		UpdateIntervalWhenExpecting: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	// settled waits until the loop sleeps on its timer with no kick left to handle.
	settled := func() {
		t.Helper()
		eventually.True(t, "the loop to settle on its timer with no kick left", 10*time.Second, func() bool { return clk.Pending() >= 1 && len(s.kickCh) == 0 })
	}
	settled()
	for range 50 {
		s.kick()
		settled()
	}
	if n := g.CallCount("Update"); n != 1 {
		t.Fatalf("%d Update calls without time passing, want 1: kicks must not bypass the backoff", n)
	}
	for {
		next, ok := clk.NextDeadline()
		if !ok || next.After(t0.Add(time.Minute)) {
			break
		}
		clk.Set(next)
		settled()
	}
	// Attempts at 0, 1s, 3s, 7s, 15s, 31s, then every 30s: 6 in the first minute,
	// where a 100ms interval would make 600.
	if n := g.CallCount("Update"); n < 5 || n > 8 {
		t.Fatalf("%d Update calls in a minute of failures", n)
	}
}

// TestErrorsSayEachStepOnce is issue 11's "update: update:": the plugin client's
// errors already name the method, so the scaler must not repeat it.
func TestErrorsSayEachStepOnce(t *testing.T) {
	cases := []struct {
		name   string
		method string
		err    string
		run    func(e *env) error
		want   string
	}{
		{"update at shutdown", "Update", "update: plugin local: plugin process exited",
			func(e *env) error {
				for range DefaultShutdownDeletionRetries + 1 {
					e.g.FailNext("Update", errors.New("update: plugin local: plugin process exited"))
				}
				return e.shutdown()
			},
			"last error (round 4): update: plugin local: plugin process exited"},
		{"update in a cycle", "Update", "plugin aws: update: throttled",
			func(e *env) error { return e.s.Reconcile(context.Background()) },
			"instance group fake/local/group: plugin aws: update: throttled"},
		{"update from another group", "Update", "throttled",
			func(e *env) error { return e.s.Reconcile(context.Background()) },
			"instance group fake/local/group: update: throttled"},
		{"heartbeat before a slot is handed out", "Heartbeat", "heartbeat: plugin local: plugin process exited",
			func(e *env) error { _, err := e.s.TryAcquire(context.Background(), "job"); return err },
			"instance fake-0001 unhealthy (1 of 3 consecutive health check failures; next check in 2s): heartbeat: plugin local: plugin process exited"},
		{"connect info", "ConnectInfo", "connect info: plugin local: plugin process exited",
			func(e *env) error {
				a, err := e.s.TryAcquire(context.Background(), "job")
				if err != nil {
					return err
				}
				e.g.FailNext("ConnectInfo", errors.New("connect info: plugin local: plugin process exited"))
				_, err = a.ConnectInfo(context.Background())
				return err
			},
			"instance fake-0001: connect info: plugin local: plugin process exited"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, fake.Options{}, Options{DeleteInstancesOnShutdown: true, Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}}})
			e.reconcile(2)
			if c.method != "ConnectInfo" {
				e.g.FailNext(c.method, errors.New(c.err))
			}
			err := c.run(e)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v\nwant it to contain %q", err, c.want)
			}
			for _, step := range []string{"update", "heartbeat", "connect info"} {
				if strings.Count(err.Error(), step+":") > 1 {
					t.Fatalf("%q named twice: %v", step, err)
				}
			}
		})
	}
}

// TestAbsurdOptions is issue 11's eighth defect, the scaler's part: values that
// overflowed, panicked or busy-looped are refused with the key, or computed with
// saturating arithmetic.
func TestAbsurdOptions(t *testing.T) {
	refused := []struct {
		name string
		o    Options
		want string
	}{
		{"capacity_per_instance = MaxInt64", Options{CapacityPerInstance: math.MaxInt64}, "capacity_per_instance = 9223372036854775807: at most 10000"},
		{"update_interval = 1ns", Options{UpdateInterval: time.Nanosecond}, "update_interval = 1ns: must be at least 10ms"},
		{"update_interval_when_expecting = 1ns", Options{UpdateIntervalWhenExpecting: time.Nanosecond}, "update_interval_when_expecting = 1ns: must be at least 10ms"},
		{"scale_factor = NaN", Options{Policies: []Policy{{ScaleFactor: math.NaN()}}}, "policy[0].scale_factor = NaN: must be a finite number"},
		{"scale_factor = +Inf", Options{Policies: []Policy{{}, {ScaleFactor: math.Inf(1)}}}, "policy[1].scale_factor = +Inf: must be a finite number"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			c.o.Clock, c.o.Manual, c.o.Logger = clock.NewFake(t0), true, quiet()
			_, err := New(context.Background(), fake.New(fake.Options{}), c.o)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	t.Run("ConfigureSchedule refuses NaN", func(t *testing.T) {
		e := newEnv(t, fake.Options{}, Options{})
		if err := e.s.ConfigureSchedule([]Policy{{ScaleFactor: math.NaN()}}); err == nil || !strings.Contains(err.Error(), "policy[0].scale_factor = NaN") {
			t.Fatalf("got %v", err)
		}
	})

	saturated := []struct {
		name      string
		o         Options
		jobs      int
		wantLive  int
		wantIncr  string
		wantMaxJb int
	}{
		{"huge idle_count", Options{MaxInstances: 3, CapacityPerInstance: 2, Policies: []Policy{{IdleCount: math.MaxInt, PreemptiveMode: boolp(false)}}}, 0, 3, "[3]", 6},
		{"scale_factor 1e308", Options{MaxInstances: 3, Policies: []Policy{{ScaleFactor: 1e308, PreemptiveMode: boolp(false)}}}, 1, 3, "[1 2]", 3},
		{"max_instances × capacity", Options{MaxInstances: math.MaxInt / 2, CapacityPerInstance: 4}, 1, 1, "[1]", math.MaxInt},
		{"huge scale_throttle.burst", Options{ScaleThrottle: ScaleThrottle{Limit: 1, Burst: math.MaxInt}, Policies: []Policy{{IdleCount: 5, PreemptiveMode: boolp(false)}}}, 0, 5, "[5]", 0},
		{"large capacity", Options{CapacityPerInstance: MaxCapacityPerInstance, Policies: []Policy{{IdleCount: 1, PreemptiveMode: boolp(false)}}}, 2, 1, "[1]", 0},
	}
	for _, c := range saturated {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, fake.Options{}, c.o)
			for j := range c.jobs {
				if err := e.s.Reserve(context.Background(), fmt.Sprint("job", j)); err != nil {
					t.Fatal(err)
				}
				e.reconcile(1)
				e.acquire(fmt.Sprint("job", j))
			}
			e.reconcile(3)
			st := e.s.Status()
			if got := len(e.live()); got != c.wantLive || fmt.Sprint(e.increases()) != c.wantIncr || st.MaxJobs != c.wantMaxJb {
				t.Fatalf("live %d (want %d), increases %v (want %s), max jobs %d (want %d); %s", got, c.wantLive, e.increases(), c.wantIncr,
					st.MaxJobs, c.wantMaxJb, st.LastDecision.Reason)
			}
			if st.Required < 0 || st.Desired < 0 || st.Tasks.Idle < 0 || st.Tasks.Unready < 0 {
				t.Fatalf("counts wrapped around: %+v", st)
			}
		})
	}
}

// TestLateListedInstanceIsNotReplaced: a cloud may list a new VM before its lookups
// (the plugin's Heartbeat) find it. Its readiness is tried again with a backoff, and
// it becomes ready once the lookups see it: it is not deleted and replaced in a loop.
func TestLateListedInstanceIsNotReplaced(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{FailureThreshold: 3, Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}}})
	notFound := errors.New("heartbeat: instance fake-0001 not found")
	e.g.FailNext("Heartbeat", notFound)
	e.g.FailNext("Heartbeat", notFound)
	e.reconcile(5)
	id := e.live()[0]
	st, _ := e.s.Explain(id)
	if st.Phase != "booting" || st.HealthFailures != 1 || !strings.Contains(st.HealthError, "not found") || !st.NextHealthCheck.Equal(t0.Add(healthRecheckMin)) {
		t.Fatalf("after one failed readiness check: %+v", st)
	}
	var out bytes.Buffer
	WriteReport(&out, Report{Scalers: []Status{e.s.Status()}})
	if !strings.Contains(out.String(), "(1 readiness check failures, next at 2026-03-02T12:00:02Z: heartbeat: instance fake-0001 not found)") {
		t.Fatalf("runner status does not say why the instance is not ready:\n%s", out.String())
	}
	e.clk.Advance(healthRecheckMin)
	e.reconcile(2)
	e.clk.Advance(2 * healthRecheckMin)
	e.reconcile(2)
	if st, _ = e.s.Explain(id); st.Phase != "ready" || st.HealthFailures != 0 {
		t.Fatalf("after the lookups found it: %+v", st)
	}
	if inc, dec := e.increases(), e.decreased(); len(inc) != 1 || len(dec) != 0 {
		t.Fatalf("increases %v, deleted %v: want one instance created and none replaced", inc, dec)
	}
}

// TestShutdownDeletionOutlivesFailingCalls: at shutdown, a listing or a deletion that
// fails (a dropped connection, a plugin being relaunched) is made again in the next
// round; one error does not end the deletion and leave the instances.
func TestShutdownDeletionOutlivesFailingCalls(t *testing.T) {
	for _, method := range []string{"Update", "Decrease"} {
		t.Run(method, func(t *testing.T) {
			e := newEnv(t, fake.Options{}, Options{DeleteInstancesOnShutdown: true, Policies: []Policy{{IdleCount: 2, IdleTime: time.Hour}}})
			e.reconcile(2)
			e.g.FailNext(method, errors.New("rpc error: code = Unavailable desc = connection reset"))
			e.g.FailNext(method, errors.New("rpc error: code = Unavailable desc = connection reset"))
			if err := e.shutdown(); err != nil {
				t.Fatalf("Shutdown = %v after two failed %s calls", err, method)
			}
			if left := e.live(); len(left) != 0 {
				t.Fatalf("instances left: %v", left)
			}
		})
	}
}
