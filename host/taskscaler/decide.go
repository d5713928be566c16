package taskscaler

// The scaling decision: slots by state, the active policy's idle target, the
// instances wanted, and the scale-up that creates them.

import (
	"fmt"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
)

// counts are the inputs of a scaling decision.
type counts struct {
	tasks    TaskCounts
	inst     InstanceCounts
	policy   compiledPolicy
	current  int // instances that will serve: creating, booting, ready, restoring + requested
	total    int // every instance not gone, including removing and unvouched, + requested
	target   int // idle target in slots
	why      Target
	required int
	desired  int
}

// TaskCounts are the slot states of fleeting_taskscaler_tasks.
type TaskCounts struct {
	Idle        int `json:"idle"`
	Pending     int `json:"pending"`
	Reserved    int `json:"reserved"`
	Acquired    int `json:"acquired"`
	Unavailable int `json:"unavailable"`
	Unhealthy   int `json:"unhealthy"`
	// Unready counts slots on instances requested, creating or booting.
	Unready int `json:"unready"`
}

// InstanceCounts are the instance states of fleeting_provisioner_instances.
type InstanceCounts struct {
	Requested int `json:"requested"`
	Creating  int `json:"creating"`
	Booting   int `json:"booting"`
	Running   int `json:"running"`
	Deleting  int `json:"deleting"`
	Unvouched int `json:"unvouched"`
	// Unconfirmed counts instances requested by a previous run of the host that have
	// not appeared: not counted as capacity, adopted as created if they appear.
	Unconfirmed int `json:"unconfirmed"`
}

func (s *Scaler) countLocked(now time.Time) counts {
	s.demand.advance(now)
	c := counts{policy: activePolicy(s.policies, now)}
	capa, maxUse := s.opts.CapacityPerInstance, s.opts.MaxUseCount
	c.inst.Requested, c.inst.Unconfirmed = s.requested, s.unconfirmed
	// Sums saturate: a huge idle_count or capacity must not wrap around to "nothing".
	c.tasks.Unready = satMul(s.requested, capa)
	for _, in := range s.instances {
		c.tasks.Acquired += in.InFlight
		switch in.phase {
		case phaseRestoring, phaseCreating:
			c.inst.Creating++
			c.tasks.Unready = satAdd(c.tasks.Unready, capa)
			c.current++
		case phaseBooting:
			c.inst.Booting++
			c.tasks.Unready = satAdd(c.tasks.Unready, capa-in.busy())
			c.current++
		case phaseReady:
			c.inst.Running++
			c.current++
			free := capa - in.busy()
			switch {
			case in.unhealthy:
				c.tasks.Unhealthy = satAdd(c.tasks.Unhealthy, free)
			default:
				u := in.usable(capa, maxUse)
				c.tasks.Idle = satAdd(c.tasks.Idle, u)
				if in.InFlight > 0 {
					c.tasks.Unavailable = satAdd(c.tasks.Unavailable, free-u)
				}
			}
		case phaseRemoving:
			c.inst.Deleting++
		case phaseUnvouched:
			c.inst.Unvouched++
		}
	}
	c.tasks.Reserved = len(s.reservations)
	c.tasks.Pending = len(s.waiters)
	c.current = satAdd(c.current, s.requested)
	c.total = satAdd(len(s.instances), s.requested)

	c.why = c.policy.IdleTarget(Snapshot{Now: now, Tasks: c.tasks, CapacityPerInstance: capa, MaxUseCount: maxUse, Demand: Demand{d: s.demand, now: now}})
	c.target = max(c.why.Slots, 0)
	need := satAdd(satAdd(satAdd(c.tasks.Acquired, c.tasks.Reserved), satAdd(c.tasks.Pending, c.target)),
		satAdd(c.tasks.Unavailable, c.tasks.Unhealthy))
	c.required = ceilDiv(need, capa)
	c.desired = c.required
	if s.opts.MaxInstances > 0 {
		c.desired = min(c.desired, s.opts.MaxInstances)
	}
	if s.info.MaxSize > 0 {
		c.desired = min(c.desired, s.info.MaxSize)
	}
	return c
}

// maxSlots is the potential capacity: max_instances × capacity (−1 = unbounded).
func (s *Scaler) maxSlots() int {
	limit := -1
	if s.opts.MaxInstances > 0 {
		limit = s.opts.MaxInstances
	}
	if s.info.MaxSize > 0 && (limit < 0 || s.info.MaxSize < limit) {
		limit = s.info.MaxSize
	}
	if limit < 0 {
		return -1
	}
	return satMul(limit, s.opts.CapacityPerInstance)
}

