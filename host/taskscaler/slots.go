package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Acquisition is one job's slot on one instance, from Acquire until Release.
type Acquisition struct {
	s      *Scaler
	key    string
	id     string
	slot   int
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// Key returns the key the acquisition was made with.
func (a *Acquisition) Key() string { return a.key }

// InstanceID returns the instance the slot is on.
func (a *Acquisition) InstanceID() string { return a.id }

// Slot returns the 0-based slot index on the instance; it names the nesting VM slot
// and the slot's cgroup.
func (a *Acquisition) Slot() int { return a.slot }

// ConnectInfo asks the plugin how to reach the instance now (never cached, since an
// address may change across a stop/start).
func (a *Acquisition) ConnectInfo(ctx context.Context) (provider.ConnectInfo, error) {
	ci, err := a.s.group.ConnectInfo(ctx, a.id)
	if err != nil {
		a.s.m.InternalOperation("connect_info_failure")
		return ci, stepErr("connect info", a.id, err)
	}
	a.s.m.InternalOperation("connect_info")
	return ci, nil
}

// Context is cancelled when the acquisition is released or its instance disappears;
// context.Cause tells which (ErrReleased, ErrInstanceUnexpectedlyRemoved).
func (a *Acquisition) Context() context.Context { return a.ctx }

// WithContext returns a child of ctx that is also cancelled, with the same cause, when
// the acquisition's context is; the build uses it so that a vanished instance aborts
// the job and bounds dialing.
func (a *Acquisition) WithContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return LinkContext(ctx, a.ctx)
}

// LinkContext returns a child of ctx that is also cancelled, with src's cause, when
// src is: an acquisition's context passed down to the job it holds the slot for.
func LinkContext(ctx, src context.Context) (context.Context, context.CancelFunc) {
	child, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(src, func() { cancel(context.Cause(src)) })
	return child, func() { stop(); cancel(context.Canceled) }
}

// String formats the counts as GitLab's no-capacity message does:
// "idle:0,acquired:0,unavailable:0,unhealthy:0,unready:1".
func (c TaskCounts) String() string {
	return fmt.Sprintf("idle:%d,acquired:%d,unavailable:%d,unhealthy:%d,unready:%d", c.Idle, c.Acquired, c.Unavailable, c.Unhealthy, c.Unready)
}

func (s *Scaler) reservationThrottling() bool {
	return s.opts.ReservationThrottling == nil || *s.opts.ReservationThrottling
}

// pickLocked returns the ready, healthy instance with a usable slot that is already
// the busiest (packing jobs lets the others go idle and be removed), and the slot.
func (s *Scaler) pickLocked() (*instance, int) {
	var best *instance
	capa, maxUse := s.opts.CapacityPerInstance, s.opts.MaxUseCount
	for _, in := range s.instances {
		if in.phase != phaseReady || in.unhealthy || in.usable(capa, maxUse) == 0 {
			continue
		}
		if best == nil || in.busy() > best.busy() || (in.busy() == best.busy() && in.ID < best.ID) {
			best = in
		}
	}
	if best == nil {
		return nil, -1
	}
	for i, sl := range best.slots {
		if sl.state == slotFree {
			return best, i
		}
	}
	if len(best.slots) < capa {
		return best, len(best.slots) // the next slot, allocated when it is set
	}
	return nil, -1
}

// Reserve promises a slot to key before the runner asks for a job. In preemptive mode
// it succeeds only with an idle, ready slot; otherwise also whenever capacity could be
// created, and then it triggers a scale-up at once. Failure wraps ErrNoCapacity.
func (s *Scaler) Reserve(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.clock.Now()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrShutdown
	}
	if _, dup := s.reservations[key]; dup {
		s.mu.Unlock()
		return fmt.Errorf("reserve %q: already reserved", key)
	}
	c := s.countLocked(now)
	if s.reservationThrottling() && c.tasks.Idle > 0 {
		bound := 0
		for _, r := range s.reservations {
			if r.inst != nil {
				bound++
			}
		}
		if limit, n := max(c.tasks.Idle+bound-s.opts.CapacityPerInstance, 1), len(s.reservations); n >= limit {
			s.mu.Unlock()
			s.m.TaskOperation("reserve_available_capacity_failure")
			return fmt.Errorf("%w: reservation throttled: %d reservations on %d idle slots (%s)", ErrNoCapacity, n, c.tasks.Idle, c.tasks)
		}
	}
	if in, sl := s.pickLocked(); in != nil {
		in.setSlot(sl, slot{state: slotReserved, key: key})
		in.reserved++
		s.reservations[key] = &reservation{key: key, inst: in, slot: sl, at: now}
		s.dirty[in.ID] = true
		s.mu.Unlock()
		s.m.TaskOperation("reserve")
		s.scaleUp("reserve") // an idle slot was consumed: restore the idle target now
		return nil
	}
	if c.policy.Preemptive() {
		s.mu.Unlock()
		s.m.TaskOperation("reserve_available_capacity_failure")
		s.scaleUp("reserve")
		return fmt.Errorf("%w: no immediately available capacity (%s)", ErrNoCapacity, c.tasks)
	}
	if ms := s.maxSlots(); ms >= 0 && c.tasks.Acquired+c.tasks.Reserved+c.tasks.Pending+c.tasks.Unavailable+c.tasks.Unhealthy >= ms {
		s.mu.Unlock()
		s.m.TaskOperation("reserve_iop_capacity_failure")
		return fmt.Errorf("%w: no potential capacity: all %d slots of max_instances × capacity_per_instance are in use (%s)", ErrNoCapacity, ms, c.tasks)
	}
	s.reservations[key] = &reservation{key: key, slot: -1, at: now}
	s.mu.Unlock()
	s.m.TaskOperation("reserve")
	s.scaleUp("reserve")
	return nil
}

