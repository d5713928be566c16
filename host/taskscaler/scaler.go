// Package taskscaler is the scaling engine: it decides how many instances a provider
// group holds, hands job slots on them to executors (Reserve, Acquire, Release), and
// removes instances that are idle too long, used up, unhealthy or not ours. It is pure
// logic over an injected clock.Clock and a provider.InstanceGroup, so the same code
// runs in the host, in deterministic tests and in a simulator.
//
// Scale-up is event-driven: demand that cannot be met calls Increase from the
// Reserve or Acquire that saw it. Scale-down, health checks and bookkeeping happen in
// Reconcile, run every update_interval (update_interval_when_expecting while a change
// is expected) by a background loop, or by the caller in Manual mode.
package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// ErrNoCapacity is returned by Reserve (wrapped, with the slot counts) when no slot
// can be promised now; the runner then requests no job.
var ErrNoCapacity = errors.New("no capacity")

// ErrInstanceUnexpectedlyRemoved is the cause with which an acquisition's context is
// cancelled when its instance disappears without the scaler having removed it.
var ErrInstanceUnexpectedlyRemoved = errors.New("instance unexpectedly removed")

// ErrReleased is the cause with which an acquisition's context is cancelled by Release.
var ErrReleased = errors.New("acquisition released")

// ErrShutdown is returned by calls made after Shutdown.
var ErrShutdown = errors.New("taskscaler shut down")

// Instance causes.
const (
	CauseCreated = "created"
	CauseAdopted = "adopted"
	CauseUnknown = "unknown"
)

type phase int

const (
	phaseRestoring phase = iota // from the store, not yet confirmed by an Update
	phaseCreating               // reported creating
	phaseBooting                // running, readiness not finished
	phaseReady                  // serving slots
	phaseRemoving               // the scaler decided to delete it
	phaseUnvouched              // in the group but not in the inventory
	phaseGone
)

var phaseNames = [...]string{"restoring", "creating", "booting", "ready", "removing", "unvouched", "gone"}

func (p phase) String() string { return phaseNames[p] }

type slotState uint8

const (
	slotFree slotState = iota
	slotReserved
	slotAcquired
)

type slot struct {
	state slotState
	key   string
}

// instance is the scaler's view of one instance: the record it stores (state.Instance,
// kept current: InFlight counts the acquired slots, Removing follows phaseRemoving) and
// what only this process knows.
type instance struct {
	state.Instance
	gen      uint64 // Update generation in which the instance was last listed
	phase    phase
	restored bool
	slots    []slot
	reserved int
	acqs     map[string]*Acquisition

	unhealthy     bool
	failures      int
	lastHealthErr string
	lastHeartbeat time.Time
	nextCheck     time.Time // an unhealthy instance is checked again no earlier than this

	runningAt     time.Time
	idleSince     time.Time
	removeAt      time.Time
	decreasedAt   time.Time
	readyStarted  bool
	readyRetry    bool // a readiness check failed; it is tried again at nextCheck
	restoredJobs  int
	history       []Event
	historyCursor int
}

func (in *instance) busy() int { return in.reserved + in.InFlight }

// slotAt returns slot i. Slots are allocated as they are first used, so that a large
// capacity_per_instance costs nothing until jobs run.
func (in *instance) slotAt(i int) slot {
	if i < 0 || i >= len(in.slots) {
		return slot{}
	}
	return in.slots[i]
}

// setSlot sets slot i, allocating the slots up to it.
func (in *instance) setSlot(i int, sl slot) {
	if i >= len(in.slots) {
		in.slots = append(in.slots, make([]slot, i+1-len(in.slots))...)
	}
	in.slots[i] = sl
}

// usable is how many more slots the instance can hand out now.
func (in *instance) usable(cap, maxUse int) int {
	free := cap - in.busy()
	if maxUse > 0 {
		free = min(free, maxUse-in.UseCount-in.reserved)
	}
	return max(free, 0)
}

type reservation struct {
	key  string
	inst *instance // nil: unbound (capacity promised, not yet on an instance)
	slot int
	at   time.Time
}

type grant struct {
	inst *instance
	slot int
}

type waiter struct {
	key     string
	ch      chan grant
	granted bool
	at      time.Time
}

