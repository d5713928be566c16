package taskscaler

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
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
// scaler as created or adopted (or is already being deleted by it).
func accounted(t *testing.T, e *env) {
	t.Helper()
	known := map[string]InstanceStatus{}
	for _, in := range e.s.Status().InstanceList {
		known[in.ID] = in
	}
	for id, st := range e.g.Instances() {
		in, ok := known[id]
		if !ok {
			t.Errorf("instance %s (%s) in the group is unknown to the scaler", id, st)
			continue
		}
		if in.Cause != CauseCreated && in.Cause != CauseAdopted {
			t.Errorf("instance %s has cause %q", id, in.Cause)
		}
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
			for range 4 {
				e.reconcile(1)
				accounted(t, e)
			}
			if c.point == "before" {
				// The recorded intent is written off after pending_creation_timeout;
				// only then are replacements requested.
				e.clk.Advance(5 * time.Minute)
				e.reconcile(4)
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
