package taskscaler

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// TestDesiredInstances drives each input of the desired-count formula through the
// public API and counts the instances the group ends up with.
func TestDesiredInstances(t *testing.T) {
	off := boolp(false)
	cases := []struct {
		name    string
		capa    int
		policy  Policy
		maxInst int
		maxSize int
		jobs    int
		want    int
	}{
		{"scale to zero", 3, Policy{PreemptiveMode: off}, 0, 0, 0, 0},
		{"idle_count in slots, capacity 1", 1, Policy{IdleCount: 3, PreemptiveMode: off}, 0, 0, 0, 3},
		{"idle_count 5 on capacity 5 is one instance", 5, Policy{IdleCount: 5, PreemptiveMode: off}, 0, 0, 0, 1},
		{"idle_count 6 on capacity 5 rounds up", 5, Policy{IdleCount: 6, PreemptiveMode: off}, 0, 0, 0, 2},
		{"jobs plus idle_count", 1, Policy{IdleCount: 2, PreemptiveMode: off}, 0, 0, 3, 5},
		{"scale_factor 1", 1, Policy{ScaleFactor: 1, PreemptiveMode: off}, 0, 0, 3, 6},
		{"scale_factor_limit caps the factor", 1, Policy{IdleCount: 1, ScaleFactor: 0.5, ScaleFactorLimit: 1, PreemptiveMode: off}, 0, 0, 4, 5},
		{"idle_count is the floor of the factor", 1, Policy{IdleCount: 2, ScaleFactor: 0.25, PreemptiveMode: off}, 0, 0, 4, 6},
		{"factor rounds up in slots", 2, Policy{ScaleFactor: 0.5, PreemptiveMode: off}, 0, 0, 3, 3},
		{"max_instances caps", 1, Policy{IdleCount: 10, PreemptiveMode: off}, 4, 0, 0, 4},
		{"provider max size caps", 1, Policy{IdleCount: 5, PreemptiveMode: off}, 0, 2, 0, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, fake.Options{MaxSize: c.maxSize}, Options{CapacityPerInstance: c.capa, MaxInstances: c.maxInst, ReservationThrottling: off,
				Policies: []Policy{c.policy}})
			e.reconcile(2)
			for j := range c.jobs {
				if err := e.s.Reserve(context.Background(), fmt.Sprint("job", j)); err != nil {
					t.Fatalf("Reserve: %v", err)
				}
			}
			e.reconcile(2)
			for j := range c.jobs {
				e.acquire(fmt.Sprint("job", j))
			}
			e.reconcile(3)
			if got := len(e.live()); got != c.want {
				t.Fatalf("instances: got %d, want %d (increases %v, status %+v)", got, c.want, e.increases(), e.s.Status().LastDecision)
			}
			if st := e.s.Status(); st.Tasks.Acquired != c.jobs {
				t.Fatalf("acquired: got %d, want %d", st.Tasks.Acquired, c.jobs)
			}
		})
	}
}

func TestScaleUpIsEventDriven(t *testing.T) {
	e := newEnv(t, fake.Options{CreatingUpdates: 3}, Options{})
	e.reconcile(1)
	if n := e.g.CallCount("Increase"); n != 0 {
		t.Fatalf("Increase before demand: %d calls", n)
	}
	if err := e.s.Reserve(context.Background(), "job1"); err != nil {
		t.Fatal(err)
	}
	// No Reconcile in between: the Reserve itself requested the instance.
	if got := e.increases(); len(got) != 1 || got[0] != 1 {
		t.Fatalf("increases after Reserve: %v, want [1]", got)
	}
	if err := e.s.Reserve(context.Background(), "job2"); err != nil {
		t.Fatal(err)
	}
	if got := e.increases(); len(got) != 2 || got[1] != 1 {
		t.Fatalf("increases after second Reserve: %v, want [1 1]", got)
	}
	// While the instances are creating, the same demand asks for nothing more.
	e.reconcile(1)
	if got := e.increases(); len(got) != 2 {
		t.Fatalf("increases after reconcile: %v", got)
	}
}

func TestPreemptiveReserve(t *testing.T) {
	e := newEnv(t, fake.Options{CreatingUpdates: 1}, Options{Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}}})
	e.reconcile(1) // requests the idle instance
	err := e.s.Reserve(context.Background(), "job1")
	want := "no capacity: no immediately available capacity (idle:0,acquired:0,unavailable:0,unhealthy:0,unready:1)"
	if err == nil || err.Error() != want || !isNoCapacity(err) {
		t.Fatalf("Reserve before ready: got %v, want %q", err, want)
	}
	e.reconcile(2) // creating → running → ready
	if err := e.s.Reserve(context.Background(), "job1"); err != nil {
		t.Fatalf("Reserve with an idle slot: %v", err)
	}
	// The reservation consumed the idle slot: a new idle instance was requested at once.
	if got := e.increases(); len(got) != 2 {
		t.Fatalf("increases: %v, want a second one right after the reservation", got)
	}
	a := e.acquire("job1")
	if a.Slot() != 0 || a.InstanceID() == "" {
		t.Fatalf("acquisition: instance %q slot %d", a.InstanceID(), a.Slot())
	}
}