// Scaler is one taskscaler over one instance group.
type Scaler struct {
	group provider.InstanceGroup
	info  provider.ProviderInfo
	opts  Options
	owner string
	clock clock.Clock
	store state.Store
	log   *slog.Logger
	m     Metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kickCh chan struct{}

	provMu sync.Mutex
	rescan atomic.Bool

	mu           sync.Mutex
	policies     []compiledPolicy
	instances    map[string]*instance
	reservations map[string]*reservation
	acquisitions map[string]*Acquisition
	waiters      []*waiter
	bucket       *bucket
	breaker      breaker
	lastDecision Decision
	lastNoCreate *Decision
	lastUpdate   time.Time
	lastUpdErr   string
	lastStoreErr string
	storeWarning string
	gone         []InstanceStatus
	dirty        map[string]bool
	deleted      []string
	closed       bool
	gen          uint64
	throttled    bool // the last decision was cut by scale_throttle: look again soon
	readyQueue   []*instance

	// inventoryLost: the store started without the records it held (a corrupt state
	// file moved aside). Until the first successful Update, whatever is listed and not
	// recorded was this owner's own, and is deleted at once (see discoverLocked).
	inventoryLost bool

	// run identifies this scaler process in the intents it records.
	run string
	// intents are the recorded requests to create instances not seen yet, oldest
	// first. requested counts what this run's intents still expect: capacity that is
	// coming. unconfirmed counts what previous runs' intents still expect: their
	// process died, so whether Increase ever reached the cloud is unknown, and it is
	// not counted as capacity (see claimIntentLocked).
	intents      []state.Intent
	intentSeq    uint64
	requested    int
	unconfirmed  int
	intentsDirty bool

	// Consecutive failed Updates, since when, and the earliest next attempt: a failing
	// plugin is retried with backoff, not on every kick.
	updFailures     int
	updFailingSince time.Time
	updErr          error
	nextUpdate      time.Time
}

// New initialises group (unless opts.Info is set), loads the inventory from
// opts.Store, and, unless opts.Manual, starts the background loop. It does not wait
// for the first Update: instances found are adopted or removed by the first cycle.
func New(ctx context.Context, group provider.InstanceGroup, opts Options) (*Scaler, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("taskscaler options: %w", err)
	}
	pols, err := compilePolicies(o.Policies)
	if err != nil {
		return nil, fmt.Errorf("taskscaler options: %w", err)
	}
	var info provider.ProviderInfo
	if o.Info != nil {
		info = *o.Info
	} else {
		info, err = group.Init(ctx, o.PluginLogger, o.Settings)
		if err != nil {
			return nil, fmt.Errorf("initialise instance group: %w", err)
		}
	}
	owner := o.Owner
	if owner == "" {
		owner = info.ID
	}
	now := o.Clock.Now()
	s := &Scaler{
		group: group, info: info, opts: o, owner: owner, clock: o.Clock, store: o.Store, run: newRunID(now),
		log: o.Logger.With("subsystem", "taskscaler", "owner", owner), m: o.Metrics,
		kickCh: make(chan struct{}, 1), policies: pols,
		instances: map[string]*instance{}, reservations: map[string]*reservation{},
		acquisitions: map[string]*Acquisition{}, dirty: map[string]bool{},
		bucket:  newBucket(o.ScaleThrottle.Limit, o.ScaleThrottle.Burst, now),
		breaker: breaker{threshold: o.Breaker.Threshold, backoff: o.Breaker.Backoff, maxBackoff: o.Breaker.MaxBackoff},
	}
	snap, err := o.Store.Load(ctx, owner)
	if err != nil {
		return nil, fmt.Errorf("load instance inventory: %w", err)
	}
	for _, rec := range snap.Instances {
		in := s.newInstance(rec.ID, now)
		in.Instance, in.Owner = rec, owner
		in.phase, in.restored = phaseRestoring, true
		// The jobs in flight when the host stopped are gone with its process: they decide
		// whether the instance is kept (restoredJobs), and no slot is held now.
		in.restoredJobs, in.InFlight = rec.InFlight, 0
		// Readiness is checked again in this run, which sets ReadyAt anew.
		in.ReadyAt = time.Time{}
		if in.CreatedAt.IsZero() {
			in.CreatedAt = now
		}
		if !in.Removing {
			in.RemoveReason = ""
		}
		in.event(now, "restored", fmt.Sprintf("found in the inventory (cause %s, used %d, %d jobs in flight)", rec.Cause, rec.UseCount, rec.InFlight))
		s.instances[rec.ID] = in
	}
	// Every intent in the store was made by a process that is gone. They are kept as
	// unconfirmed: instances that appear are claimed against them, but they do not
	// count as capacity, so a crash mid-scale-up never blocks scale-up.
	for _, it := range snap.Intents {
		if it.Count <= 0 {
			continue
		}
		if it.At.IsZero() {
			it.At = now
		}
		s.intents = append(s.intents, it)
		s.unconfirmed = satAdd(s.unconfirmed, it.Count)
	}
	slices.SortStableFunc(s.intents, func(a, b state.Intent) int { return a.At.Compare(b.At) })
	if s.unconfirmed > 0 {
		s.log.Info("creation intents of a previous run found; instances that appear are adopted as created, the rest is written off after pending_creation_timeout",
			"instances", s.unconfirmed, "intents", len(s.intents))
	}
	if w, ok := o.Store.(interface{ Warning() string }); ok && w.Warning() != "" {
		s.storeWarning = w.Warning()
		s.log.Warn(s.storeWarning)
	}
	if l, ok := o.Store.(state.InventoryLoss); ok && l.InventoryLost() {
		s.inventoryLost = true
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if !o.Manual {
		s.wg.Add(1)
		go s.loop()
	}
	return s, nil
}

