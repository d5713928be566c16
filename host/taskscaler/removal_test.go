package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func TestRemovalRules(t *testing.T) {
	type step func(e *env)
	reserve := func(k string) step {
		return func(e *env) {
			if err := e.s.Reserve(context.Background(), k); err != nil {
				e.t.Fatal(err)
			}
		}
	}
	acquire := func(k string) step { return func(e *env) { e.acquire(k) } }
	release := func(k string) step { return func(e *env) { e.s.Release(k) } }
	advance := func(d time.Duration) step { return func(e *env) { e.clk.Advance(d) } }
	reconcile := func(e *env) { e.reconcile(1) }
	schedule := func(p Policy) step {
		return func(e *env) {
			if err := e.s.ConfigureSchedule([]Policy{p}); err != nil {
				e.t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name      string
		opts      Options
		steps     []step
		wantLive  int
		wantGone  string // substring of the remove reason of a removed instance
		wantKept  string // substring required in the decision when nothing is removed
		decreases int
	}{
		{
			name:      "idle past idle_time and not needed is removed",
			opts:      Options{Policies: []Policy{{IdleTime: 10 * time.Minute}}},
			steps:     []step{reserve("a"), reconcile, acquire("a"), release("a"), advance(10 * time.Minute), reconcile},
			wantLive:  0,
			wantGone:  "idle for 10m0s (idle_time 10m0s) and not needed",
			decreases: 1,
		},
		{
			// The pool had a surplus only from the first look after the jump: a forecast
			// policy waits idle_time more before it removes.
			name:     "forecast: idle past idle_time, surplus just seen, is kept",
			opts:     Options{Policies: []Policy{{Mode: ModeForecast, IdleTime: 10 * time.Minute}}},
			steps:    []step{reserve("a"), reconcile, acquire("a"), release("a"), advance(10 * time.Minute), reconcile},
			wantLive: 1,
		},
		{
			name:      "forecast: idle and in surplus for idle_time is removed",
			opts:      Options{Policies: []Policy{{Mode: ModeForecast, IdleTime: 10 * time.Minute}}},
			steps:     []step{reserve("a"), reconcile, acquire("a"), release("a"), advance(10 * time.Minute), reconcile, advance(10 * time.Minute), reconcile},
			wantLive:  0,
			wantGone:  "idle for 20m0s (idle_time 10m0s) and not needed",
			decreases: 1,
		},
		{
			name:     "idle but within idle_time is kept",
			opts:     Options{Policies: []Policy{{IdleTime: 10 * time.Minute}}},
			steps:    []step{reserve("a"), reconcile, acquire("a"), release("a"), advance(9 * time.Minute), reconcile},
			wantLive: 1,
		},
		{
			name:     "idle past idle_time but needed for idle_count is kept",
			opts:     Options{Policies: []Policy{{IdleCount: 1, IdleTime: time.Minute}}},
			steps:    []step{reconcile, reconcile, advance(time.Hour), reconcile},
			wantLive: 1,
		},
		{
			name:     "an instance holding an acquisition is never removed",
			opts:     Options{Policies: []Policy{{IdleTime: time.Minute}}},
			steps:    []step{reserve("a"), reconcile, acquire("a"), schedule(Policy{IdleTime: time.Second}), advance(time.Hour), reconcile},
			wantLive: 1,
		},
		{
			name:      "an instance holding a reservation is never removed",
			opts:      Options{Policies: []Policy{{IdleCount: 1, IdleTime: time.Minute}}},
			steps:     []step{reconcile, reconcile, reserve("a"), reconcile, schedule(Policy{IdleTime: time.Second, PreemptiveMode: boolp(true)}), advance(time.Hour), reconcile},
			wantLive:  1, // the idle replacement goes, the reserved one stays
			wantGone:  "idle for 1h0m0s",
			decreases: 1,
		},
		{
			name:      "max_use_count retires the instance after its last job",
			opts:      Options{MaxUseCount: 2, CapacityPerInstance: 2, Policies: []Policy{{IdleTime: time.Hour}}},
			steps:     []step{reserve("a"), reserve("b"), reconcile, acquire("a"), acquire("b"), release("a"), reconcile},
			wantLive:  1, // b still runs on it
			decreases: 0,
		},
		{
			name:      "max_use_count: removed once drained",
			opts:      Options{MaxUseCount: 2, CapacityPerInstance: 2, Policies: []Policy{{IdleTime: time.Hour}}},
			steps:     []step{reserve("a"), reserve("b"), reconcile, acquire("a"), acquire("b"), release("a"), release("b"), reconcile},
			wantLive:  0,
			wantGone:  "max_use_count 2 reached and drained",
			decreases: 1,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.opts.ReservationThrottling = boolp(false)
			e := newEnv(t, fake.Options{}, c.opts)
			for _, st := range c.steps {
				st(e)
			}
			e.reconcile(1)
			if got := len(e.live()); got != c.wantLive {
				t.Fatalf("live instances %d, want %d; status %+v", got, c.wantLive, e.s.Status())
			}
			if got := len(e.decreased()); got != c.decreases {
				t.Fatalf("Decrease calls cover %d instances, want %d", got, c.decreases)
			}
			if c.wantGone != "" {
				gone := e.s.Status().Gone
				if len(gone) == 0 || !strings.Contains(gone[len(gone)-1].RemoveReason, c.wantGone) {
					t.Fatalf("gone: %+v, want reason containing %q", gone, c.wantGone)
				}
				st, ok := e.s.Explain(gone[len(gone)-1].ID)
				if !ok || st.History[len(st.History)-1].Kind != "gone" {
					t.Fatalf("explain after removal: %+v", st)
				}
			}
		})
	}
}

func TestMaxUseCountMakesFreeSlotsUnavailable(t *testing.T) {
	e := newEnv(t, fake.Options{MaxSize: 1}, Options{MaxUseCount: 1, CapacityPerInstance: 3, ReservationThrottling: boolp(false)})
	if err := e.s.Reserve(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	e.reconcile(1)
	e.acquire("a")
	st := e.s.Status()
	if st.Tasks.Idle != 0 || st.Tasks.Unavailable != 2 || st.Tasks.Acquired != 1 {
		t.Fatalf("tasks %+v, want idle 0 unavailable 2 acquired 1", st.Tasks)
	}
}

func TestDeletionRetry(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{DeletionRetryInterval: 30 * time.Second, Policies: []Policy{{IdleTime: time.Minute}}})
	if err := e.s.Reserve(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	e.reconcile(1)
	e.acquire("a")
	e.s.Release("a")
	e.clk.Advance(time.Minute)
	e.g.FailNext("Decrease", errors.New("cloud API 503"))
	e.reconcile(1)
	if n := e.g.CallCount("Decrease"); n != 1 {
		t.Fatalf("Decrease calls %d", n)
	}
	e.clk.Advance(10 * time.Second)
	e.reconcile(1)
	if n := e.g.CallCount("Decrease"); n != 1 {
		t.Fatalf("retried before deletion_retry_interval: %d calls", n)
	}
	e.clk.Advance(20 * time.Second)
	e.reconcile(1)
	if n := e.g.CallCount("Decrease"); n != 2 {
		t.Fatalf("not retried after deletion_retry_interval: %d calls", n)
	}
	e.reconcile(1)
	if len(e.g.Instances()) != 0 {
		t.Fatalf("instances left: %v", e.g.Instances())
	}
}

func TestUnexpectedRemoval(t *testing.T) {
	cases := []struct {
		name   string
		remove func(g *fake.Group, id string)
	}{
		{"vanished", func(g *fake.Group, id string) { g.RemoveInstance(id) }},
		{"deleting by someone else", func(g *fake.Group, id string) { g.SetState(id, provider.StateDeleting) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, fake.Options{}, Options{})
			if err := e.s.Reserve(context.Background(), "job"); err != nil {
				t.Fatal(err)
			}
			e.reconcile(1)
			a := e.acquire("job")
			jobCtx, cancel := a.WithContext(context.Background())
			defer cancel()
			c.remove(e.g, a.InstanceID())
			e.reconcile(1)
			if cause := context.Cause(a.Context()); !errors.Is(cause, ErrInstanceUnexpectedlyRemoved) {
				t.Fatalf("acquisition context cause %v", cause)
			}
			<-jobCtx.Done() // follows the acquisition context (asynchronously)
			if cause := context.Cause(jobCtx); !errors.Is(cause, ErrInstanceUnexpectedlyRemoved) {
				t.Fatalf("cause %v", cause)
			}
			st, ok := e.s.Explain(a.InstanceID())
			if !ok || !strings.Contains(fmt.Sprint(st.History), "unexpectedly-removed") {
				t.Fatalf("explain: %+v", st)
			}
			// The job's Release after the abort is harmless.
			e.s.Release("job")
			if n := e.g.CallCount("Decrease"); n != 0 {
				t.Fatalf("Decrease called for an instance someone else removed: %d", n)
			}
		})
	}
}

func TestHealthBeforeAcquire(t *testing.T) {
	probeFail := map[string]bool{}
	e := newEnv(t, fake.Options{}, Options{FailureThreshold: 2, Policies: []Policy{{IdleCount: 2, IdleTime: time.Hour}},
		Probe: func(ctx context.Context, in InstanceInfo) error {
			if probeFail[in.ID] {
				return errors.New("disk full")
			}
			return nil
		}})
	e.reconcile(2)
	ids := e.live()
	if len(ids) != 2 {
		t.Fatalf("live %v", ids)
	}
	// Both slots are equal; the busier-first rule falls back to the lowest ID.
	e.g.SetUnhealthy(ids[0], true)
	a := e.acquire("job1")
	if a.InstanceID() != ids[1] {
		t.Fatalf("job given to %s, want the healthy %s", a.InstanceID(), ids[1])
	}
	st, _ := e.s.Explain(ids[0])
	if st.Healthy || st.HealthFailures != 1 {
		t.Fatalf("unhealthy instance status: %+v", st)
	}
	// The first cycle after the recheck backoff rechecks it: the second failure
	// reaches failure_threshold: replaced.
	e.clk.Advance(healthRecheckMin)
	e.reconcile(1)
	st, _ = e.s.Explain(ids[0])
	if st.Phase != "removing" && st.Phase != "gone" {
		t.Fatalf("instance with %d failures not removed: %+v", st.HealthFailures, st)
	}
	if !strings.Contains(st.RemoveReason, "consecutive health check failures (failure_threshold 2)") {
		t.Fatalf("remove reason %q", st.RemoveReason)
	}
	// Probe failures count the same way.
	e.reconcile(2)
	probeFail[ids[1]] = true
	e.s.Release("job1")
	live := e.live()
	a2 := e.acquire("job2")
	if a2.InstanceID() == ids[1] {
		t.Fatalf("job given to the instance whose probe fails (%v)", live)
	}
}

func TestCircuitBreaker(t *testing.T) {
	readyErr := errors.New("cloud-init failed: no such image")
	failing := true
	e := newEnv(t, fake.Options{}, Options{Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}},
		Breaker: Breaker{Threshold: 3, Backoff: time.Minute, MaxBackoff: 4 * time.Minute},
		Ready: func(ctx context.Context, in InstanceInfo) error {
			if failing {
				return readyErr
			}
			return nil
		}})
	for range 6 {
		e.reconcile(1)
	}
	if n := e.g.CallCount("Increase"); n != 3 {
		t.Fatalf("Increase calls %d, want 3 before the breaker opens", n)
	}
	st := e.s.Status()
	if st.Breaker.State != "open" || !strings.Contains(st.Breaker.LastFailure, "no such image") {
		t.Fatalf("breaker %+v", st.Breaker)
	}
	if st.LastShortfall == nil || !strings.Contains(st.LastShortfall.Reason, "circuit breaker open") {
		t.Fatalf("why nothing was created: %+v", st.LastShortfall)
	}
	// Open for 1m: nothing; then half-open: exactly one probe instance.
	e.clk.Advance(30 * time.Second)
	e.reconcile(2)
	if n := e.g.CallCount("Increase"); n != 3 {
		t.Fatalf("Increase while open: %d", n)
	}
	e.clk.Advance(31 * time.Second)
	e.reconcile(1)
	if n := e.g.CallCount("Increase"); n != 4 {
		t.Fatalf("no probe after the open period: %d", n)
	}
	e.reconcile(1) // the probe instance appears and fails readiness
	// The probe fails too: open again for twice as long.
	st = e.s.Status()
	if st.Breaker.State != "open" || st.Breaker.OpenUntil.Sub(e.clk.Now()) != 2*time.Minute {
		t.Fatalf("breaker after failed probe: %+v (now %s)", st.Breaker, e.clk.Now())
	}
	failing = false
	e.clk.Advance(2 * time.Minute)
	e.reconcile(3)
	if st := e.s.Status(); st.Breaker.State != "closed" || st.Tasks.Idle != 1 {
		t.Fatalf("after recovery: breaker %+v tasks %+v", st.Breaker, st.Tasks)
	}
}

