package taskscaler

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// accounted fails the test unless every instance the group holds is known to the
// scaler as created or adopted (or is already being deleted by it), or is one of the
// instances this run requested and has not listed yet.
func accounted(t *testing.T, e *env) {
	t.Helper()
	known := map[string]InstanceStatus{}
	status := e.s.Status()
	for _, in := range status.InstanceList {
		known[in.ID] = in
	}
	var unknown []string
	for id, st := range e.g.Instances() {
		in, ok := known[id]
		if !ok {
			unknown = append(unknown, fmt.Sprintf("%s (%s)", id, st))
			continue
		}
		if in.Cause != CauseCreated && in.Cause != CauseAdopted {
			t.Errorf("instance %s has cause %q", id, in.Cause)
		}
	}
	if len(unknown) > status.Instances.Requested {
		t.Errorf("instances in the group unknown to the scaler: %v (requested, not listed yet: %d)", unknown, status.Instances.Requested)
	}
}

func TestRestartAdoption(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{Policies: []Policy{{IdleCount: 3, IdleTime: time.Hour}}, UnknownInstanceGrace: time.Minute})
	e.reconcile(2)
	busy := e.acquire("job")
	e.reconcile(1)
	before := e.live() // 4: three idle, one busy
	if len(before) != 4 {
		t.Fatalf("live before restart: %v", before)
	}
	stranger := e.g.AddInstance(provider.StateRunning)

	// The host dies: no Shutdown. A new scaler starts over the same store and group.
	e.s.cancel()
	e.start(Options{Policies: []Policy{{IdleCount: 3, IdleTime: time.Hour}}, UnknownInstanceGrace: time.Minute})
	e.reconcile(1)

	for _, id := range before {
		st, ok := e.s.Explain(id)
		if !ok {
			t.Fatalf("instance %s forgotten", id)
		}
		if id == busy.InstanceID() {
			if !strings.Contains(st.RemoveReason, "had 1 jobs in flight when the host stopped") {
				t.Errorf("busy instance %s: %+v", id, st)
			}
			continue
		}
		if st.Phase != "ready" || st.Cause != CauseAdopted || !st.Restored {
			t.Errorf("idle instance %s not adopted: %+v", id, st)
		}
	}
	if st, _ := e.s.Explain(stranger); st.Phase != "unvouched" {
		t.Fatalf("stranger: %+v", st)
	}
	decreased := e.decreased()
	if len(decreased) != 1 || decreased[0] != busy.InstanceID() {
		t.Fatalf("decreased %v, want only the instance that had a job in flight", decreased)
	}
	// After the grace period the stranger goes too.
	e.clk.Advance(time.Minute)
	e.reconcile(2)
	if st, _ := e.s.Explain(stranger); !strings.Contains(st.RemoveReason, "cannot vouch for it") {
		t.Fatalf("stranger after grace: %+v", st)
	}
	accounted(t, e)
	if got := len(e.live()); got != 3 {
		t.Fatalf("live after restart %d, want 3 (idle_count)", got)
	}
}

func TestKeepInstanceWithAcquisitions(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{})
	if err := e.s.Reserve(context.Background(), "job"); err != nil {
		t.Fatal(err)
	}
	e.reconcile(1)
	e.acquire("job")
	e.s.cancel()
	e.start(Options{KeepInstanceWithAcquisitions: true, Policies: []Policy{{IdleTime: time.Hour}}})
	e.reconcile(1)
	if n := e.g.CallCount("Decrease"); n != 0 {
		t.Fatalf("instance removed despite keep_instance_with_acquisitions")
	}
	if st := e.s.Status(); st.Tasks.Idle != 1 {
		t.Fatalf("kept instance does not serve: %+v", st.Tasks)
	}
}

// blockingGroup wraps the fake so that Increase can hang, as a host killed during the
// call would never see its answer.
type blockingGroup struct {
	*fake.Group
	mu      sync.Mutex
	block   bool
	forward bool // whether the cloud acts on the request before the host dies
	entered chan struct{}
	release chan struct{}
}

func (b *blockingGroup) Increase(ctx context.Context, n int) (int, error) {
	b.mu.Lock()
	block, forward := b.block, b.forward
	b.mu.Unlock()
	if !block {
		return b.Group.Increase(ctx, n)
	}
	if forward {
		b.Group.Increase(ctx, n)
	}
	close(b.entered)
	<-b.release
	return 0, context.Canceled
}