// Info returns the group's ProviderInfo.
func (s *Scaler) Info() provider.ProviderInfo { return s.info }

// Owner returns the scaler's key in the inventory.
func (s *Scaler) Owner() string { return s.owner }

// ConfigureSchedule replaces the policies (a config reload); it takes effect at once.
func (s *Scaler) ConfigureSchedule(ps []Policy) error {
	if err := errors.Join(validatePolicies(ps)...); err != nil {
		return err
	}
	pols, err := compilePolicies(ps)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.policies = pols
	s.mu.Unlock()
	s.scaleUp("schedule")
	s.kick()
	return nil
}

func (s *Scaler) newInstance(id string, now time.Time) *instance {
	return &instance{Instance: state.Instance{ID: id, Owner: s.owner, CreatedAt: now}, idleSince: now, acqs: map[string]*Acquisition{}}
}

// setRemoving enters phaseRemoving for reason, and the record says so.
func (in *instance) setRemoving(reason string) {
	in.phase, in.Removing, in.RemoveReason = phaseRemoving, true, reason
}

// newRunID names this scaler process in the intents it records: its start time, pid
// and a random suffix, so that a restarted host (same pid in a new container, or the
// same second) still gets a new one.
func newRunID(now time.Time) string {
	return fmt.Sprintf("%s-%d-%04x", now.UTC().Format("20060102T150405Z"), os.Getpid(), rand.Uint32()&0xffff)
}

const historyLimit = 32

// Event is one entry of an instance's lifecycle history.
type Event struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"`
	Reason string    `json:"reason,omitempty"`
}

func (in *instance) event(now time.Time, kind, reason string) {
	e := Event{Time: now, Kind: kind, Reason: reason}
	if len(in.history) < historyLimit {
		in.history = append(in.history, e)
		return
	}
	in.history[in.historyCursor] = e
	in.historyCursor = (in.historyCursor + 1) % historyLimit
}

func (in *instance) orderedHistory() []Event {
	out := make([]Event, 0, len(in.history))
	out = append(out, in.history[in.historyCursor:]...)
	return append(out, in.history[:in.historyCursor]...)
}

func (s *Scaler) kick() {
	select {
	case s.kickCh <- struct{}{}:
	default:
	}
}

func (s *Scaler) loop() {
	defer s.wg.Done()
	for {
		if err := s.Reconcile(s.ctx); err != nil && s.ctx.Err() == nil {
			s.log.Warn("reconcile", "err", err)
		}
		for waiting := true; waiting; {
			t := s.clock.NewTimer(s.nextInterval())
			select {
			case <-t.C():
				waiting = false
			case <-s.kickCh:
				t.Stop()
				// A kick (a job waiting, an instance to remove) cannot hurry a plugin
				// whose Update keeps failing: the next attempt waits out the backoff.
				waiting = s.updateBackoffLeft() > 0
			case <-s.ctx.Done():
				t.Stop()
				return
			}
		}
	}
}

// Update backoff: after consecutive failed Updates the next attempt waits
// updateBackoffMin, doubling per failure up to updateBackoffMax, and at least the
// normal interval.
const (
	updateBackoffMin = time.Second
	updateBackoffMax = 30 * time.Second
)