func TestNonPreemptivePotentialCapacity(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{MaxInstances: 2, CapacityPerInstance: 1})
	ctx := context.Background()
	for _, k := range []string{"a", "b"} {
		if err := e.s.Reserve(ctx, k); err != nil {
			t.Fatalf("Reserve(%s): %v", k, err)
		}
	}
	err := e.s.Reserve(ctx, "c")
	if !isNoCapacity(err) || !strings.Contains(err.Error(), "no potential capacity") {
		t.Fatalf("third Reserve beyond max_instances: %v", err)
	}
	e.s.Unreserve("a")
	if err := e.s.Reserve(ctx, "c"); err != nil {
		t.Fatalf("Reserve after Unreserve: %v", err)
	}
}

func TestAcquireWaitsForReadyInstance(t *testing.T) {
	ready := 0
	e := newEnv(t, fake.Options{CreatingUpdates: 1}, Options{CapacityPerInstance: 2,
		Ready: func(ctx context.Context, in InstanceInfo) error {
			if in.ConnectInfo.ID != in.ID {
				return fmt.Errorf("ready called without connect info")
			}
			ready++
			return nil
		}})
	type result struct {
		a   *Acquisition
		err error
	}
	done := make(chan result, 1)
	go func() {
		a, err := e.s.Acquire(context.Background(), "job")
		done <- result{a, err}
	}()
	e.clk.BlockUntil(1) // the acquire timer exists
	var r result
	cycles := 0
wait:
	for {
		select {
		case r = <-done:
			break wait
		default:
		}
		// Acquire's own scale-up and these cycles interleave; the instance needs
		// three cycles after Increase (creating, running → ready).
		if cycles++; cycles > 1000 {
			t.Fatalf("Acquire not served after %d cycles: %+v", cycles, e.s.Status().Tasks)
		}
		e.reconcile(1)
		runtime.Gosched()
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if ready != 1 || r.a.InstanceID() != "fake-0001" {
		t.Fatalf("ready calls %d, instance %q", ready, r.a.InstanceID())
	}
	ci, err := r.a.ConnectInfo(context.Background())
	if err != nil || ci.ID != "fake-0001" {
		t.Fatalf("ConnectInfo: %+v %v", ci, err)
	}
	e.s.Release("job")
	if st := e.s.Status(); st.Tasks.Acquired != 0 || st.Tasks.Idle != 2 {
		t.Fatalf("after release: %+v", st.Tasks)
	}
	if err := context.Cause(r.a.Context()); err != ErrReleased {
		t.Fatalf("acquisition context cause after Release: %v", err)
	}
}

func TestAcquireTimeoutMessage(t *testing.T) {
	e := newEnv(t, fake.Options{CreatingUpdates: 100}, Options{InstanceAcquireTimeout: 3 * time.Minute})
	errc := make(chan error, 1)
	go func() {
		_, err := e.s.Acquire(context.Background(), "job")
		errc <- err
	}()
	e.clk.BlockUntil(1)
	e.clk.Advance(3 * time.Minute)
	err := <-errc
	want := "unable to acquire instance within the configured timeout of 3m0s: no capacity: no immediately available capacity"
	if err == nil || !strings.HasPrefix(err.Error(), want) || !isNoCapacity(err) {
		t.Fatalf("got %v, want prefix %q", err, want)
	}
	if st := e.s.Status(); st.Tasks.Pending != 0 {
		t.Fatalf("waiter left behind: %+v", st.Tasks)
	}
}

func TestReservationThrottling(t *testing.T) {
	cases := []struct {
		name       string
		throttling *bool
		wantOK     int
	}{
		{"on by default: leaves one instance's capacity unreserved", nil, 2},
		{"off: every idle slot can be reserved", boolp(false), 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, fake.Options{MaxSize: 2}, Options{CapacityPerInstance: 2, ReservationThrottling: c.throttling,
				Policies: []Policy{{IdleCount: 4, IdleTime: time.Hour, PreemptiveMode: boolp(true)}}})
			e.reconcile(2)
			ok := 0
			for i := range 4 {
				if err := e.s.Reserve(context.Background(), fmt.Sprint("r", i)); err == nil {
					ok++
				} else if !isNoCapacity(err) {
					t.Fatal(err)
				}
			}
			if ok != c.wantOK {
				t.Fatalf("reservations accepted: %d, want %d", ok, c.wantOK)
			}
		})
	}
}

