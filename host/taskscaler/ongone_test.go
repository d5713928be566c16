package taskscaler

import (
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// TestOnGoneReportsForgottenInstances: the host learns of every instance the scaler
// forgets, removed by the scaler or vanished from the group, so it can close the
// instance's connection.
func TestOnGoneReportsForgottenInstances(t *testing.T) {
	gone := make(chan string, 4)
	e := newEnv(t, fake.Options{}, Options{OnGone: func(id string) { gone <- id },
		Policies: []Policy{{IdleCount: 2, IdleTime: time.Minute}}})
	e.reconcile(3)
	ids := e.live()
	if len(ids) != 2 {
		t.Fatalf("live = %v, want 2 idle instances", ids)
	}
	// One vanishes from the cloud; the other is deleted after the policy drops to zero.
	e.g.RemoveInstance(ids[0])
	e.reconcile(1)
	select {
	case id := <-gone:
		if id != ids[0] {
			t.Fatalf("OnGone(%s), want %s", id, ids[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnGone not called for a vanished instance")
	}
	if err := e.s.ConfigureSchedule([]Policy{{IdleCount: 0, IdleTime: time.Minute}}); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		e.clk.Advance(2 * time.Minute)
		e.reconcile(2)
	}
	if st, ok := e.g.Instances()[ids[1]]; ok && st != provider.StateDeleted {
		// the fake deletes at once on Decrease; a still-listed instance means no removal
		t.Fatalf("instance %s still %s", ids[1], st)
	}
	select {
	case <-gone: // the idle instance the scaler removed (or its replacement)
	case <-time.After(5 * time.Second):
		t.Fatal("OnGone not called for a removed instance")
	}
}