// Unreserve gives back a reservation for which no job came.
func (s *Scaler) Unreserve(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.reservations[key]
	if !ok {
		return
	}
	delete(s.reservations, key)
	s.demand.abandoned(s.clock.Now(), key)
	s.m.TaskOperation("unreserve")
	if r.inst != nil {
		s.freeSlotLocked(r.inst, r.slot, slotReserved)
		s.dispatchLocked(s.clock.Now())
	}
}

func (s *Scaler) freeSlotLocked(in *instance, sl int, was slotState) {
	if sl < 0 || in.slotAt(sl).state != was {
		return
	}
	in.slots[sl] = slot{}
	switch was {
	case slotReserved:
		in.reserved--
	case slotAcquired:
		in.InFlight--
	}
	if in.busy() == 0 {
		in.idleSince = s.clock.Now()
	}
	s.dirty[in.ID] = true
}

// takeLocked turns a free or reserved slot into an acquired one and counts a use.
func (s *Scaler) takeLocked(in *instance, sl int, key string) {
	if in.slotAt(sl).state == slotReserved {
		in.reserved--
	}
	in.setSlot(sl, slot{state: slotAcquired, key: key})
	in.InFlight++
	in.UseCount++
	s.dirty[in.ID] = true
	s.demand.served(s.clock.Now(), key)
}

// dispatchLocked hands free slots to waiting Acquire calls, oldest first, then binds
// unbound reservations to what is left, so that idle counts only unpromised slots.
func (s *Scaler) dispatchLocked(now time.Time) {
	for len(s.waiters) > 0 {
		in, sl := s.pickLocked()
		if in == nil {
			return
		}
		w := s.waiters[0]
		s.waiters = s.waiters[1:]
		s.takeLocked(in, sl, w.key)
		w.granted = true
		w.ch <- grant{inst: in, slot: sl}
	}
	var unbound []*reservation
	for _, r := range s.reservations {
		if r.inst == nil {
			unbound = append(unbound, r)
		}
	}
	if len(unbound) == 0 {
		return
	}
	slices.SortFunc(unbound, func(a, b *reservation) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return strings.Compare(a.key, b.key)
	})
	for _, r := range unbound {
		in, sl := s.pickLocked()
		if in == nil {
			return
		}
		in.setSlot(sl, slot{state: slotReserved, key: r.key})
		in.reserved++
		r.inst, r.slot = in, sl
		s.dirty[in.ID] = true
	}
}

// Acquire gives key a slot, blocking (counted as pending) until one is ready, for at
// most instance_acquire_timeout. A bound reservation is used directly. Before the slot
// is handed out the instance gets a Heartbeat (and the probe, if any); a failure
// counts toward failure_threshold and another slot is tried.
func (s *Scaler) Acquire(ctx context.Context, key string) (*Acquisition, error) {
	return s.acquire(ctx, key, true)
}

// TryAcquire is Acquire without waiting: it fails at once, wrapping ErrNoCapacity, when
// no ready slot is free, and then leaves key's unbound reservation in place so that
// its demand keeps counting. A simulator driving virtual time uses it instead of
// parking a goroutine per job.
func (s *Scaler) TryAcquire(ctx context.Context, key string) (*Acquisition, error) {
	return s.acquire(ctx, key, false)
}

