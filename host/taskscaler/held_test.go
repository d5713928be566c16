package taskscaler

import (
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/fake"
)

// TestHeldSlotsTakenOver is a new leader of a shared pool: the slots other managers
// hold are taken over, so their instances are kept and the slots are not handed out
// again; an instance with jobs lost beyond the held ones is retired once they end.
func TestHeldSlotsTakenOver(t *testing.T) {
	opts := func(held []Held) Options {
		return Options{CapacityPerInstance: 2, Policies: []Policy{{IdleCount: 4, IdleTime: time.Hour}}, Held: held}
	}
	e := newEnv(t, fake.Options{}, opts(nil))
	e.reconcile(2)
	a := e.acquire("a")
	b := e.acquire("b")
	c := e.acquire("c")
	if a.InstanceID() != b.InstanceID() || c.InstanceID() == a.InstanceID() {
		t.Fatalf("packing: a %s b %s c %s", a.InstanceID(), b.InstanceID(), c.InstanceID())
	}
	full, half := a.InstanceID(), c.InstanceID()

	// The leader dies. Of the three jobs, a and c are still held by their managers;
	// b's manager died too.
	e.s.cancel()
	e.start(opts([]Held{{Key: "a", InstanceID: full, Slot: a.Slot()}, {Key: "c", InstanceID: half, Slot: c.Slot()}}))
	e.reconcile(2)

	for _, id := range []string{full, half} {
		if st, ok := e.s.Explain(id); !ok || st.Removing {
			t.Fatalf("instance %s with held slots not kept: %+v", id, st)
		}
	}
	// One free slot is left, on the instance whose jobs were all held (half); the one
	// that lost b takes no job.
	d := e.acquire("d")
	if d.InstanceID() != half || d.Slot() == c.Slot() {
		t.Fatalf("d got slot %d on %s; want the free slot on %s", d.Slot(), d.InstanceID(), half)
	}
	if got := e.s.Status().Tasks.Acquired; got != 3 {
		t.Fatalf("acquired after takeover = %d, want 3 (a, c, d)", got)
	}
	e.s.Release("a")
	e.reconcile(1)
	if st, _ := e.s.Explain(full); !st.Removing || !strings.Contains(st.RemoveReason, "lost with their runner manager") {
		t.Fatalf("instance that lost a job not retired after its held slot was released: %+v", st)
	}
	// A lost release retires the instance too.
	e.s.ReleaseLost("c", "manager m2's lease expired")
	e.s.Release("d")
	e.reconcile(1)
	st, _ := e.s.Explain(half)
	if !st.Removing || !strings.Contains(st.RemoveReason, "m2's lease expired") {
		t.Fatalf("instance of a lost job not retired: %+v", st)
	}
}

// TestLostJobsGrace: a new leader of a shared pool finds a job recorded in flight
// that no manager holds (its manager died with the old leader, or is cut off and
// stopping it): the instance takes no job, and is removed only after the grace.
func TestLostJobsGrace(t *testing.T) {
	opts := Options{CapacityPerInstance: 2, Policies: []Policy{{IdleCount: 2, IdleTime: time.Hour}}}
	e := newEnv(t, fake.Options{}, opts)
	e.reconcile(2)
	a := e.acquire("a")
	e.s.cancel()
	opts.LostJobsGrace = 10 * time.Second
	e.start(opts)
	e.reconcile(2)
	st, _ := e.s.Explain(a.InstanceID())
	if st.Removing {
		t.Fatalf("instance removed before the grace: %+v", st)
	}
	if b := e.acquire("b"); b.InstanceID() == a.InstanceID() {
		t.Fatal("a job was given to the instance of a lost job")
	}
	e.clk.Advance(11 * time.Second)
	e.reconcile(1)
	if st, _ := e.s.Explain(a.InstanceID()); !st.Removing || !strings.Contains(st.RemoveReason, "lost with their runner manager") {
		t.Fatalf("instance of a lost job not removed after the grace: %+v", st)
	}
}
