// Package state is the taskscaler's durable inventory: every instance a scaler creates
// or adopts is recorded with its owner, use count, timestamps and cause, and the intent
// to create instances is recorded before Increase is called. After a crash the next
// scaler reads this back, adopts what it owns and knows, and deletes what it cannot
// vouch for, so that no instance is ever forgotten while it keeps billing.
//
// Credentials are never stored: ConnectInfo (keys, passwords) is fetched fresh from the
// plugin whenever it is needed, so the inventory holds only IDs, counters and times.
package state

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Instance is an instance's record: its lasting facts, defined once. The state file
// stores it; the taskscaler's in-memory instance, its InstanceStatus (status and
// explain) and the InstanceInfo it gives the host's ready and probe functions embed it,
// so that a fact is one field in all of them. The plugin protocol reports an ID and a
// provider.State, which State holds as it is.
type Instance struct {
	// ID is the plugin's instance ID.
	ID string `json:"id"`
	// Owner is the scaler key that created or adopted the instance.
	Owner string `json:"owner"`
	// Cause says how the instance came to be owned: "created" or "adopted"; "unknown"
	// for one the host cannot vouch for.
	Cause string `json:"cause"`
	// State is the last state the plugin reported.
	State provider.State `json:"state"`
	// UseCount is how many jobs were given to the instance.
	UseCount int `json:"use_count"`
	// InFlight is how many jobs hold a slot on the instance; stored, how many held one
	// at the last write, which a restarted host cannot resume.
	InFlight int `json:"in_flight"`
	// Removing is set once the host decided to delete the instance, with the reason.
	Removing     bool   `json:"removing,omitempty"`
	RemoveReason string `json:"remove_reason,omitempty"`
	// CreatedAt is when the instance was first seen; ReadyAt when it became usable;
	// UpdatedAt when the record was last written.
	CreatedAt time.Time `json:"created_at"`
	ReadyAt   time.Time `json:"ready_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Intent is one recorded request to create instances, written before Increase is
// called: Count instances were (or were about to be) requested by the scaler run Run
// at At and have not been seen in an Update yet. Each intent keeps its own time, so a
// later request never extends an earlier one, and the run tells a restarted scaler
// that an intent belongs to a process that is gone.
type Intent struct {
	// ID is unique within the owner ("<run>/<sequence>").
	ID string `json:"id"`
	// Run identifies the scaler process that made the request; empty for an intent
	// migrated from schema version 1, which did not record it.
	Run   string    `json:"run"`
	Count int       `json:"count"`
	At    time.Time `json:"at"`
	// Why is the scaling decision that made the request, for explain.
	Why string `json:"why,omitempty"`
}

// Demand is what a scaler learned about its jobs, kept so that a restart does not
// forget it: the arrival rate by time of week and of day, the size of bursts of jobs
// that arrive together (a pipeline stage fanning out), how long instances took to
// boot, and the forecast policy's current value of a job that does not wait. Only a
// forecast policy reads it; every scaler keeps it.
type Demand struct {
	// BucketSeconds is the width of one rate bucket (900: a quarter of an hour).
	BucketSeconds int `json:"bucket_s"`
	// Week holds jobs per bucket by time of week from Monday 00:00 UTC, WeekSeen how
	// many weeks each bucket was observed (capped); Day and DaySeen the same by time
	// of day, for the first week.
	Week     []float64 `json:"week"`
	WeekSeen []int     `json:"week_seen"`
	Day      []float64 `json:"day"`
	DaySeen  []int     `json:"day_seen"`
	// Bursts[k-1] is the decayed count of bursts of k jobs (the last entry counts
	// every larger burst).
	Bursts []float64 `json:"bursts"`
	// BootsS are the last boot times (created to ready) in seconds, oldest first.
	BootsS []float64 `json:"boots_s"`
	// JobValueS is the forecast policy's learned value, in instance-seconds, of a job
	// that starts within its target wait; 0 when never learned.
	JobValueS float64 `json:"job_value_s,omitempty"`
	// UpdatedAt is the end of the last bucket counted into the tables.
	UpdatedAt time.Time `json:"updated_at"`
}

// Snapshot is everything stored for one owner.
type Snapshot struct {
	Instances []Instance
	Intents   []Intent
	// Demand is nil when none was recorded.
	Demand *Demand
}

// Batch is one atomic change for one owner.
type Batch struct {
	// Put adds or replaces records; Delete removes records by ID.
	Put    []Instance
	Delete []string
	// SetIntents replaces every recorded intent of the owner with Intents.
	SetIntents bool
	Intents    []Intent
	// Demand, when set, replaces the owner's demand record.
	Demand *Demand
}

// Empty reports whether the batch changes nothing.
func (b Batch) Empty() bool {
	return len(b.Put) == 0 && len(b.Delete) == 0 && !b.SetIntents && b.Demand == nil
}

// Store keeps the inventory. Implementations must apply a Batch atomically: after a
// crash either all of it or none of it is visible.
type Store interface {
	// Load returns everything recorded for owner.
	Load(ctx context.Context, owner string) (Snapshot, error)
	// Apply writes a batch for owner.
	Apply(ctx context.Context, owner string, b Batch) error
	// Close releases the store.
	Close() error
}

// InventoryLoss is implemented by a Store that can start without the records it held
// (Bolt, when it found its file corrupt and moved it aside).
type InventoryLoss interface {
	// InventoryLost reports that the records the store held were lost when it was
	// opened: the instances they recorded may still exist, and nothing vouches for them.
	InventoryLost() bool
}

// ErrClosed is returned by a Store after Close.
var ErrClosed = errors.New("state store closed")

// Memory is an in-memory Store for tests and for hosts with state storage disabled.
// Two scalers sharing one Memory see each other's records, like a shared file.
type Memory struct {
	mu     sync.Mutex
	owners map[string]*memOwner
	closed bool
	writes int
}

type memOwner struct {
	instances map[string]Instance
	intents   []Intent
	demand    *Demand
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return &Memory{owners: map[string]*memOwner{}} }

// Load returns a copy of owner's records, sorted by ID.
func (m *Memory) Load(_ context.Context, owner string) (Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Snapshot{}, ErrClosed
	}
	o, ok := m.owners[owner]
	if !ok {
		return Snapshot{}, nil
	}
	out := Snapshot{Intents: slices.Clone(o.intents), Demand: o.demand.clone()}
	for _, in := range o.instances {
		out.Instances = append(out.Instances, in)
	}
	slices.SortFunc(out.Instances, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Apply applies b atomically.
func (m *Memory) Apply(_ context.Context, owner string, b Batch) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.writes++
	o, ok := m.owners[owner]
	if !ok {
		o = &memOwner{instances: map[string]Instance{}}
		m.owners[owner] = o
	}
	for _, in := range b.Put {
		o.instances[in.ID] = in
	}
	for _, id := range b.Delete {
		delete(o.instances, id)
	}
	if b.SetIntents {
		o.intents = slices.Clone(b.Intents)
	}
	if b.Demand != nil {
		o.demand = b.Demand.clone()
	}
	return nil
}

// clone is a deep copy, so that a store never shares slices with its caller.
func (d *Demand) clone() *Demand {
	if d == nil {
		return nil
	}
	c := *d
	c.Week, c.WeekSeen, c.Day, c.DaySeen = slices.Clone(d.Week), slices.Clone(d.WeekSeen), slices.Clone(d.Day), slices.Clone(d.DaySeen)
	c.Bursts, c.BootsS = slices.Clone(d.Bursts), slices.Clone(d.BootsS)
	return &c
}

// Writes returns how many batches were applied.
func (m *Memory) Writes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writes
}

// Close marks the store closed; later calls fail with ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// Reopen makes a closed Memory usable again with its records intact, as a restarted
// process reopening its file would.
func (m *Memory) Reopen() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = false
}