func TestScaleThrottle(t *testing.T) {
	e := newEnv(t, fake.Options{CreatingUpdates: 100}, Options{ScaleThrottle: ScaleThrottle{Limit: 1, Burst: 2},
		Policies: []Policy{{IdleCount: 5}}})
	e.reconcile(1)
	if got := e.increases(); len(got) != 1 || got[0] != 2 {
		t.Fatalf("first increases %v, want [2] (burst)", got)
	}
	st := e.s.Status()
	if st.LastShortfall == nil || !strings.Contains(st.LastShortfall.Reason, "scale_throttle") {
		t.Fatalf("shortfall reason: %+v", st.LastShortfall)
	}
	e.reconcile(1)
	if got := e.increases(); len(got) != 1 {
		t.Fatalf("increase without new tokens: %v", got)
	}
	e.clk.Advance(time.Second)
	e.reconcile(1)
	e.clk.Advance(2 * time.Second)
	e.reconcile(1)
	if got := e.increases(); fmt.Sprint(got) != "[2 1 2]" {
		t.Fatalf("increases %v, want [2 1 2]", got)
	}
}

func TestUnlimitedThrottle(t *testing.T) {
	e := newEnv(t, fake.Options{CreatingUpdates: 100}, Options{ScaleThrottle: ScaleThrottle{Limit: -1, Burst: 1},
		Policies: []Policy{{IdleCount: 50}}})
	e.reconcile(1)
	if got := e.increases(); len(got) != 1 || got[0] != 50 {
		t.Fatalf("increases %v, want [50]", got)
	}
}

func TestMaxInstancesCountsDeleting(t *testing.T) {
	e := newEnv(t, fake.Options{DeletingUpdates: 5}, Options{MaxInstances: 2, Policies: []Policy{{IdleCount: 2, IdleTime: time.Minute}}})
	e.reconcile(2)
	if n := len(e.live()); n != 2 {
		t.Fatalf("live %d", n)
	}
	if err := e.s.ConfigureSchedule([]Policy{{IdleCount: 0, IdleTime: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(2 * time.Minute)
	e.reconcile(1) // both idle past idle_time: removed, deleting for 5 updates
	if err := e.s.ConfigureSchedule([]Policy{{IdleCount: 2, IdleTime: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	e.reconcile(1)
	if got := e.increases(); len(got) != 1 {
		t.Fatalf("increases while deleting instances fill max_instances: %v", got)
	}
	st := e.s.Status()
	if st.LastShortfall == nil || !strings.Contains(st.LastShortfall.Reason, "max_instances 2 reached") {
		t.Fatalf("why nothing was created: %+v", st.LastShortfall)
	}
	e.reconcile(6)
	if n := len(e.live()); n != 2 {
		t.Fatalf("after deletion finished: live %d, want 2", n)
	}
}

func TestUpdateFailureIsNotDeath(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{})
	if err := e.s.Reserve(context.Background(), "job"); err != nil {
		t.Fatal(err)
	}
	e.reconcile(1)
	a := e.acquire("job")
	e.g.FailNext("Update", fmt.Errorf("throttled: %w", provider.ErrCapacity))
	if err := e.s.Reconcile(context.Background()); err == nil {
		t.Fatal("Reconcile hid the Update error")
	}
	if a.Context().Err() != nil {
		t.Fatal("acquisition cancelled after a failed Update")
	}
	st := e.s.Status()
	if st.LastUpdateError == "" || st.Instances.Running != 1 {
		t.Fatalf("status after failed update: %+v", st)
	}
	if n := e.g.CallCount("Increase"); n != 1 {
		t.Fatalf("a failed Update caused replacements: %d Increase calls", n)
	}
}

func TestTryAcquire(t *testing.T) {
	e := newEnv(t, fake.Options{CreatingUpdates: 1}, Options{})
	ctx := context.Background()
	if err := e.s.Reserve(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	_, err := e.s.TryAcquire(ctx, "job")
	if !isNoCapacity(err) {
		t.Fatalf("TryAcquire with no ready slot: %v", err)
	}
	if st := e.s.Status(); st.Tasks.Reserved != 1 || st.Tasks.Pending != 0 {
		t.Fatalf("the reservation's demand must keep counting: %+v", st.Tasks)
	}
	e.reconcile(2)
	// The ready instance's slot was bound to the waiting reservation, so it is not idle.
	if st := e.s.Status(); st.Tasks.Idle != 0 || st.Tasks.Reserved != 1 {
		t.Fatalf("after ready: %+v", st.Tasks)
	}
	a, err := e.s.TryAcquire(ctx, "job")
	if err != nil {
		t.Fatal(err)
	}
	if a.InstanceID() != "fake-0001" || len(e.increases()) != 1 {
		t.Fatalf("acquired %s, increases %v", a.InstanceID(), e.increases())
	}
}
