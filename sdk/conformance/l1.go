package conformance

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// l1IDs are the L1 clauses, in order.
var l1IDs = []string{"L1.increase", "L1.connect", "L1.heartbeat", "L1.decrease.subset",
	"L1.decrease.unknown", "L1.relaunch", "L1.max-size", "L1.cleanup"}

// maxSizeProbeLimit is the largest MaxSize L1.max-size fills.
const maxSizeProbeLimit = 10

// l1 is the state the L1 clauses share.
type l1 struct {
	sess   *running
	info   provider.ProviderInfo
	before listing // what the group held before the kit created anything
	seen   map[string]bool
	ours   []string // instances created by L1.increase that should still exist
}

// mine returns the IDs in l that the kit created (everything not there before).
func (s *l1) mine(l listing) []string {
	var ids []string
	for id := range l {
		if _, old := s.before[id]; !old && l.present(id) {
			ids = append(ids, id)
			s.seen[id] = true
		}
	}
	slices.Sort(ids)
	return ids
}

func (c *checker) runL1(ctx context.Context) {
	if !c.cfg.L1 {
		c.skipAll("L1 not enabled (Config.L1, or --config for runner plugin check): it creates and deletes instances", l1IDs...)
		return
	}
	s := &l1{seen: map[string]bool{}}
	defer func() {
		if s.sess != nil {
			s.sess.stop()
		}
	}()
	// Cleanup runs whatever happens, with its own time, so that nothing is left behind
	// even when the caller's context is cancelled.
	defer c.clause(context.WithoutCancel(ctx), "L1.cleanup", nil, func(cctx context.Context) outcome { return c.cleanup(cctx, s) })

	c.clause(ctx, "L1.increase", nil, func(ctx context.Context) outcome { return c.increase(ctx, s) })
	created := []string{"L1.increase"}
	c.clause(ctx, "L1.connect", created, func(ctx context.Context) outcome {
		var lines []string
		for _, id := range s.ours {
			cctx, cancel := c.call(ctx)
			info, err := s.sess.ConnectInfo(cctx, id)
			if err == nil && info.ID != "" && info.ID != id {
				err = fmt.Errorf("it names instance %q", info.ID)
			}
			if err == nil {
				err = c.cfg.Dial(cctx, info)
			}
			cancel()
			if err != nil {
				return fail("ConnectInfo(%s): %v", id, err)
			}
			addr, _ := info.Addr(false)
			lines = append(lines, id+" at "+addr)
		}
		return pass("dialled %s", strings.Join(lines, ", "))
	})
	c.clause(ctx, "L1.heartbeat", created, func(ctx context.Context) outcome {
		for _, id := range s.ours {
			cctx, cancel := c.call(ctx)
			err := s.sess.plugin.Heartbeat(cctx, id)
			cancel()
			if errors.Is(err, provider.ErrNotSupported) && !s.info.HasCapability(provider.CapabilityHeartbeat) {
				return skip("the plugin does not implement Heartbeat (a first-generation fleeting plugin): " +
					"the host counts its instances healthy and judges them by connecting")
			}
			if err != nil {
				return fail("Heartbeat(%s) of a running instance: %v", id, err)
			}
		}
		return pass("%d running instances healthy", len(s.ours))
	})
	c.clause(ctx, "L1.decrease.subset", created, func(ctx context.Context) outcome { return c.decreaseSubset(ctx, s) })
	c.clause(ctx, "L1.decrease.unknown", created, func(ctx context.Context) outcome { return c.decreaseUnknown(ctx, s) })
	c.clause(ctx, "L1.relaunch", created, func(ctx context.Context) outcome { return c.relaunch(ctx, s) })
	c.clause(ctx, "L1.max-size", nil, func(ctx context.Context) outcome { return c.maxSize(ctx, s) })
}