// TestKillMidScaling abandons a scaler at each point of a scale-up, keeping the bbolt
// file and the group, and checks that a new scaler accounts for every instance.
func TestKillMidScaling(t *testing.T) {
	cases := []struct {
		name     string
		point    string // "after": Increase returned; "during": the cloud created, no answer; "before": never reached the cloud
		wantLive int
	}{
		{"after Increase returned", "after", 4},
		{"during Increase, cloud acted", "during", 4},
		{"during Increase, cloud did not act", "before", 4},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "taskscaler.db")
			db, err := state.OpenBolt(path, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			bg := &blockingGroup{Group: fake.New(fake.Options{CreatingUpdates: 2}), entered: make(chan struct{}), release: make(chan struct{})}
			pol := []Policy{{IdleCount: 4, IdleTime: time.Hour}}
			e := &env{t: t, clk: clock.NewFake(t0), g: bg.Group, store: db}
			o := Options{Policies: pol, PendingCreationTimeout: 5 * time.Minute}
			o.Clock, o.Store, o.Manual, o.Logger, o.Owner = e.clk, db, true, quiet(), "runner-1"
			s1, err := New(context.Background(), bg, o)
			if err != nil {
				t.Fatal(err)
			}
			switch c.point {
			case "after":
				if err := s1.Reconcile(context.Background()); err != nil {
					t.Fatal(err)
				}
			default:
				bg.block, bg.forward = true, c.point == "during"
				go s1.Reconcile(context.Background())
				<-bg.entered
				t.Cleanup(func() { close(bg.release) })
			}
			// kill -9: the scaler is dropped mid-flight; the kernel releases the file lock.
			s1.cancel()
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			bg.mu.Lock()
			bg.block = false
			bg.mu.Unlock()

			db2, err := state.OpenBolt(path, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer db2.Close()
			e.store = db2
			o.Store = db2
			s2, err := New(context.Background(), bg, o)
			if err != nil {
				t.Fatal(err)
			}
			e.s = s2
			t.Cleanup(func() { s2.cancel() })
			// No clock advance: a previous run's intent never holds up scale-up.
			for range 4 {
				e.reconcile(1)
				accounted(t, e)
			}
			accounted(t, e)
			if got := len(e.live()); got != c.wantLive {
				t.Fatalf("live %d, want %d; increases %v", got, c.wantLive, e.increases())
			}
			if d := e.decreased(); len(d) != 0 {
				t.Fatalf("instances deleted after restart: %v", d)
			}
			st := e.s.Status()
			if st.Instances.Requested != 0 || st.Tasks.Idle != 4 {
				t.Fatalf("status: %+v %+v", st.Instances, st.Tasks)
			}
			// What the dead run asked for and never appeared stays visible as
			// unconfirmed, and is written off after pending_creation_timeout without
			// counting as a provisioning failure.
			if want := map[bool]int{true: 4, false: 0}[c.point == "before"]; st.Instances.Unconfirmed != want || len(st.Pending) != min(want, 1) {
				t.Fatalf("unconfirmed %d, pending %+v; want %d", st.Instances.Unconfirmed, st.Pending, want)
			}
			e.clk.Advance(5 * time.Minute)
			e.reconcile(1)
			if st := e.s.Status(); st.Instances.Unconfirmed != 0 || len(st.Pending) != 0 || st.Breaker.ConsecutiveFailures != 0 || len(e.live()) != 4 {
				t.Fatalf("after pending_creation_timeout: %+v, pending %+v, breaker %+v", st.Instances, st.Pending, st.Breaker)
			}
		})
	}
}

// crashDuringIncrease starts a scaler over path whose Increase never reaches the cloud
// (host and plugin die together right after the intent is recorded), waits until the
// intent is recorded, and abandons it as kill -9 would.
func crashDuringIncrease(t *testing.T, e *env, path string, o Options) {
	t.Helper()
	db, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bg := &blockingGroup{Group: e.g, block: true, entered: make(chan struct{}), release: make(chan struct{})}
	o.Store = db
	s, err := New(context.Background(), bg, o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); s.Reconcile(context.Background()) }()
	<-bg.entered
	s.cancel()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	close(bg.release)
	<-done
}