// intentMergeWindow: scale-ups of one run this close together record one intent.
const intentMergeWindow = time.Second

// Health recheck backoff: an unhealthy instance is checked again (Heartbeat and probe)
// after healthRecheckMin, doubling per consecutive failure up to healthRecheckMax;
// until then it gets no job, so a broken instance is not re-dialled in a loop.
const (
	healthRecheckMin = 2 * time.Second
	healthRecheckMax = time.Minute
)

// backoff returns base·2^(n−1), capped at limit.
func backoff(n int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

func (s *Scaler) updateBackoffLeft() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.updFailures == 0 {
		return 0
	}
	return max(s.nextUpdate.Sub(s.clock.Now()), 0)
}

// nextInterval is update_interval_when_expecting while a state change is expected
// (instances requested, creating, booting or being removed, or jobs waiting), else
// update_interval; while Update keeps failing, at least the backoff.
func (s *Scaler) nextInterval() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.opts.UpdateInterval
	if s.expectingLocked() {
		d = s.opts.UpdateIntervalWhenExpecting
	}
	if s.updFailures > 0 {
		d = max(d, s.nextUpdate.Sub(s.clock.Now()))
	}
	return d
}

func (s *Scaler) expectingLocked() bool {
	if s.requested > 0 || s.unconfirmed > 0 || len(s.waiters) > 0 || s.throttled {
		return true
	}
	for _, in := range s.instances {
		switch in.phase {
		case phaseCreating, phaseBooting, phaseRemoving, phaseRestoring:
			return true
		}
	}
	return false
}

// NextInterval tells a driver (a simulator in Manual mode) when the loop would run
// Reconcile next.
func (s *Scaler) NextInterval() time.Duration { return s.nextInterval() }