func (s *Scaler) acquire(ctx context.Context, key string, wait bool) (*Acquisition, error) {
	timeout := s.opts.InstanceAcquireTimeout
	var timerC <-chan time.Time
	if wait {
		timer := s.clock.NewTimer(timeout)
		defer timer.Stop()
		timerC = timer.C()
	}
	var lastErr error
	var lastErrID string
	for {
		in, sl, w, err := s.claim(key, wait)
		if err != nil {
			s.m.TaskOperation("acquire_failure")
			if !wait {
				s.scaleUp("acquire")
			}
			if errors.Is(err, errNoSlot) {
				err = s.noCapacityError(lastErr, lastErrID)
			}
			return nil, fmt.Errorf("unable to acquire instance: %w", err)
		}
		if w != nil {
			s.scaleUp("acquire")
			select {
			case g, ok := <-w.ch:
				if !ok {
					s.m.TaskOperation("acquire_failure")
					return nil, fmt.Errorf("unable to acquire instance: %w", ErrShutdown)
				}
				in, sl = g.inst, g.slot
			case <-timerC:
				s.abandon(w)
				s.m.TaskOperation("acquire_failure")
				return nil, fmt.Errorf("unable to acquire instance within the configured timeout of %s: %w", timeout, s.noCapacityError(lastErr, lastErrID))
			case <-ctx.Done():
				s.abandon(w)
				s.m.TaskOperation("acquire_failure")
				return nil, fmt.Errorf("unable to acquire instance: %w", context.Cause(ctx))
			}
		}
		herr := s.heartbeat(ctx, in, true)
		now := s.clock.Now()
		s.mu.Lock()
		s.healthResultLocked(now, in, herr)
		if herr != nil || in.phase != phaseReady {
			if cur := in.slotAt(sl); cur.state == slotAcquired && cur.key == key {
				s.freeSlotLocked(in, sl, slotAcquired)
				in.UseCount--
			}
			if herr == nil {
				herr = fmt.Errorf("instance %s left service while being acquired", in.ID)
			}
			lastErr, lastErrID = fmt.Errorf("instance %s: %w", in.ID, herr), in.ID
			s.dispatchLocked(now)
			s.mu.Unlock()
			s.kick()
			if ctx.Err() != nil {
				s.m.TaskOperation("acquire_failure")
				return nil, fmt.Errorf("unable to acquire instance: %w", context.Cause(ctx))
			}
			continue
		}
		actx, cancel := context.WithCancelCause(context.WithoutCancel(s.ctx))
		a := &Acquisition{s: s, key: key, id: in.ID, slot: sl, ctx: actx, cancel: cancel}
		s.acquisitions[key] = a
		in.acqs[key] = a
		in.event(now, "acquired", fmt.Sprintf("slot %d to %s (use %d)", sl, key, in.UseCount))
		s.flushLocked()
		s.mu.Unlock()
		s.m.TaskOperation("acquire")
		s.scaleUp("acquire") // an idle slot was consumed: restore the idle target now
		return a, nil
	}
}

// claim takes key's bound reservation or a free slot, or (when wait is set) registers
// a waiter.
func (s *Scaler) claim(key string, wait bool) (*instance, int, *waiter, error) {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, 0, nil, ErrShutdown
	}
	if _, dup := s.acquisitions[key]; dup {
		return nil, 0, nil, fmt.Errorf("key %q already holds an acquisition", key)
	}
	s.demand.arrive(now, key)
	r, reserved := s.reservations[key]
	if reserved && r.inst != nil {
		delete(s.reservations, key)
		in := r.inst
		if cur := in.slotAt(r.slot); cur.state == slotReserved && cur.key == key {
			if in.phase == phaseReady {
				s.takeLocked(in, r.slot, key)
				return in, r.slot, nil, nil
			}
			s.freeSlotLocked(in, r.slot, slotReserved)
		}
	}
	if in, sl := s.pickLocked(); in != nil {
		if reserved {
			delete(s.reservations, key)
		}
		s.takeLocked(in, sl, key)
		return in, sl, nil, nil
	}
	if !wait {
		// The unbound reservation (if any) stays: its demand keeps counting.
		return nil, 0, nil, errNoSlot
	}
	delete(s.reservations, key)
	w := &waiter{key: key, ch: make(chan grant, 1), at: now}
	s.waiters = append(s.waiters, w)
	return nil, 0, w, nil
}

// abandon removes a waiter that gave up; a slot granted in the meantime goes back.
func (s *Scaler) abandon(w *waiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.demand.abandoned(s.clock.Now(), w.key)
	for i, x := range s.waiters {
		if x == w {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			return
		}
	}
	if w.granted {
		select {
		case g := <-w.ch:
			s.freeSlotLocked(g.inst, g.slot, slotAcquired)
			g.inst.UseCount--
			s.dispatchLocked(s.clock.Now())
		default:
		}
	}
}

// errNoSlot is claim's answer when no slot is ready and the caller does not wait.
var errNoSlot = errors.New("no ready slot")