// TestCrashedIntentsDoNotBlockScaleUp is issue 11's first defect: after crashes in the
// middle of scale-ups, the recorded intents counted as capacity that was coming, each
// new intent reset the 15-minute expiry, and runs in a row created nothing. A run's
// intents do not count as capacity once the run is gone.
func TestCrashedIntentsDoNotBlockScaleUp(t *testing.T) {
	for _, crashes := range []int{1, 2, 5} {
		t.Run(fmt.Sprintf("%d crashes", crashes), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "taskscaler.db")
			e := &env{t: t, clk: clock.NewFake(t0), g: fake.New(fake.Options{CreatingUpdates: 1})}
			o := Options{Policies: []Policy{{IdleCount: 4, IdleTime: time.Hour}}, MaxInstances: 4, Clock: e.clk, Manual: true,
				Logger: quiet(), Owner: "runner-1"}
			for range crashes {
				crashDuringIncrease(t, e, path, o)
				e.clk.Advance(time.Minute)
			}
			if n := len(e.g.Instances()); n != 0 {
				t.Fatalf("the crashed runs created %d instances", n)
			}
			db, err := state.OpenBolt(path, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			e.store = db
			e.start(o)
			e.reconcile(3)
			if got := len(e.live()); got != 4 {
				st := e.s.Status()
				t.Fatalf("live %d, want 4 at once; last decision: %s; pending %+v", got, st.LastDecision.Reason, st.Pending)
			}
			accounted(t, e)
			st := e.s.Status()
			if st.Instances.Unconfirmed != 4*crashes || len(st.Pending) != crashes {
				t.Fatalf("unconfirmed %d, pending %+v", st.Instances.Unconfirmed, st.Pending)
			}
			oldest := st.Pending[0]
			if oldest.ThisRun || !strings.Contains(oldest.Summary, fmt.Sprintf("waiting for 4 instances requested %s ago by a previous run", time.Duration(crashes)*time.Minute)) {
				t.Fatalf("pending creation not explained: %+v", oldest)
			}
			var report bytes.Buffer
			WriteReport(&report, Report{Scalers: []Status{st}})
			if !strings.Contains(report.String(), "pending: waiting for 4 instances requested") {
				t.Fatalf("runner status does not show the pending creations:\n%s", report.String())
			}
			// Each intent expires by its own time, without counting as a provisioning
			// failure: the crashed runs' requests may never have reached the cloud.
			e.clk.Advance(DefaultPendingCreationTimeout - time.Duration(crashes)*time.Minute)
			e.reconcile(1)
			if st := e.s.Status(); st.Instances.Unconfirmed != 4*(crashes-1) || st.Breaker.ConsecutiveFailures != 0 {
				t.Fatalf("after the oldest intent expired: %+v, breaker %+v", st.Instances, st.Breaker)
			}
			e.clk.Advance(time.Duration(crashes) * time.Minute)
			e.reconcile(1)
			if st := e.s.Status(); st.Instances.Unconfirmed != 0 || len(st.Pending) != 0 || len(e.live()) != 4 {
				t.Fatalf("after every intent expired: %+v, pending %+v, live %v", st.Instances, st.Pending, e.live())
			}
			if d := e.decreased(); len(d) != 0 {
				t.Fatalf("decreased %v", d)
			}
		})
	}
}

// failingStore refuses every write, as a full disk would.
type failingStore struct{ *state.Memory }

func (failingStore) Apply(context.Context, string, state.Batch) error {
	return errors.New("write state.db: no space left on device")
}

func TestNoCreationWithoutRecordedIntent(t *testing.T) {
	e := newEnv(t, fake.Options{}, Options{Store: failingStore{state.NewMemory()}, Policies: []Policy{{IdleCount: 2}}})
	e.reconcile(2)
	if n := e.g.CallCount("Increase"); n != 0 {
		t.Fatalf("Increase called although the intent could not be recorded: %d", n)
	}
	st := e.s.Status()
	if !strings.Contains(st.LastShortfall.Reason, "intent to create could not be recorded") || !strings.Contains(st.LastStoreError, "no space left") {
		t.Fatalf("status: %+v / %q", st.LastShortfall, st.LastStoreError)
	}
}