// increase starts the L1 plugin and creates the instances the other clauses use.
func (c *checker) increase(ctx context.Context, s *l1) outcome {
	var err error
	if s.sess, err = c.start(ctx, c.cfg.PluginConfig, false); err != nil {
		return fail("start plugin: %v", err)
	}
	if s.info, err = c.init(ctx, s.sess); err != nil {
		return fail("Init: %v", err)
	}
	if s.before, err = c.list(ctx, s.sess); err != nil {
		return fail("%v", err)
	}
	n := 3
	if limit := c.limit(s.info); limit > 0 {
		n = min(n, limit-s.before.count())
	}
	if n < 1 {
		return fail("the group already holds %d instances, its MaxSize: no room to create any", s.before.count())
	}
	cctx, cancel := c.call(ctx)
	got, err := s.sess.Increase(cctx, n)
	cancel()
	if got != n || err != nil {
		return fail("Increase(%d) accepted %d: %v", n, got, err)
	}
	start := time.Now()
	l, err := c.poll(ctx, s.sess, fmt.Sprintf("%d new instances to be running", n), func(l listing) (bool, error) {
		mine := s.mine(l)
		if len(s.seen) > n {
			return false, fmt.Errorf("Increase(%d) produced %d different instance IDs (%s): IDs must be stable", n, len(s.seen), strings.Join(slices.Sorted(maps.Keys(s.seen)), ", "))
		}
		for _, id := range mine {
			switch l[id] {
			case provider.StateCreating, provider.StateRunning:
			default:
				return false, fmt.Errorf("new instance %s is %s while being created", id, l[id])
			}
		}
		return len(mine) == n && allIn(l, mine, provider.StateRunning), nil
	})
	if err != nil {
		return fail("%v", err)
	}
	s.ours = s.mine(l)
	ready := time.Since(start)
	// The same IDs, still running, in the next listings.
	for range 2 {
		next, err := c.list(ctx, s.sess)
		if err != nil {
			return fail("%v", err)
		}
		if mine := s.mine(next); !slices.Equal(mine, s.ours) || !allIn(next, mine, provider.StateRunning) {
			return fail("instance IDs are not stable: one Update listed %s, the next %s", l, next)
		}
	}
	return pass("%d instances running in %s: %s", n, ready.Round(time.Millisecond), strings.Join(s.ours, ", "))
}

func allIn(l listing, ids []string, state provider.State) bool {
	for _, id := range ids {
		if l[id] != state {
			return false
		}
	}
	return true
}

// limit is the size limit L1.max-size checks; 0 means none.
func (c *checker) limit(info provider.ProviderInfo) int {
	if c.cfg.MaxSize > 0 {
		return c.cfg.MaxSize
	}
	return info.MaxSize
}

func (c *checker) decreaseSubset(ctx context.Context, s *l1) outcome {
	if len(s.ours) < 2 {
		return skip("needs two instances; MaxSize left room for %d", len(s.ours))
	}
	victim, rest := s.ours[0], s.ours[1:]
	cctx, cancel := c.call(ctx)
	done, err := s.sess.Decrease(cctx, []string{victim})
	cancel()
	if err != nil || !slices.Equal(done, []string{victim}) {
		return fail("Decrease([%s]) answered %v, %v; want [%s] and no error", victim, done, err, victim)
	}
	check := func(l listing) error {
		for _, id := range rest {
			if l[id] != provider.StateRunning {
				state := "gone"
				if l.present(id) {
					state = string(l[id])
				}
				return fmt.Errorf("Decrease([%s]) also touched %s, which is now %s; last listing: %s", victim, id, state, l)
			}
		}
		return nil
	}
	_, err = c.poll(ctx, s.sess, victim+" to be gone", func(l listing) (bool, error) {
		if err := check(l); err != nil {
			return false, err
		}
		return !l.present(victim), nil
	})
	if err != nil {
		return fail("%v", err)
	}
	// Deletions may be asynchronous: look once more for collateral damage.
	l, err := c.list(ctx, s.sess)
	if err == nil {
		err = check(l)
	}
	if err != nil {
		return fail("%v", err)
	}
	s.ours = rest
	return pass("%s deleted; %s still running", victim, strings.Join(rest, ", "))
}

// refresh drops from s.ours what is no longer running, so that a clause judges only
// what it was given, not the damage an earlier failed clause did.
func (c *checker) refresh(ctx context.Context, s *l1) error {
	l, err := c.list(ctx, s.sess)
	if err != nil {
		return err
	}
	s.ours = slices.DeleteFunc(s.ours, func(id string) bool { return l[id] != provider.StateRunning })
	return nil
}

func (c *checker) decreaseUnknown(ctx context.Context, s *l1) outcome {
	if err := c.refresh(ctx, s); err != nil {
		return fail("%v", err)
	}
	cctx, cancel := c.call(ctx)
	defer cancel()
	done, notFound := s.sess.Decrease(cctx, []string{unknownID})
	if len(done) > 0 || !errors.Is(notFound, provider.ErrNotFound) {
		return fail("Decrease([%s]) answered %v, %v; want no IDs and ErrNotFound", unknownID, done, notFound)
	}
	if done, err := s.sess.Decrease(cctx, nil); len(done) > 0 || err != nil {
		return fail("Decrease([]) answered %v, %v; want nothing and no error", done, err)
	}
	l, err := c.list(ctx, s.sess)
	if err != nil {
		return fail("%v", err)
	}
	for _, id := range s.ours {
		if l[id] != provider.StateRunning {
			return fail("after Decrease of an unknown ID, %s is no longer running; listing: %s", id, l)
		}
	}
	return pass("Decrease([%s]) answered %q; %d instances untouched", unknownID, notFound, len(s.ours))
}

