// Package visibility tracks which instances of a cloud group the cloud's own lookups
// show yet. Clouds are eventually consistent: a group's listing (a managed instance
// group's, a scale set's, an Auto Scaling group's) can show a new VM running before
// the lookup of that VM (instances.get, the VM's network interface,
// DescribeInstances) finds it. A plugin reports such a VM as creating until a lookup
// has shown it once, and answers a lookup that does not find a listed VM with "not
// ready yet" instead of "not found": the host would otherwise connect to it, fail its
// checks, and replace it, over and over.
package visibility

import (
	"context"
	"sync"

	"golang.org/x/sync/errgroup"
)

// Bounds on Check: each instance costs its lookups once, but after a restart of the
// plugin with a large group the checks spread over several listings instead of
// bursting into the cloud's read limits.
const (
	// ChecksPerCall is the most instances one Check looks up.
	ChecksPerCall = 50
	// Workers is how many lookups one Check runs at once.
	Workers = 8
)

// Tracker holds the members of the group's latest listing and those a lookup has
// shown. The zero value is ready to use; it is safe for concurrent use.
type Tracker struct {
	mu      sync.Mutex
	members map[string]bool
	visible map[string]bool
}

// Listed records the group's latest listing. Instances no longer listed are
// forgotten, so the sets stay as small as the group.
func (t *Tracker) Listed(ids []string) {
	members := make(map[string]bool, len(ids))
	for _, id := range ids {
		members[id] = true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.members = members
	for id := range t.visible {
		if !members[id] {
			delete(t.visible, id)
		}
	}
}

// Forget drops ids from the members (the plugin deleted them), before the next
// listing says so.
func (t *Tracker) Forget(ids []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		delete(t.members, id)
		delete(t.visible, id)
	}
}

// Member reports whether the latest listing has id.
func (t *Tracker) Member(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.members[id]
}

// Visible reports whether a lookup has shown id since it was first listed.
func (t *Tracker) Visible(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.visible[id]
}

// Check looks up the first ChecksPerCall of ids, Workers at a time, and marks visible
// those whose lookup returns nil. A lookup that fails is not retried here: the next
// listing's Check repeats it, so lookup should not retry either. Check returns when
// every lookup it started has returned.
func (t *Tracker) Check(ctx context.Context, ids []string, lookup func(ctx context.Context, id string) error) {
	ids = ids[:min(len(ids), ChecksPerCall)]
	var eg errgroup.Group
	eg.SetLimit(Workers)
	for _, id := range ids {
		eg.Go(func() error {
			if lookup(ctx, id) != nil {
				return nil // not yet: the next listing's Check asks again
			}
			t.mu.Lock()
			defer t.mu.Unlock()
			if t.visible == nil {
				t.visible = map[string]bool{}
			}
			t.visible[id] = true
			return nil
		})
	}
	_ = eg.Wait()
}