func TestIncreaseErrorsOpenBreaker(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{Policies: []Policy{{IdleCount: 1}}, Breaker: Breaker{Threshold: 2, Backoff: time.Minute}})
	e.g.FailNext("Increase", fmt.Errorf("quota: %w", provider.ErrCapacity))
	e.g.FailNext("Increase", fmt.Errorf("quota: %w", provider.ErrCapacity))
	e.reconcile(5)
	if n := e.g.CallCount("Increase"); n != 2 {
		t.Fatalf("Increase calls %d, want 2 then open", n)
	}
	if st := e.s.Status(); !strings.Contains(st.Breaker.LastFailure, "insufficient capacity") {
		t.Fatalf("breaker %+v", st.Breaker)
	}
}

func TestTimeoutInstanceIsForgotten(t *testing.T) {
	e := newEnv(t, fake.Options{CreatingUpdates: 10}, Options{Policies: []Policy{{IdleCount: 1}}})
	e.reconcile(2)
	ids := e.live()
	e.g.SetState(ids[0], provider.StateTimeout)
	e.reconcile(1)
	if n := e.g.CallCount("Decrease"); n != 0 {
		t.Fatalf("Decrease called for a timed-out instance")
	}
	if st := e.s.Status(); st.Breaker.ConsecutiveFailures != 1 {
		t.Fatalf("timeout not counted as a provisioning failure: %+v", st.Breaker)
	}
}

