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
//
// Files: scaler.go (the Scaler, its instances and loop), slots.go (Reserve, Acquire,
// Release), reconcile.go (the plugin's view applied), decide.go (counts and the scaling
// decision), policy.go (policy kinds and their schedule), removal.go, health.go
// (readiness and heartbeats), shutdown.go, status.go (Status, explain, the endpoint).
package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
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

	runningAt    time.Time
	idleSince    time.Time
	removeAt     time.Time
	decreasedAt  time.Time
	readyStarted bool
	readyRetry   bool // a readiness check failed; it is tried again at nextCheck
	restoredJobs int
	// retire, when set, says why the instance takes no more jobs and is removed once
	// its slots are free (a job of a lost runner manager ran on it).
	retire        string
	retireAt      time.Time // not removed for retire before this
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
	if in.retire != "" {
		return 0
	}
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
	demand       *demand
	surplusSince time.Time // since when the pool has had more instances than required

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
	s.demand = newDemand(snap.Demand)
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
	s.adoptHeldLocked(now, o.Held)
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

// adoptHeldLocked takes over the slots other processes hold (Options.Held) on restored
// instances. Those jobs are alive, so an instance holding them is kept; jobs recorded
// in flight beyond them were lost with their process, and the instance is retired once
// the live ones are released instead of being removed under them.
func (s *Scaler) adoptHeldLocked(now time.Time, held []Held) {
	perInstance := map[string]int{}
	for _, h := range held {
		in, ok := s.instances[h.InstanceID]
		if !ok || h.Slot < 0 || h.Slot >= s.opts.CapacityPerInstance || in.slotAt(h.Slot).state != slotFree {
			s.log.Warn("held slot not taken over: its instance is not in the inventory or the slot is taken twice",
				"instance", h.InstanceID, "slot", h.Slot, "key", h.Key)
			continue
		}
		if _, dup := s.acquisitions[h.Key]; dup {
			continue
		}
		in.setSlot(h.Slot, slot{state: slotAcquired, key: h.Key})
		in.InFlight++
		actx, cancel := context.WithCancelCause(context.Background())
		a := &Acquisition{s: s, key: h.Key, id: in.ID, slot: h.Slot, ctx: actx, cancel: cancel}
		s.acquisitions[h.Key], in.acqs[h.Key] = a, a
		in.event(now, "acquired", fmt.Sprintf("slot %d held by %s, taken over", h.Slot, h.Key))
		perInstance[in.ID]++
	}
	for id, in := range s.instances {
		n := perInstance[id]
		if n == 0 && s.opts.LostJobsGrace <= 0 {
			continue // a single host's restart: restoredJobs removes the instance at once
		}
		if lost := in.restoredJobs - n; lost > 0 && !s.opts.KeepInstanceWithAcquisitions {
			in.retire = fmt.Sprintf("%d jobs in flight were lost with their runner manager; removing for safety once they have stopped", lost)
			if n > 0 {
				in.retire += fmt.Sprintf(" and the %d held slots are released", n)
			}
			in.retireAt = now.Add(s.opts.LostJobsGrace)
		}
		in.restoredJobs = 0
	}
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

// flushLocked writes the dirty records and the pending count in one batch. On error
// everything stays dirty for the next attempt.
func (s *Scaler) flushLocked() error {
	if len(s.dirty) == 0 && len(s.deleted) == 0 && !s.intentsDirty && !s.demand.dirty {
		return nil
	}
	now := s.clock.Now()
	var b state.Batch
	b.Demand = s.demand.take()
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
		if b.Demand != nil {
			s.demand.dirty = true
		}
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