func (s *Scaler) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.ctx, s.opts.OperationTimeout)
}

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
	if surplus > 0 && len(idle) > 0 {
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

// counts are the inputs of a scaling decision.
type counts struct {
	tasks    TaskCounts
	inst     InstanceCounts
	policy   compiledPolicy
	current  int // instances that will serve: creating, booting, ready, restoring + requested
	total    int // every instance not gone, including removing and unvouched, + requested
	target   int // idle target in slots
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

	c.target = max(c.policy.IdleTarget(Snapshot{Now: now, Tasks: c.tasks, CapacityPerInstance: capa}), 0)
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
	// IdleTarget is idle_count raised by scale_factor, in slots.
	IdleTarget          int     `json:"idle_target"`
	IdleCount           int     `json:"idle_count"`
	ScaleFactor         float64 `json:"scale_factor"`
	ScaleFactorLimit    int     `json:"scale_factor_limit"`
	CapacityPerInstance int     `json:"capacity_per_instance"`
	MaxInstances        int     `json:"max_instances"`
	ProviderMaxSize     int     `json:"provider_max_size"`
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
	d := Decision{Time: now, Trigger: trigger, Policy: c.policy.index, Tasks: c.tasks, IdleTarget: c.target,
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
				"scale_factor_limit", d.ScaleFactorLimit, "capacity_per_instance", d.CapacityPerInstance, "required", d.Required, "increase", n)
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

// runReadyQueue runs the readiness of instances that became running: inline in
// Manual mode, else in the background.
func (s *Scaler) runReadyQueue() {
	s.mu.Lock()
	q := s.readyQueue
	s.readyQueue = nil
	for _, in := range q {
		in.readyStarted = true
	}
	s.mu.Unlock()
	for _, in := range q {
		if s.opts.Manual {
			s.ready(in)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.ready(in)
		}()
	}
}

// ready runs the readiness of a running instance: the plugin's Heartbeat, the host's
// ready command, then its probe. An instance the host cannot reach is not ready.
//
// A failed check of reachability (connect info, Heartbeat, probe) is tried again after
// a backoff (healthRecheckMin, doubling per failure) while the instance stays booting:
// a cloud may list a new VM before its lookups show it, and SSH may come up late, and
// such an instance must not be deleted and replaced in a loop of milliseconds. At
// failure_threshold consecutive failures the instance is removed, and that counts as
// a provisioning failure, so a fleet-wide cause (a wrong client key, a plugin that
// never finds its new instances) opens the circuit breaker instead of replacing
// instances forever. A failed ready command removes the instance at once: it is the
// operator's own verdict, and it had ReadyTimeout to wait.
func (s *Scaler) ready(in *instance) {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.ReadyTimeout)
	final, err := s.readiness(ctx, in)
	cancel()
	now := s.clock.Now()
	s.mu.Lock()
	if in.phase != phaseBooting {
		s.mu.Unlock()
		return
	}
	if err != nil {
		in.failures++
		in.lastHealthErr = err.Error()
		if !final && in.failures < s.opts.FailureThreshold {
			in.readyRetry = true
			in.nextCheck = now.Add(backoff(in.failures, healthRecheckMin, healthRecheckMax))
			in.event(now, "unready", fmt.Sprintf("readiness check failure %d of %d (next attempt at %s): %v", in.failures,
				s.opts.FailureThreshold, in.nextCheck.UTC().Format(time.RFC3339), err))
			s.log.Info("instance not ready yet", "instance", in.ID, "failures", in.failures, "next_attempt", in.nextCheck, "err", err)
			s.mu.Unlock()
			return
		}
		reason := fmt.Sprintf("ready: %v", err)
		if in.failures > 1 {
			reason += fmt.Sprintf(" (%d consecutive readiness failures, failure_threshold %d)", in.failures, s.opts.FailureThreshold)
		}
		s.breaker.failure(now, fmt.Sprintf("instance %s: %s", in.ID, reason))
		s.beginRemovalLocked(now, in, reason)
		s.flushLocked()
		s.mu.Unlock()
		s.kick()
		return
	}
	in.failures, in.lastHealthErr, in.readyRetry = 0, "", false
	in.phase, in.ReadyAt, in.idleSince, in.lastHeartbeat = phaseReady, now, now, now
	s.m.ObserveInstance("readiness", now.Sub(in.runningAt))
	s.breaker.success()
	in.event(now, "ready", "readiness passed; serving slots")
	s.dirty[in.ID] = true
	s.dispatchLocked(now)
	s.flushLocked()
	s.mu.Unlock()
}

// readiness runs the checks of ready; final says that its failure is not retried.
func (s *Scaler) readiness(ctx context.Context, in *instance) (final bool, err error) {
	var info InstanceInfo
	if s.opts.Ready != nil || s.opts.Probe != nil {
		if info, err = s.instanceInfo(ctx, in); err != nil {
			return false, err
		}
	}
	hctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
	err = s.group.Heartbeat(hctx, in.ID)
	cancel()
	if err != nil && !errors.Is(err, provider.ErrNotSupported) {
		s.m.InternalOperation("heartbeat_failure")
		return false, stepErr("heartbeat", "", err)
	}
	s.m.InternalOperation("heartbeat")
	if s.opts.Ready != nil {
		if err := s.opts.Ready(ctx, info); err != nil {
			return true, err
		}
	}
	if s.opts.Probe != nil {
		if err := s.opts.Probe(ctx, info); err != nil {
			return false, fmt.Errorf("probe: %w", err)
		}
	}
	return false, nil
}

func (s *Scaler) instanceInfo(ctx context.Context, in *instance) (InstanceInfo, error) {
	s.mu.Lock()
	info := InstanceInfo{Instance: in.Instance, Restored: in.restored}
	s.mu.Unlock()
	ci, err := s.group.ConnectInfo(ctx, in.ID)
	if err != nil {
		s.m.InternalOperation("connect_info_failure")
		return info, stepErr("connect info", in.ID, err)
	}
	s.m.InternalOperation("connect_info")
	info.ConnectInfo = ci
	return info, nil
}

// heartbeatDueLocked lists idle ready instances whose heartbeat is older than the
// interval, and unhealthy ones whose recheck is due (see healthRecheckMin) until they
// recover or reach failure_threshold. probe[i] says whether due[i] also gets the probe:
// an unhealthy instance recovers only by passing the same check that failed, so a
// plugin Heartbeat that succeeds cannot reset the failures of a probe that does not.
// In the same pass, booting instances whose next readiness attempt is due are queued
// for runReadyQueue.
func (s *Scaler) heartbeatDueLocked(now time.Time) (due []*instance, probe []bool) {
	for _, in := range s.instances {
		if in.phase == phaseBooting && in.readyRetry && !now.Before(in.nextCheck) {
			in.readyRetry = false
			s.readyQueue = append(s.readyQueue, in)
			continue
		}
		if in.phase != phaseReady || in.busy() > 0 {
			continue
		}
		if in.unhealthy {
			if !now.Before(in.nextCheck) {
				due = append(due, in)
			}
			continue
		}
		if now.Sub(in.lastHeartbeat) >= s.opts.HeartbeatInterval {
			due = append(due, in)
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].ID < due[j].ID })
	if len(due) > 0 {
		probe = make([]bool, len(due))
		for i, in := range due {
			probe[i] = in.unhealthy
		}
	}
	return due, probe
}