// Decision is one scaling decision with its inputs, kept for Status.
type Decision struct {
	Time    time.Time  `json:"time"`
	Trigger string     `json:"trigger"`
	Policy  int        `json:"policy"`
	Tasks   TaskCounts `json:"tasks"`
	// IdleTarget is the active policy's idle slots: idle_count raised by
	// scale_factor, or a forecast; IdleWhy says how it was reached.
	IdleTarget          int       `json:"idle_target"`
	IdleWhy             string    `json:"idle_why"`
	Forecast            *Forecast `json:"forecast,omitempty"`
	IdleCount           int       `json:"idle_count"`
	ScaleFactor         float64   `json:"scale_factor"`
	ScaleFactorLimit    int       `json:"scale_factor_limit"`
	CapacityPerInstance int       `json:"capacity_per_instance"`
	MaxInstances        int       `json:"max_instances"`
	ProviderMaxSize     int       `json:"provider_max_size"`
	// Required is instances needed before limits; Desired after max_instances and the
	// provider's max size; Current counts creating, booting, ready and requested.
	Required int `json:"required"`
	Desired  int `json:"desired"`
	Current  int `json:"current"`
	// Wanted is how many instances the decision wanted to create, Requested how many
	// it asked Increase for, Accepted how many the plugin accepted.
	Wanted    int `json:"wanted"`
	Requested int `json:"requested"`
	Accepted  int `json:"accepted"`
	// Reason explains the outcome, in particular why fewer instances than wanted (or
	// none) were requested.
	Reason string `json:"reason"`
	Error  string `json:"error,omitempty"`
}

// decideLocked computes how many instances to request now, consuming throttle tokens.
func (s *Scaler) decideLocked(now time.Time, trigger string) Decision {
	c := s.countLocked(now)
	d := Decision{Time: now, Trigger: trigger, Policy: c.policy.index, Tasks: c.tasks, IdleTarget: c.target, IdleWhy: c.why.Why, Forecast: c.why.Forecast,
		IdleCount: c.policy.settings.IdleCount, ScaleFactor: c.policy.settings.ScaleFactor, ScaleFactorLimit: c.policy.settings.ScaleFactorLimit,
		CapacityPerInstance: s.opts.CapacityPerInstance, MaxInstances: s.opts.MaxInstances, ProviderMaxSize: s.info.MaxSize,
		Required: c.required, Desired: c.desired, Current: c.current}
	d.Wanted = max(c.required-c.current, 0)
	n := max(c.desired-c.current, 0)
	var why []string
	if n < d.Wanted {
		if s.opts.MaxInstances > 0 && c.desired == s.opts.MaxInstances {
			why = append(why, fmt.Sprintf("max_instances %d reached: %d instances required", s.opts.MaxInstances, c.required))
		} else {
			why = append(why, fmt.Sprintf("provider max size %d reached: %d instances required", s.info.MaxSize, c.required))
		}
	}
	// max_instances counts instances in any state, deleting ones included.
	if s.opts.MaxInstances > 0 {
		if room := s.opts.MaxInstances - c.total; room < n {
			n = max(room, 0)
			why = append(why, fmt.Sprintf("max_instances %d reached counting %d instances in any state (deleting included)", s.opts.MaxInstances, c.total))
		}
	}
	if s.info.MaxSize > 0 {
		if room := s.info.MaxSize - c.total; room < n {
			n = max(room, 0)
			why = append(why, fmt.Sprintf("provider max size %d reached", s.info.MaxSize))
		}
	}
	if n > 0 {
		if allow, reason := s.breaker.allowance(now); allow >= 0 {
			inflight := c.inst.Requested + c.inst.Creating + c.inst.Booting
			if allow == 0 || inflight > 0 {
				n = 0
			} else {
				n = min(n, allow)
			}
			why = append(why, reason)
		}
	}
	s.throttled = false
	if n > 0 {
		if tok := s.bucket.available(now); tok < n {
			s.throttled = true
			n = tok
			why = append(why, fmt.Sprintf("scale_throttle: %d tokens available (limit %d/s, burst %d)", tok, s.opts.ScaleThrottle.Limit, s.opts.ScaleThrottle.Burst))
		}
		s.bucket.take(n)
	}
	d.Requested = n
	switch {
	case d.Wanted == 0 && c.required > 0:
		d.Reason = fmt.Sprintf("enough capacity: %d instances (ready, booting, creating or requested) for %d required", c.current, c.required)
		if p := s.pendingSummaryLocked(now); p != "" {
			d.Reason += "; " + p
		}
	case d.Wanted == 0:
		d.Reason = "no demand and no idle target"
	case n == d.Wanted:
		d.Reason = fmt.Sprintf("requesting %d instances: %d required, %d present", n, c.required, c.current)
	default:
		d.Reason = fmt.Sprintf("requesting %d of %d wanted: %s", n, d.Wanted, joinReasons(why))
	}
	return d
}

