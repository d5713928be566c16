package cloudtest

import (
	"context"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Lifecycle boots and stops, in the clouds' lifecycle tests.
const (
	LifecycleBoot = 40 * time.Second
	LifecycleStop = 20 * time.Second
)

// LifecycleCloud is a simulated cloud with fixed LifecycleBoot and LifecycleStop.
func LifecycleCloud() (cloudsim.Options, *cloudsim.VirtualClock) {
	clock := cloudsim.NewVirtualClock(RampStart)
	return cloudsim.Options{Clock: clock, BootDelay: cloudsim.Fixed(LifecycleBoot), StopDelay: cloudsim.Fixed(LifecycleStop)}, clock
}

// List returns what one Update reports.
func List(t testing.TB, g provider.InstanceGroup) map[string]provider.State {
	t.Helper()
	out := map[string]provider.State{}
	if err := g.Update(context.Background(), func(id string, s provider.State) { out[id] = s }); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return out
}

// IDs returns the sorted IDs of a listing.
func IDs(m map[string]provider.State) []string {
	out := make([]string, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// CheckLifecycle follows three instances the caller just requested (on a
// LifecycleCloud) through the states the host relies on: creating until booted, then
// running; one decreased instance deleting until stopped, then gone, the other two
// untouched. It returns the two that remain.
func CheckLifecycle(t *testing.T, g provider.InstanceGroup, clock *cloudsim.VirtualClock, cloud *cloudsim.Cloud) []string {
	t.Helper()
	steps := []struct {
		advance time.Duration
		want    provider.State
	}{
		{0, provider.StateCreating},
		{LifecycleBoot - time.Second, provider.StateCreating},
		{time.Second, provider.StateRunning},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		got := List(t, g)
		if len(got) != 3 {
			t.Fatalf("after %v: %d instances, want 3", s.advance, len(got))
		}
		for id, st := range got {
			if st != s.want {
				t.Errorf("after +%v: %s is %s, want %s", s.advance, id, st, s.want)
			}
		}
	}
	all := IDs(List(t, g))
	done, err := g.Decrease(context.Background(), all[:1])
	if err != nil || !slices.Equal(done, all[:1]) {
		t.Fatalf("Decrease = %v, %v", done, err)
	}
	if st := List(t, g)[all[0]]; st != provider.StateDeleting {
		t.Errorf("deleting instance is %s, want deleting", st)
	}
	clock.Advance(LifecycleStop)
	got := List(t, g)
	if _, ok := got[all[0]]; ok || len(got) != 2 {
		t.Errorf("after deletion: %v, want the other two only", got)
	}
	if err := cloud.Check(); err != nil {
		t.Error(err)
	}
	return all[1:]
}