func (s *Scaler) runHeartbeats(ctx context.Context, due []*instance, probe []bool) {
	if len(due) == 0 {
		return
	}
	errs := make([]error, len(due))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, in := range due {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = s.heartbeat(ctx, in, probe[i])
		}()
	}
	wg.Wait()
	now := s.clock.Now()
	s.mu.Lock()
	for i, in := range due {
		s.healthResultLocked(now, in, errs[i])
	}
	s.dispatchLocked(now) // recovered instances can serve waiting jobs
	s.mu.Unlock()
}

// heartbeat calls the plugin's Heartbeat (ErrNotSupported counts as healthy) and,
// when probe is set, the host's probe command.
func (s *Scaler) heartbeat(ctx context.Context, in *instance, probe bool) error {
	hctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
	defer cancel()
	if err := s.group.Heartbeat(hctx, in.ID); err != nil && !errors.Is(err, provider.ErrNotSupported) {
		s.m.InternalOperation("heartbeat_failure")
		return stepErr("heartbeat", "", err)
	}
	s.m.InternalOperation("heartbeat")
	if probe && s.opts.Probe != nil {
		info, err := s.instanceInfo(hctx, in)
		if err == nil {
			err = s.opts.Probe(hctx, info)
		}
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
	}
	return nil
}

// healthResultLocked records a health check.
func (s *Scaler) healthResultLocked(now time.Time, in *instance, err error) {
	in.lastHeartbeat = now
	if err == nil {
		if in.unhealthy {
			in.event(now, "healthy", "health check passed again")
		}
		in.unhealthy, in.failures, in.lastHealthErr = false, 0, ""
		return
	}
	in.unhealthy = true
	in.failures++
	in.lastHealthErr = err.Error()
	in.nextCheck = now.Add(backoff(in.failures, healthRecheckMin, healthRecheckMax))
	in.event(now, "unhealthy", fmt.Sprintf("health check failure %d of %d (next check at %s): %v", in.failures, s.opts.FailureThreshold,
		in.nextCheck.UTC().Format(time.RFC3339), err))
}

// flushLocked writes the dirty records and the pending count in one batch. On error
// everything stays dirty for the next attempt.
func (s *Scaler) flushLocked() error {
	if len(s.dirty) == 0 && len(s.deleted) == 0 && !s.intentsDirty {
		return nil
	}
	now := s.clock.Now()
	var b state.Batch
	for id := range s.dirty {
		in, ok := s.instances[id]
		if !ok || in.phase == phaseUnvouched {
			continue
		}
		rec := in.Instance
		rec.UpdatedAt = now
		b.Put = append(b.Put, rec)
	}
	b.Delete = s.deleted
	if s.intentsDirty {
		b.SetIntents, b.Intents = true, slices.Clone(s.intents)
	}
	if err := s.store.Apply(s.ctx, s.owner, b); err != nil {
		s.lastStoreErr = err.Error()
		s.log.Error("write instance inventory", "err", err)
		return err
	}
	s.lastStoreErr = ""
	for _, rec := range b.Put {
		s.instances[rec.ID].UpdatedAt = now
	}
	clear(s.dirty)
	s.deleted = nil
	s.intentsDirty = false
	return nil
}

func (s *Scaler) publishLocked(now time.Time) {
	c := s.countLocked(now)
	s.m.SetGauges(Gauges{Tasks: c.tasks, Instances: c.inst, Desired: c.desired, MaxInstances: s.opts.MaxInstances,
		MaxTasksPerInstance: s.opts.CapacityPerInstance, MaxUseCount: s.opts.MaxUseCount})
}

