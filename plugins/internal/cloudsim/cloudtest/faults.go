package cloudtest

import (
	"context"
	"testing"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Fault is one cloud API failure that the plugin must survive without losing track of
// an instance or deleting one it was not asked to.
type Fault struct {
	Name string
	// Op is the failing operation, as the fake names it; Err what it answers.
	Op  string
	Err *cloudsim.Error
	// Inject, if set, replaces the default injection (Cloud.Inject(Op, -1, Err)), e.g. to
	// fail an operation after it was accepted; Clear then undoes it.
	Inject func()
	Clear  func()
	// Listing, Decrease and Increase say which plugin calls must fail with an error
	// (and report nothing or succeed with nothing); the others must work.
	Listing, Decrease, Increase bool
	// MinCalls and MaxCalls bound how often Op was called (retries); 0 means unchecked.
	MinCalls, MaxCalls int
	// VictimMayGo: the Decrease failed after the cloud may have acted (a wait that
	// failed), so the instance asked for may be gone.
	VictimMayGo bool
	// Check, if set, checks what Increase returned.
	Check func(t *testing.T, n int, err error)
}

// Faults runs each fault against a fresh group of four instances from setup and checks
// that listings fail rather than report instances gone, that failed calls say so, and
// that after the fault clears every instance is still there (but the one asked for)
// and nothing was deleted by anyone but the plugin (termReason).
func Faults(t *testing.T, setup func(t *testing.T) (provider.InstanceGroup, *cloudsim.Cloud), termReason string, faults []Fault) {
	for _, f := range faults {
		t.Run(f.Name, func(t *testing.T) {
			g, cloud := setup(t)
			ctx := context.Background()
			if _, err := g.Increase(ctx, 4); err != nil {
				t.Fatal(err)
			}
			before := List(t, g)
			cloud.ResetCalls()
			if f.Inject != nil {
				f.Inject()
			} else {
				cloud.Inject(f.Op, -1, f.Err)
			}

			var seen []string
			uerr := g.Update(ctx, func(id string, _ provider.State) { seen = append(seen, id) })
			if f.Listing && (uerr == nil || len(seen) != 0) {
				t.Errorf("Update with a failing %s = %v after reporting %v; want an error and nothing reported", f.Op, uerr, seen)
			}
			if !f.Listing && (uerr != nil || len(seen) != 4) {
				t.Errorf("Update = %v with %d instances, want all 4", uerr, len(seen))
			}
			victim := IDs(before)[0]
			done, derr := g.Decrease(ctx, []string{victim})
			if f.Decrease && (derr == nil || len(done) != 0) {
				t.Errorf("Decrease with a failing %s = %v, %v; want nothing done and an error", f.Op, done, derr)
			}
			n, ierr := g.Increase(ctx, 1)
			if f.Increase && (n != 0 || ierr == nil) {
				t.Errorf("Increase with a failing %s = %d, %v; want 0 and an error", f.Op, n, ierr)
			}
			if f.Check != nil {
				f.Check(t, n, ierr)
			}
			if calls := cloud.Calls()[f.Op]; (f.MinCalls > 0 && calls < f.MinCalls) || (f.MaxCalls > 0 && calls > f.MaxCalls) {
				t.Errorf("%s called %d times, want %d..%d (retries)", f.Op, calls, f.MinCalls, f.MaxCalls)
			}

			cloud.ClearFaults()
			if f.Clear != nil {
				f.Clear()
			}
			after := List(t, g)
			for id := range before {
				mayBeGone := id == victim && (derr == nil || f.VictimMayGo)
				if _, ok := after[id]; !ok && !mayBeGone {
					t.Errorf("instance %s was lost", id)
				}
			}
			for _, vm := range cloud.AllVMs() {
				if vm.TermReason != "" && vm.TermReason != termReason {
					t.Errorf("VM %s deleted by %q, not by the plugin", vm.ID, vm.TermReason)
				}
			}
			if err := cloud.Check(); err != nil {
				t.Error(err)
			}
		})
	}
}
