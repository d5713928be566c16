package taskscaler

// The plugin's view applied to the pool: Update results, creation intents, state
// transitions of each instance, and instances that vanish.

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

type observed struct {
	id    string
	state provider.State
}

// Reconcile runs one cycle: Update, apply what it reports, health checks, removals,
// deletion retries, scale-up, and gauges. A failed Update changes nothing: cloud
// errors are not deaths.
func (s *Scaler) Reconcile(ctx context.Context) error {
	if s.ctx.Err() != nil {
		return ErrShutdown
	}
	s.mu.Lock()
	seen := make([]observed, 0, len(s.instances)+8)
	s.mu.Unlock()
	uctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
	err := s.group.Update(uctx, func(id string, st provider.State) { seen = append(seen, observed{id, st}) })
	cancel()
	now := s.clock.Now()
	if err != nil {
		err = stepErr("update", "", err)
		s.m.InternalOperation("update_failure")
		s.m.MissedUpdate()
		s.mu.Lock()
		if s.updFailures == 0 {
			s.updFailingSince = now
		}
		s.updFailures++
		s.updErr = err
		s.nextUpdate = now.Add(backoff(s.updFailures, updateBackoffMin, updateBackoffMax))
		s.lastUpdErr = fmt.Sprintf("%s: %v", now.UTC().Format(time.RFC3339), err)
		s.publishLocked(now)
		s.mu.Unlock()
		return fmt.Errorf("instance group %s: %w", s.info.ID, err)
	}
	s.m.InternalOperation("update")

	s.mu.Lock()
	if s.updFailures > 0 {
		s.log.Info("plugin Update works again", "failures", s.updFailures, "failing_for", now.Sub(s.updFailingSince))
	}
	s.updFailures, s.updErr, s.nextUpdate = 0, nil, time.Time{}
	s.lastUpdate, s.lastUpdErr = now, ""
	s.applyLocked(now, seen)
	hb, probe := s.heartbeatDueLocked(now)
	s.mu.Unlock()

	s.runHeartbeats(ctx, hb, probe)
	s.runReadyQueue()

	s.mu.Lock()
	ids := s.planRemovalsLocked(s.clock.Now())
	s.mu.Unlock()
	s.decrease(ctx, ids)
	s.scaleUp("update")

	s.mu.Lock()
	s.publishLocked(s.clock.Now())
	s.flushLocked()
	s.mu.Unlock()
	return nil
}

// applyLocked folds one Update listing into the inventory.
func (s *Scaler) applyLocked(now time.Time, seen []observed) {
	// A generation number marks the listed instances without allocating a set.
	s.gen++
	for _, o := range seen {
		in, ok := s.instances[o.id]
		if !ok {
			s.discoverLocked(now, o)
			if in, ok = s.instances[o.id]; ok {
				in.gen = s.gen
			}
			continue
		}
		in.gen = s.gen
		s.transitionLocked(now, in, o.state)
	}
	for _, in := range s.instances {
		if in.gen == s.gen {
			continue
		}
		switch in.phase {
		case phaseRestoring:
			in.event(now, "gone", "not in the group after restart: deleted while the host was down")
			s.forgetLocked(now, in, "gone while the host was down")
		case phaseUnvouched:
			in.event(now, "gone", "disappeared before its grace period ended")
			s.forgetLocked(now, in, "not ours; disappeared")
		case phaseRemoving:
			s.m.InstanceOperation("delete")
			if !in.decreasedAt.IsZero() {
				s.m.ObserveInstance("deletion", now.Sub(in.decreasedAt))
			}
			in.event(now, "gone", "deleted: "+in.RemoveReason)
			s.forgetLocked(now, in, in.RemoveReason)
		default:
			s.unexpectedLocked(now, in, "no longer listed by the plugin")
		}
	}
	s.expireIntentsLocked(now)
	// Only the first listing after a lost inventory shows the lost records' instances;
	// any later stranger keeps the grace period.
	s.inventoryLost = false
}

// expireIntentsLocked writes off intents older than pending_creation_timeout, each by
// its own time. This run's count as a provisioning failure; a previous run's do not,
// since its process may have died before Increase reached the cloud.
func (s *Scaler) expireIntentsLocked(now time.Time) {
	kept := s.intents[:0]
	for _, it := range s.intents {
		if now.Sub(it.At) < s.opts.PendingCreationTimeout {
			kept = append(kept, it)
			continue
		}
		s.intentsDirty = true
		if it.Run == s.run {
			s.requested -= it.Count
			s.log.Warn("pending creations expired", "count", it.Count, "requested_at", it.At)
			s.breaker.failure(now, fmt.Sprintf("%d requested instances did not appear within %s", it.Count, s.opts.PendingCreationTimeout))
			continue
		}
		s.unconfirmed -= it.Count
		s.log.Info("pending creations of a previous run written off", "count", it.Count, "requested_at", it.At, "run", it.Run)
	}
	clear(s.intents[len(kept):])
	s.intents = kept
}