// Shutdown stops the loop, waits for background readiness checks, and, with
// delete_instances_on_shutdown, deletes every instance in up to
// shutdown_deletion_retries rounds shutdown_deletion_interval apart. Without it the
// instances stay and the next start adopts them. It then shuts the plugin down.
func (s *Scaler) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	var errs []error
	if s.opts.DeleteInstancesOnShutdown {
		if err := s.deleteAll(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.mu.Lock()
	for _, w := range s.waiters {
		close(w.ch)
	}
	s.waiters = nil
	s.flushLocked()
	s.mu.Unlock()
	if err := s.group.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("shut down plugin: %w", err))
	}
	return errors.Join(errs...)
}

// deleteAll deletes every instance at shutdown, in rounds shutdown_deletion_interval
// apart: each round lists the group (Update), begins the removal of every instance not
// yet deleting and calls Decrease for them; an instance is deleted once a listing no
// longer shows it. A round whose Update or Decrease fails (a dropped connection, a
// plugin being relaunched) is retried in the next one: one error never ends the
// deletion. After shutdown_deletion_retries rounds beyond the first, or when ctx ends,
// the error names the instances left and the last cause.
func (s *Scaler) deleteAll(ctx context.Context) error {
	var cause error // the last failed call
	causeRound := 0
	for round := 1; ; round++ {
		var listed []observed
		uctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
		err := s.group.Update(uctx, func(id string, st provider.State) { listed = append(listed, observed{id, st}) })
		cancel()
		var ids []string
		if err != nil {
			s.m.InternalOperation("update_failure")
			if ctx.Err() != nil {
				return s.shutdownLeftError(round, ctx.Err(), cause, causeRound)
			}
			cause, causeRound = stepErr("update", "", err), round
			s.log.Warn("delete instances on shutdown: listing the group failed; retrying", "round", round, "err", cause)
		} else {
			s.m.InternalOperation("update")
			now := s.clock.Now()
			s.mu.Lock()
			s.applyLocked(now, listed)
			for _, in := range s.instances {
				if in.State == provider.StateDeleting || in.State == provider.StateDeleted {
					continue
				}
				if in.phase != phaseRemoving {
					s.cancelAcquisitionsLocked(in)
					s.beginRemovalLocked(now, in, "delete_instances_on_shutdown")
				}
				ids = append(ids, in.ID)
			}
			remaining := len(s.instances)
			s.flushLocked()
			s.mu.Unlock()
			if remaining == 0 {
				return nil
			}
		}
		if round > s.opts.ShutdownDeletionRetries {
			return s.shutdownLeftError(round, nil, cause, causeRound)
		}
		if len(ids) > 0 {
			slices.Sort(ids)
			dctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
			_, err := s.group.Decrease(dctx, ids)
			cancel()
			if err != nil {
				cause, causeRound = stepErr("decrease", "", err), round
				s.m.InternalOperation("decrease_failure")
				s.log.Warn("delete instances on shutdown: Decrease failed; retrying", "round", round, "instances", ids, "err", cause)
			} else {
				s.m.InternalOperation("decrease")
			}
		}
		t := s.clock.NewTimer(s.opts.ShutdownDeletionInterval)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return s.shutdownLeftError(round, ctx.Err(), cause, causeRound)
		}
	}
}

// shutdownLeftError says which instances deleteAll leaves after rounds rounds, why it
// stopped (stop: the caller's context ended; nil: the rounds were used up) and the
// last failed call, if any.
func (s *Scaler) shutdownLeftError(rounds int, stop, cause error, causeRound int) error {
	s.mu.Lock()
	var left []string
	for _, in := range s.instances {
		st := string(in.State)
		if st == "" {
			st = "not listed yet"
		}
		left = append(left, fmt.Sprintf("%s (%s)", in.ID, st))
	}
	s.mu.Unlock()
	slices.Sort(left)
	const show = 10
	list := strings.Join(left[:min(len(left), show)], ", ")
	if len(left) > show {
		list += fmt.Sprintf(" and %d more", len(left)-show)
	}
	what := fmt.Sprintf("%d instances left", len(left))
	if len(left) == 0 {
		// Never listed: nothing says the group is empty.
		what, list = "the group could not be listed", "instances it may hold are not known"
	}
	msg := fmt.Sprintf("delete instances on shutdown: %s after %d rounds", what, rounds)
	if stop != nil {
		msg += fmt.Sprintf(", stopped early (%v)", stop)
	}
	msg += ": " + list
	if cause == nil {
		return errors.New(msg)
	}
	return fmt.Errorf("%s; last error (round %d): %w", msg, causeRound, cause)
}