func TestShutdownDeletesInstances(t *testing.T) {
	cases := []struct {
		name     string
		del      bool
		wantLeft int
	}{
		{"delete_instances_on_shutdown", true, 0},
		{"instances kept by default", false, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, fake.Options{DeletingUpdates: 1}, Options{DeleteInstancesOnShutdown: c.del,
				Policies: []Policy{{IdleCount: 2, IdleTime: time.Hour}}})
			e.reconcile(2)
			if err := e.shutdown(); err != nil {
				t.Fatal(err)
			}
			if got := len(e.g.Instances()); got != c.wantLeft {
				t.Fatalf("instances left %d, want %d", got, c.wantLeft)
			}
			if e.g.Shutdowns() != 1 {
				t.Fatal("plugin not shut down")
			}
			if err := e.s.Reserve(context.Background(), "x"); !errors.Is(err, ErrShutdown) {
				t.Fatalf("Reserve after Shutdown: %v", err)
			}
		})
	}
}

func TestShutdownDeletionRetries(t *testing.T) {
	cases := []struct {
		name    string
		retries int
		want    int // Decrease calls before Shutdown gives up
	}{
		{"default 3 rounds", 0, 3},
		{"1 round", 1, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, fake.Options{}, Options{DeleteInstancesOnShutdown: true, ShutdownDeletionRetries: c.retries,
				ShutdownDeletionInterval: 7 * time.Second, Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}}})
			e.reconcile(2)
			for range 5 {
				e.g.FailNext("Decrease", errors.New("API down"))
			}
			start := e.clk.Now()
			err := e.shutdown()
			if err == nil || !strings.Contains(err.Error(), "1 instances left after") || !strings.Contains(err.Error(), "decrease: API down") {
				t.Fatalf("Shutdown: %v", err)
			}
			if n := e.g.CallCount("Decrease"); n != c.want {
				t.Fatalf("Decrease rounds %d, want %d", n, c.want)
			}
			if el := e.clk.Now().Sub(start); el != time.Duration(c.want)*7*time.Second {
				t.Fatalf("rounds spaced %s in total, want %d × shutdown_deletion_interval", el, c.want)
			}
		})
	}
}