// secretGroup hands out connect info with credentials.
type secretGroup struct{ *fake.Group }

func (g secretGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	ci, err := g.Group.ConnectInfo(ctx, id)
	ci.Username, ci.Password, ci.Key = "ci", "s3cret-password", []byte("-----BEGIN OPENSSH PRIVATE KEY-----")
	return ci, err
}

func TestInventoryHoldsNoCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	db, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	g := secretGroup{fake.New(fake.Options{})}
	sawPassword := false
	s, err := New(context.Background(), g, Options{Manual: true, Clock: clock.NewFake(t0), Store: db, Logger: quiet(),
		Policies: []Policy{{IdleCount: 2, IdleTime: time.Hour}},
		Ready: func(ctx context.Context, in InstanceInfo) error {
			sawPassword = in.ConnectInfo.Password == "s3cret-password"
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := s.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.Acquire(context.Background(), "job")
	if err != nil {
		t.Fatal(err)
	}
	if ci, _ := a.ConnectInfo(context.Background()); ci.Password != "s3cret-password" || !sawPassword {
		t.Fatal("the test group did not hand out credentials")
	}
	s.cancel()
	db.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"s3cret-password", "OPENSSH PRIVATE KEY", "127.0.0.1"} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("state file contains %q", secret)
		}
	}
	if !bytes.Contains(raw, []byte(a.InstanceID())) {
		t.Error("state file does not record the instance at all")
	}
}

// TestCorruptStateFileLeaksNothing: the host dies, its state file is damaged, and the
// next start moves it aside and begins with an empty inventory. The lost file was this
// owner's, so every instance the first listing shows is unvouched, never given a job,
// and deleted at once: kept for a grace period, it would count against max_instances
// and starve the jobs. The demand is met by new instances.
func TestCorruptStateFileLeaksNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "taskscaler.db")
	db, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Store: db, MaxInstances: 2, Policies: []Policy{{IdleCount: 2, IdleTime: time.Hour}}, UnknownInstanceGrace: time.Hour}
	e := newEnv(t, fake.Options{}, opts)
	e.reconcile(2)
	before := e.live()
	if len(before) != 2 {
		t.Fatalf("live %v, want 2 instances", before)
	}
	e.s.cancel()
	db.Close()
	if err := os.WriteFile(path, bytes.Repeat([]byte("garbage!"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}

	db2, err := state.OpenBolt(path, time.Second)
	if err != nil {
		t.Fatalf("a corrupt state file stops the runner: %v", err)
	}
	defer db2.Close()
	e.store = db2
	opts.Store = nil
	e.start(opts)
	st := e.s.Status()
	if !strings.Contains(st.StoreWarning, "was corrupt") || !strings.Contains(st.StoreWarning, path+".corrupt-") {
		t.Fatalf("store warning %q", st.StoreWarning)
	}
	var report bytes.Buffer
	WriteReport(&report, Report{Scalers: []Status{st}})
	if !strings.Contains(report.String(), "warning: state file "+path+" was corrupt") {
		t.Fatalf("runner status does not warn:\n%s", report.String())
	}
	e.reconcile(1)
	if d := e.decreased(); !slices.Equal(d, before) {
		t.Fatalf("deleted %v at the first listing, want the unvouched %v", d, before)
	}
	for _, id := range before {
		if in, _ := e.s.Explain(id); !strings.Contains(in.RemoveReason, "state file was found corrupt") {
			t.Fatalf("instance %s after the inventory was lost: %+v", id, in)
		}
	}
	// No time passes: the grace period (an hour) is not what frees max_instances.
	e.reconcile(3)
	a := e.acquire("job")
	if slices.Contains(before, a.InstanceID()) {
		t.Fatalf("job given to unvouched instance %s", a.InstanceID())
	}
	e.s.Release("job")
	accounted(t, e)
	if st := e.s.Status(); st.Tasks.Idle < 2 || slices.ContainsFunc(e.live(), func(id string) bool { return slices.Contains(before, id) }) {
		t.Fatalf("live %v (the lost inventory had %v), tasks %+v", e.live(), before, st.Tasks)
	}
}