// claimIntentLocked takes one instance from the recorded intents for an instance that
// appeared without a record. This run's intents go first: their Increase is known to
// have been made. Then previous runs', oldest first.
func (s *Scaler) claimIntentLocked() (state.Intent, bool) {
	if len(s.intents) == 0 {
		return state.Intent{}, false
	}
	i := slices.IndexFunc(s.intents, func(it state.Intent) bool { return it.Run == s.run })
	if i < 0 {
		i = 0
	}
	it := s.intents[i]
	s.intents[i].Count--
	if it.Run == s.run {
		s.requested--
	} else {
		s.unconfirmed--
	}
	if s.intents[i].Count <= 0 {
		s.intents = slices.Delete(s.intents, i, i+1)
	}
	s.intentsDirty = true
	return it, true
}

// settleIntentLocked lowers intent id by the instances Increase did not accept.
func (s *Scaler) settleIntentLocked(id string, unaccepted int) {
	i := slices.IndexFunc(s.intents, func(it state.Intent) bool { return it.ID == id })
	if i < 0 || unaccepted <= 0 {
		return
	}
	dec := min(unaccepted, s.intents[i].Count)
	s.intents[i].Count -= dec
	s.requested -= dec
	if s.intents[i].Count <= 0 {
		s.intents = slices.Delete(s.intents, i, i+1)
	}
	s.intentsDirty = true
}

// discoverLocked handles an instance the scaler did not know.
func (s *Scaler) discoverLocked(now time.Time, o observed) {
	switch o.state {
	case provider.StateDeleting, provider.StateDeleted, provider.StateTimeout:
		return // on its way out; nothing to own
	}
	in := s.newInstance(o.id, now)
	in.State = o.state
	if it, ok := s.claimIntentLocked(); ok {
		in.Cause = CauseCreated
		why := it.Why
		if it.Run != s.run {
			why = fmt.Sprintf("requested by a previous run (%s) at %s, before a restart (the intent was recorded before Increase): %s",
				runName(it.Run), it.At.UTC().Format(time.RFC3339), it.Why)
		}
		in.event(now, "created", why)
		s.m.ObserveInstance("creation", now.Sub(it.At))
	} else if s.inventoryLost {
		// The lost file was this owner's and held these instances; nothing can vouch
		// for their state (jobs in flight, use count), so they are not served and not
		// kept for a grace period in which they would count against max_instances.
		in.Cause, in.phase = CauseUnknown, phaseUnvouched
		in.event(now, "unvouched", "in the group but not in this scaler's inventory, which was lost: the state file was found corrupt and moved aside")
		s.instances[o.id] = in
		s.log.Warn("instance not in the lost inventory; deleting it", "instance", o.id)
		s.beginRemovalLocked(now, in, "unvouched after the state file was found corrupt: the lost inventory held this owner's instances, and nothing can vouch for their state")
		return
	} else {
		in.Cause, in.phase = CauseUnknown, phaseUnvouched
		in.removeAt = now.Add(s.opts.UnknownInstanceGrace)
		in.event(now, "unvouched", fmt.Sprintf("in the group but not in this scaler's inventory and no creation pending; deleted after %s unless it disappears", s.opts.UnknownInstanceGrace))
		s.instances[o.id] = in
		s.log.Warn("instance not in inventory", "instance", o.id, "grace", s.opts.UnknownInstanceGrace)
		return
	}
	s.instances[o.id] = in
	s.dirty[o.id] = true
	s.enterStateLocked(now, in, o.state)
}

func runName(run string) string {
	if run == "" {
		return "run unknown"
	}
	return "run " + run
}

// enterStateLocked moves a newly confirmed instance into the phase for its state.
func (s *Scaler) enterStateLocked(now time.Time, in *instance, st provider.State) {
	switch st {
	case provider.StateCreating, provider.StateResuming:
		in.phase = phaseCreating
	case provider.StateRunning:
		s.startBootLocked(now, in)
	case provider.StateSuspending, provider.StateSuspended:
		in.phase = phaseCreating
	}
}

func (s *Scaler) startBootLocked(now time.Time, in *instance) {
	in.phase = phaseBooting
	in.runningAt = now
	if in.Cause == CauseCreated && !in.restored {
		s.m.ObserveInstance("is_running", now.Sub(in.CreatedAt))
	}
	in.event(now, "running", "plugin reports running; readiness check started")
	s.readyQueue = append(s.readyQueue, in)
}