func TestUpdateIntervals(t *testing.T) {
	cases := []struct {
		name  string
		setup func(e *env)
		want  time.Duration
	}{
		{"nothing expected: update_interval", func(e *env) {}, 45 * time.Second},
		{"instances requested: when_expecting", func(e *env) {
			if err := e.s.Reserve(context.Background(), "j"); err != nil {
				e.t.Fatal(err)
			}
		}, 3 * time.Second},
		{"instance creating: when_expecting", func(e *env) {
			if err := e.s.Reserve(context.Background(), "j"); err != nil {
				e.t.Fatal(err)
			}
			e.reconcile(1)
		}, 3 * time.Second},
		{"instance ready: back to update_interval", func(e *env) {
			if err := e.s.Reserve(context.Background(), "j"); err != nil {
				e.t.Fatal(err)
			}
			e.reconcile(3)
		}, 45 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, fake.Options{CreatingUpdates: 1}, Options{UpdateInterval: 45 * time.Second, UpdateIntervalWhenExpecting: 3 * time.Second})
			c.setup(e)
			if got := e.s.NextInterval(); got != c.want {
				t.Fatalf("next interval %s, want %s", got, c.want)
			}
		})
	}
}

func TestPeriodicHeartbeat(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{FailureThreshold: 2, HeartbeatInterval: 5 * time.Minute,
		Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}}})
	e.reconcile(2)
	id := e.live()[0]
	e.g.SetUnhealthy(id, true)
	before := e.g.CallCount("Heartbeat")
	e.clk.Advance(4 * time.Minute)
	e.reconcile(1)
	if n := e.g.CallCount("Heartbeat"); n != before {
		t.Fatalf("heartbeat before the interval: %d calls", n-before)
	}
	e.clk.Advance(time.Minute)
	e.reconcile(1) // first failure: unhealthy, its slot no longer idle; a replacement is ordered
	st := e.s.Status()
	if st.Tasks.Unhealthy != 1 || st.Tasks.Idle != 0 {
		t.Fatalf("after one failure: %+v", st.Tasks)
	}
	e.clk.Advance(healthRecheckMin)
	e.reconcile(1) // rechecked after the backoff: second failure reaches failure_threshold
	if in, _ := e.s.Explain(id); in.Phase != "removing" && in.Phase != "gone" {
		t.Fatalf("unhealthy instance kept: %+v", in)
	}
	e.reconcile(2)
	if st := e.s.Status(); st.Tasks.Idle != 1 {
		t.Fatalf("idle target not restored by a healthy replacement: %+v", st.Tasks)
	}
}