func (c *checker) relaunch(ctx context.Context, s *l1) outcome {
	if err := c.refresh(ctx, s); err != nil {
		return fail("%v", err)
	}
	s.sess.stop()
	var err error
	if s.sess, err = c.start(ctx, c.cfg.PluginConfig, false); err != nil {
		s.sess = nil
		return fail("launch the plugin again: %v", err)
	}
	info, err := c.init(ctx, s.sess)
	if err != nil {
		return fail("Init after relaunch: %v", err)
	}
	if info.ID != s.info.ID {
		return fail("ProviderInfo.ID changed across launches: %q, then %q (it must be stable)", s.info.ID, info.ID)
	}
	l, err := c.list(ctx, s.sess)
	if err != nil {
		return fail("%v", err)
	}
	var lost []string
	for _, id := range s.ours {
		if !l.present(id) {
			lost = append(lost, id)
		}
	}
	if len(lost) > 0 {
		return fail("after a relaunch the plugin no longer lists %s; listing: %s", strings.Join(lost, ", "), l)
	}
	return pass("the relaunched plugin (ID %q) lists %s", info.ID, strings.Join(s.ours, ", "))
}

func (c *checker) maxSize(ctx context.Context, s *l1) outcome {
	if s.before == nil {
		return skip("needs the initialised plugin of L1.increase")
	}
	limit := c.limit(s.info)
	switch {
	case limit == 0:
		return skip("the plugin reports no MaxSize and Config.MaxSize is 0")
	case limit > maxSizeProbeLimit:
		return skip("MaxSize %d is above %d, too many instances to create for a check; configure the plugin with a small limit and set Config.MaxSize", limit, maxSizeProbeLimit)
	}
	l, err := c.list(ctx, s.sess)
	if err != nil {
		return fail("%v", err)
	}
	room := max(0, limit-l.count())
	ask := room + 1
	known := len(s.mine(l))
	cctx, cancel := c.call(ctx)
	got, err := s.sess.Increase(cctx, ask)
	cancel()
	switch {
	case got > room:
		return fail("with %d of %d instances, Increase(%d) accepted %d: it must accept at most %d", l.count(), limit, ask, got, room)
	case got < ask && !errors.Is(err, provider.ErrCapacity):
		return fail("Increase(%d) accepted %d with %v; the rest must be refused with ErrCapacity", ask, got, err)
	}
	final, err := c.poll(ctx, s.sess, fmt.Sprintf("%d new instances to appear", got), func(l listing) (bool, error) {
		if l.count() > limit {
			return false, fmt.Errorf("the group holds %d instances, above MaxSize %d: %s", l.count(), limit, l)
		}
		return len(s.mine(l)) >= known+got, nil
	})
	if err != nil {
		return fail("%v", err)
	}
	return pass("Increase(%d) at %d of %d accepted %d (%v); the group holds %d", ask, limit-room, limit, got, err, final.count())
}

// cleanup deletes every instance the kit created and waits until none is listed.
func (c *checker) cleanup(ctx context.Context, s *l1) outcome {
	if s.before == nil {
		return skip("no instance was created")
	}
	if s.sess == nil || s.sess.plugin.Exited() {
		var err error
		if s.sess, err = c.start(ctx, c.cfg.PluginConfig, false); err == nil {
			_, err = c.init(ctx, s.sess)
		}
		if err != nil {
			return fail("start a plugin to delete %s: %v", strings.Join(slices.Sorted(maps.Keys(s.seen)), ", "), err)
		}
	}
	asked := map[string]bool{}
	_, err := c.poll(ctx, s.sess, "every created instance to be gone", func(l listing) (bool, error) {
		var todo []string
		for _, id := range s.mine(l) {
			if !asked[id] || l[id] == provider.StateRunning {
				todo = append(todo, id)
			}
		}
		if len(todo) > 0 {
			cctx, cancel := c.call(ctx)
			done, err := s.sess.Decrease(cctx, todo)
			cancel()
			for _, id := range done {
				asked[id] = true
			}
			if err != nil && !errors.Is(err, provider.ErrNotFound) {
				return false, fmt.Errorf("Decrease(%v): %w", todo, err)
			}
		}
		return len(s.mine(l)) == 0, nil
	})
	if err != nil {
		return fail("%v", err)
	}
	return pass("all %d instances created are gone", len(s.seen))
}