// noCapacityError says why no slot could be had, most telling first: a plugin whose
// Update keeps failing, then the slot counts, creations still pending, unhealthy
// instances with their last health error (the probe's own words, e.g. a host key
// mismatch), the last health failure seen by this call, and why the last scale-up
// fell short.
func (s *Scaler) noCapacityError(lastErr error, lastErrID string) error {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.countLocked(now)
	err := fmt.Errorf("%w: no immediately available capacity (%s)", ErrNoCapacity, c.tasks)
	var why []string
	if p := s.pendingSummaryLocked(now); p != "" {
		why = append(why, p)
	}
	unhealthy := s.unhealthyReasonsLocked(now, 3)
	why = append(why, unhealthy...)
	if lastErr != nil && !slices.ContainsFunc(unhealthy, func(r string) bool { return strings.HasPrefix(r, "instance "+lastErrID+" ") }) {
		why = append(why, lastErr.Error())
	}
	if s.lastNoCreate != nil {
		why = append(why, "last scale-up: "+s.lastNoCreate.Reason)
	}
	if len(why) > 0 {
		err = fmt.Errorf("%w; %s", err, strings.Join(why, "; "))
	}
	if s.updFailures > 0 {
		err = fmt.Errorf("%s; %w", s.updateFailingLocked(now), err)
	}
	return err
}

// updateFailingLocked describes a run of failed Updates.
func (s *Scaler) updateFailingLocked(now time.Time) string {
	return fmt.Sprintf("the plugin's Update has failed for %s (%d attempts in a row, retried with backoff): %v",
		now.Sub(s.updFailingSince).Round(time.Second), s.updFailures, s.updErr)
}

// unhealthyReasonsLocked describes up to limit unhealthy instances, and booting ones
// whose readiness check failed, by ID.
func (s *Scaler) unhealthyReasonsLocked(now time.Time, limit int) []string {
	var ids []string
	for id, in := range s.instances {
		if (in.unhealthy && in.phase == phaseReady) || (in.readyRetry && in.phase == phaseBooting) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	var out []string
	for i, id := range ids {
		if i == limit {
			out = append(out, fmt.Sprintf("%d more unhealthy instances", len(ids)-limit))
			break
		}
		in := s.instances[id]
		what := "unhealthy (%d of %d consecutive health check failures; next check in %s): %s"
		if in.phase == phaseBooting {
			what = "not ready (%d of %d consecutive readiness check failures; next attempt in %s): %s"
		}
		out = append(out, fmt.Sprintf("instance %s "+what,
			id, in.failures, s.opts.FailureThreshold, max(in.nextCheck.Sub(now), 0).Round(time.Second), in.lastHealthErr))
	}
	return out
}

// Acquisition returns key's acquisition, if it holds one.
func (s *Scaler) Acquisition(key string) (*Acquisition, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.acquisitions[key]
	return a, ok
}

// Release ends key's acquisition: the slot becomes free, and an instance that reached
// max_use_count is removed once its last job is released.
func (s *Scaler) Release(key string) { s.release(key, "") }

// ReleaseLost ends key's acquisition whose job was lost with the process that ran it
// (a runner manager that died): nobody knows what the job left on the instance, so,
// unless keep_instance_with_acquisitions is set, the instance takes no more jobs and
// is removed once its other slots are free. why is recorded in its history.
func (s *Scaler) ReleaseLost(key, why string) { s.release(key, why) }

func (s *Scaler) release(key, lost string) {
	now := s.clock.Now()
	s.mu.Lock()
	a, ok := s.acquisitions[key]
	if !ok {
		s.mu.Unlock()
		return
	}
	delete(s.acquisitions, key)
	a.cancel(ErrReleased)
	in, exists := s.instances[a.id]
	retire := false
	if exists {
		delete(in.acqs, key)
		s.freeSlotLocked(in, a.slot, slotAcquired)
		if lost != "" {
			in.event(now, "released", fmt.Sprintf("slot %d from %s: instance unexpectedly lost: %s", a.slot, key, lost))
			if !s.opts.KeepInstanceWithAcquisitions && in.retire == "" {
				in.retire = "a job's runner manager was lost while the job ran (" + lost + "); removing for safety"
			}
		} else {
			in.event(now, "released", fmt.Sprintf("slot %d from %s", a.slot, key))
		}
		retire = (s.opts.MaxUseCount > 0 && in.UseCount >= s.opts.MaxUseCount || in.retire != "") && in.busy() == 0
		if s.opts.MaxUseCount == 0 || in.UseCount < s.opts.MaxUseCount {
			s.demand.freed(now) // the slot serves another job
		}
		s.dispatchLocked(now)
	}
	s.flushLocked()
	s.mu.Unlock()
	s.m.TaskOperation("release")
	if retire {
		s.kick()
	}
}