func joinReasons(r []string) string {
	out := ""
	for i, x := range r {
		if i > 0 {
			out += "; "
		}
		out += x
	}
	return out
}

// scaleUp decides and, if needed, calls Increase. Concurrent triggers coalesce: one
// caller runs the decision loop while others only ask it to look again.
func (s *Scaler) scaleUp(trigger string) {
	if s.ctx.Err() != nil {
		return
	}
	if !s.provMu.TryLock() {
		s.rescan.Store(true)
		return
	}
	defer s.provMu.Unlock()
	for {
		s.rescan.Store(false)
		now := s.clock.Now()
		s.mu.Lock()
		d := s.decideLocked(now, trigger)
		n := d.Requested
		var intentID string
		if n > 0 {
			// The intent is durable before the call: a crash after Increase leaves an
			// intent that the next scaler uses to adopt what appears. If it cannot be
			// recorded, nothing is created: an unrecorded instance could leak.
			// A burst of scale-ups within intentMergeWindow shares one intent, so that
			// the record (rewritten whole on every flush) stays small.
			if last := len(s.intents) - 1; last >= 0 && s.intents[last].Run == s.run && now.Sub(s.intents[last].At) < intentMergeWindow {
				intentID = s.intents[last].ID
				s.intents[last].Count = satAdd(s.intents[last].Count, n)
			} else {
				s.intentSeq++
				intentID = fmt.Sprintf("%s/%d", s.run, s.intentSeq)
				why := fmt.Sprintf("requested by a scale-up at %s (trigger %s): %s", d.Time.UTC().Format(time.RFC3339), d.Trigger, d.Reason)
				s.intents = append(s.intents, state.Intent{ID: intentID, Run: s.run, Count: n, At: now, Why: why})
			}
			s.requested = satAdd(s.requested, n)
			s.intentsDirty = true
			if err := s.flushLocked(); err != nil {
				s.settleIntentLocked(intentID, n)
				d.Requested, n = 0, 0
				d.Reason = "nothing requested: the intent to create could not be recorded: " + err.Error()
			}
		}
		switch {
		case n > 0:
			s.lastDecision = d // recorded in full, with what was accepted, after Increase
		case d.Wanted > 0 || trigger != "update":
			s.recordDecisionLocked(d)
		}
		s.mu.Unlock()
		if n > 0 {
			s.log.Info("required scaling change", "trigger", d.Trigger, "instance_count", d.Current, "max_instance_count", s.opts.MaxInstances,
				"acquired", d.Tasks.Acquired, "unavailable_capacity", d.Tasks.Unavailable, "pending", d.Tasks.Pending,
				"reserved", d.Tasks.Reserved, "idle_count", d.IdleCount, "scale_factor", d.ScaleFactor,
				"scale_factor_limit", d.ScaleFactorLimit, "capacity_per_instance", d.CapacityPerInstance, "required", d.Required, "increase", n,
				"idle_target", d.IdleTarget, "idle_why", d.IdleWhy)
			s.m.ScaleOperation("up")
			ictx, cancel := s.opCtx()
			accepted, err := s.group.Increase(ictx, n)
			cancel()
			now = s.clock.Now()
			s.mu.Lock()
			accepted = min(max(accepted, 0), n)
			s.settleIntentLocked(intentID, n-accepted)
			d.Accepted = accepted
			for range accepted {
				s.m.InstanceOperation("create")
			}
			if err != nil {
				err = stepErr("increase", "", err)
				s.m.InternalOperation("increase_failure")
				for range n - accepted {
					s.m.InstanceOperation("create_failure")
				}
				d.Error = err.Error()
				d.Reason += fmt.Sprintf("; plugin accepted %d: %v", accepted, err)
				s.breaker.failure(now, fmt.Sprintf("increase by %d: %v", n, err))
				s.log.Warn("increase", "requested", n, "accepted", accepted, "err", err)
			} else {
				s.m.InternalOperation("increase")
			}
			s.recordDecisionLocked(d)
			s.flushLocked()
			s.mu.Unlock()
			s.kick()
			if err != nil {
				return
			}
		}
		if !s.rescan.Load() {
			return
		}
	}
}

func (s *Scaler) recordDecisionLocked(d Decision) {
	s.lastDecision = d
	if d.Wanted > 0 && d.Accepted < d.Wanted {
		dd := d
		s.lastNoCreate = &dd
	}
}
