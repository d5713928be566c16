package visibility

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

func TestTracker(t *testing.T) {
	var tr Tracker
	tr.Listed([]string{"a", "b", "c"})
	found := map[string]bool{"a": true, "c": true}
	tr.Check(context.Background(), []string{"a", "b", "c"}, func(_ context.Context, id string) error {
		if !found[id] {
			return errors.New("not found")
		}
		return nil
	})
	for _, c := range []struct {
		id              string
		member, visible bool
	}{{"a", true, true}, {"b", true, false}, {"c", true, true}, {"d", false, false}} {
		if tr.Member(c.id) != c.member || tr.Visible(c.id) != c.visible {
			t.Errorf("%s: member %v visible %v, want %v %v", c.id, tr.Member(c.id), tr.Visible(c.id), c.member, c.visible)
		}
	}
	// An instance that leaves the listing is forgotten: listed again (a reused name),
	// it must be shown by a lookup again.
	tr.Listed([]string{"b"})
	tr.Listed([]string{"a", "b"})
	if tr.Visible("a") || tr.Member("c") {
		t.Errorf("after a listing without them: a visible %v, c member %v", tr.Visible("a"), tr.Member("c"))
	}
}

func TestCheckIsBounded(t *testing.T) {
	var tr Tracker
	var ids []string
	for i := range 3 * ChecksPerCall {
		ids = append(ids, fmt.Sprint("vm-", i))
	}
	tr.Listed(ids)
	var mu sync.Mutex
	looked := map[string]int{}
	var running, most atomic.Int32
	tr.Check(context.Background(), ids, func(_ context.Context, id string) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		mu.Lock()
		looked[id]++
		mu.Unlock()
		return nil
	})
	if len(looked) != ChecksPerCall {
		t.Errorf("looked up %d instances in one Check, want %d", len(looked), ChecksPerCall)
	}
	if most.Load() > Workers {
		t.Errorf("%d lookups at once, want at most %d", most.Load(), Workers)
	}
	for id, n := range looked {
		if n != 1 || !tr.Visible(id) {
			t.Errorf("%s looked up %d times, visible %v", id, n, tr.Visible(id))
		}
	}
}