// transitionLocked applies a reported state to a known instance.
func (s *Scaler) transitionLocked(now time.Time, in *instance, st provider.State) {
	prev := in.State
	in.State = st
	if prev != st {
		s.dirty[in.ID] = true
	}
	switch in.phase {
	case phaseRestoring:
		switch {
		case in.RemoveReason != "":
			in.setRemoving(in.RemoveReason)
			in.event(now, "removing", "removal was in progress when the host stopped: "+in.RemoveReason)
		case st == provider.StateDeleting || st == provider.StateDeleted:
			in.setRemoving("deleting when the host restarted")
			in.decreasedAt = now
		case st == provider.StateTimeout:
			in.event(now, "timeout", "plugin gave up on the instance")
			s.forgetLocked(now, in, "timeout")
		case in.restoredJobs > 0 && !s.opts.KeepInstanceWithAcquisitions:
			in.Cause = CauseAdopted
			s.beginRemovalLocked(now, in, fmt.Sprintf("pre-existing instance had %d jobs in flight when the host stopped; removing for safety", in.restoredJobs))
		default:
			in.Cause = CauseAdopted
			in.event(now, "adopted", "owned and recorded by this scaler before the restart; kept")
			s.dirty[in.ID] = true
			s.enterStateLocked(now, in, st)
		}
		return
	case phaseUnvouched:
		if st == provider.StateDeleting || st == provider.StateDeleted || st == provider.StateTimeout {
			delete(s.instances, in.ID)
		}
		return
	case phaseRemoving:
		switch st {
		case provider.StateTimeout:
			s.forgetLocked(now, in, in.RemoveReason)
		case provider.StateDeleted:
			s.m.InstanceOperation("delete")
			if !in.decreasedAt.IsZero() {
				s.m.ObserveInstance("deletion", now.Sub(in.decreasedAt))
			}
			in.event(now, "gone", "deleted: "+in.RemoveReason)
			s.forgetLocked(now, in, in.RemoveReason)
		}
		return
	}
	switch st {
	case provider.StateRunning:
		if in.phase == phaseCreating {
			s.startBootLocked(now, in)
		}
	case provider.StateDeleting, provider.StateDeleted:
		s.unexpectedLocked(now, in, "plugin reports "+string(st))
	case provider.StateTimeout:
		if in.phase != phaseReady {
			s.breaker.failure(now, fmt.Sprintf("instance %s timed out before becoming ready", in.ID))
		}
		in.event(now, "timeout", "plugin gave up on the instance; forgotten without Decrease")
		s.cancelAcquisitionsLocked(in)
		s.forgetLocked(now, in, "timeout")
	case provider.StateSuspending, provider.StateSuspended:
		// Suspend is not driven by this scaler yet; treat as not usable.
	}
}

// unexpectedLocked handles an instance that vanished or started deleting without the
// scaler asking: its acquisitions are cancelled, reservations on it become unbound.
func (s *Scaler) unexpectedLocked(now time.Time, in *instance, why string) {
	s.log.Warn("instance unexpectedly removed", "instance", in.ID, "max-use-count", s.opts.MaxUseCount,
		"slots", s.opts.CapacityPerInstance, "used", in.UseCount, "why", why)
	if in.phase == phaseCreating || in.phase == phaseBooting {
		s.breaker.failure(now, fmt.Sprintf("instance %s removed before becoming ready (%s)", in.ID, why))
	}
	in.event(now, "unexpectedly-removed", why)
	s.cancelAcquisitionsLocked(in)
	for _, r := range s.reservations {
		if r.inst == in {
			r.inst = nil
		}
	}
	in.reserved = 0
	if in.State == provider.StateDeleting {
		in.setRemoving("unexpectedly removed: " + why)
		in.decreasedAt = now
		s.dirty[in.ID] = true
		return
	}
	s.forgetLocked(now, in, "unexpectedly removed: "+why)
}

func (s *Scaler) cancelAcquisitionsLocked(in *instance) {
	for key, a := range in.acqs {
		a.cancel(fmt.Errorf("%w: %s", ErrInstanceUnexpectedlyRemoved, in.ID))
		delete(s.acquisitions, key)
		if a.slot >= 0 && a.slot < len(in.slots) && in.slots[a.slot].state == slotAcquired {
			in.slots[a.slot] = slot{}
			in.InFlight--
		}
	}
	clear(in.acqs)
}

func (s *Scaler) forgetLocked(now time.Time, in *instance, reason string) {
	if !in.CreatedAt.IsZero() && in.phase != phaseRestoring {
		s.m.ObserveInstance("life", now.Sub(in.CreatedAt))
	}
	in.phase = phaseGone
	delete(s.instances, in.ID)
	delete(s.dirty, in.ID)
	s.deleted = append(s.deleted, in.ID)
	st := s.instanceStatusLocked(now, in)
	st.RemoveReason = reason
	s.gone = append(s.gone, st)
	if len(s.gone) > 100 {
		s.gone = s.gone[len(s.gone)-100:]
	}
	if s.opts.OnGone != nil {
		go s.opts.OnGone(in.ID)
	}
}
