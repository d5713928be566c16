package taskscaler

// Removal: which instances go (idle_time, max_use_count, over the target) and the
// plugin's Decrease for them.

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// beginRemovalLocked marks an instance for deletion; the caller passes its ID to
// decrease. Instances holding reservations or acquisitions are never passed here.
func (s *Scaler) beginRemovalLocked(now time.Time, in *instance, reason string) {
	in.setRemoving(reason)
	in.decreasedAt = time.Time{}
	in.event(now, "removing", reason)
	s.dirty[in.ID] = true
	s.log.Info("removing instance", "instance", in.ID, "reason", reason)
}

// planRemovalsLocked decides which instances to delete now and which deletions to
// retry, and returns their IDs.
func (s *Scaler) planRemovalsLocked(now time.Time) []string {
	var ids []string
	c := s.countLocked(now)
	surplus := c.current - c.required
	var idle []*instance
	for _, in := range s.instances {
		switch in.phase {
		case phaseUnvouched:
			if !now.Before(in.removeAt) {
				s.beginRemovalLocked(now, in, fmt.Sprintf("not in this scaler's inventory after a grace period of %s: cannot vouch for it", s.opts.UnknownInstanceGrace))
			}
		case phaseReady, phaseBooting:
			if in.busy() > 0 {
				continue
			}
			switch {
			case in.retire != "":
				if now.Before(in.retireAt) {
					continue // its lost jobs may still be stopping
				}
				s.beginRemovalLocked(now, in, in.retire)
				surplus--
			case s.opts.MaxUseCount > 0 && in.UseCount >= s.opts.MaxUseCount:
				s.beginRemovalLocked(now, in, fmt.Sprintf("max_use_count %d reached and drained", s.opts.MaxUseCount))
				surplus--
			case in.failures >= s.opts.FailureThreshold:
				s.beginRemovalLocked(now, in, fmt.Sprintf("%d consecutive health check failures (failure_threshold %d): %s", in.failures, s.opts.FailureThreshold, in.lastHealthErr))
				surplus--
			case in.phase == phaseReady && !in.unhealthy && now.Sub(in.idleSince) >= c.policy.IdleTime():
				idle = append(idle, in)
			}
		}
	}
	// Under a forecast policy an instance goes only when it has been idle for
	// idle_time and the pool has had a surplus for as long: a forecast that dips for a
	// moment (between two bursts) must not remove an instance that the next decision
	// would boot again. A fixed target does not move by itself, so GitLab's rule
	// (idle for idle_time and not needed) stays as it is.
	if surplus <= 0 {
		s.surplusSince = time.Time{}
	} else if s.surplusSince.IsZero() {
		s.surplusSince = now
	}
	settled := c.policy.mode() != ModeForecast || now.Sub(s.surplusSince) >= c.policy.IdleTime()
	if surplus > 0 && len(idle) > 0 && settled {
		sort.Slice(idle, func(i, j int) bool {
			if !idle[i].idleSince.Equal(idle[j].idleSince) {
				return idle[i].idleSince.Before(idle[j].idleSince)
			}
			return idle[i].ID < idle[j].ID
		})
		n := min(surplus, len(idle))
		for _, in := range idle[:n] {
			s.beginRemovalLocked(now, in, fmt.Sprintf("idle for %s (idle_time %s) and not needed: %d instances for %d required",
				now.Sub(in.idleSince).Round(time.Second), c.policy.IdleTime(), c.current, c.required))
		}
		s.m.ScaleOperation("down")
	}
	for _, in := range s.instances {
		if in.phase != phaseRemoving || in.busy() > 0 {
			continue
		}
		if in.State == provider.StateDeleting || in.State == provider.StateDeleted {
			if !in.decreasedAt.IsZero() && now.Sub(in.decreasedAt) < s.opts.DeletionRetryInterval {
				continue
			}
			if in.decreasedAt.IsZero() {
				in.decreasedAt = now
			}
			continue
		}
		if in.decreasedAt.IsZero() || now.Sub(in.decreasedAt) >= s.opts.DeletionRetryInterval {
			ids = append(ids, in.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

// decrease calls Decrease for ids; accepted or not, the next attempt waits
// deletion_retry_interval.
func (s *Scaler) decrease(ctx context.Context, ids []string) {
	if len(ids) == 0 {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
	done, err := s.group.Decrease(dctx, ids)
	cancel()
	now := s.clock.Now()
	if err != nil {
		s.m.InternalOperation("decrease_failure")
		s.log.Warn("decrease", "instances", ids, "accepted", done, "err", err)
	} else {
		s.m.InternalOperation("decrease")
	}
	ok := make(map[string]bool, len(done))
	for _, id := range done {
		ok[id] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		in, exists := s.instances[id]
		if !exists {
			continue
		}
		retry := in.decreasedAt.IsZero()
		in.decreasedAt = now
		if ok[id] {
			if !retry {
				in.event(now, "decrease-retried", "still not deleting after deletion_retry_interval")
			} else {
				in.event(now, "decrease", "deletion requested")
			}
		} else {
			s.m.InstanceOperation("delete_failure")
			in.event(now, "decrease-failed", fmt.Sprintf("%v; retried after %s", err, s.opts.DeletionRetryInterval))
		}
	}
}
