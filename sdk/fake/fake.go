// Package fake is an in-memory provider.InstanceGroup for tests of hosts and of the
// conformance kit: instances move through scripted state transitions, every call is
// recorded, and errors can be injected per method.
//
// Transitions are driven by Update calls, not by time, so tests never sleep: a new
// instance stays creating for Options.CreatingUpdates Updates, then runs; a deleted one
// stays deleting for Options.DeletingUpdates Updates, then is gone.
package fake

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Options script a Group's behaviour.
type Options struct {
	// MaxSize is reported in ProviderInfo and enforced by Increase (0 = no limit).
	MaxSize int
	// CreatingUpdates is how many Updates a new instance is reported as creating
	// before it is running. 0 makes new instances running at once.
	CreatingUpdates int
	// DeletingUpdates is how many Updates a deleted instance is reported as deleting
	// before it disappears. 0 makes it disappear at once.
	DeletingUpdates int
	// Capabilities are announced in ProviderInfo. Served through sdk/plugin, the SDK
	// sets heartbeat and suspend_resume from what the value implements: a Group has
	// Heartbeat, a Suspending also Suspend and Resume, FirstGeneration neither.
	Capabilities []provider.Capability
	// ID is the ProviderInfo.ID (default "fake/local/group").
	ID string
}

// Call records one method call.
type Call struct {
	Method string
	// Args is the delta for Increase, the IDs for Decrease/Suspend/Resume, the instance
	// for ConnectInfo and Heartbeat, nil otherwise.
	Args any
}

type instance struct {
	state     provider.State
	countdown int // Updates left in the current transitional state
	unhealthy bool
}

// Group is the in-memory instance group. The zero value is not usable; call New.
type Group struct {
	opts Options

	mu        sync.Mutex
	instances map[string]*instance
	seq       int
	calls     []Call
	failures  map[string][]error
	shutdowns int
}

var (
	_ provider.InstanceGroup = (*Group)(nil)
	_ provider.Heartbeater   = (*Group)(nil)
)

// New returns an empty group.
func New(opts Options) *Group {
	if opts.ID == "" {
		opts.ID = "fake/local/group"
	}
	return &Group{opts: opts, instances: map[string]*instance{}, failures: map[string][]error{}}
}

// FailNext makes the next call of method (e.g. "Increase") return err without effect.
// Several FailNext calls queue up in order.
func (g *Group) FailNext(method string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failures[method] = append(g.failures[method], err)
}

// CallCount returns how many times method was called.
func (g *Group) CallCount(method string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, c := range g.calls {
		if c.Method == method {
			n++
		}
	}
	return n
}

// Calls returns a copy of every call so far, in order.
func (g *Group) Calls() []Call {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.calls)
}

// AddInstance adds an instance in the given state, as if created outside the host,
// and returns its ID.
func (g *Group) AddInstance(state provider.State) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.add(state, 0)
}

// SetState forces an instance into a state (e.g. deleting, to simulate an external
// removal). An unknown ID is ignored.
func (g *Group) SetState(id string, state provider.State) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if in, ok := g.instances[id]; ok {
		in.state, in.countdown = state, 0
	}
}

// SetUnhealthy makes Heartbeat fail (or succeed again) for an instance.
func (g *Group) SetUnhealthy(id string, unhealthy bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if in, ok := g.instances[id]; ok {
		in.unhealthy = unhealthy
	}
}

// RemoveInstance makes an instance vanish at once, as a cloud might.
func (g *Group) RemoveInstance(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.instances, id)
}

// Instances returns the current state of every instance.
func (g *Group) Instances() map[string]provider.State {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make(map[string]provider.State, len(g.instances))
	for id, in := range g.instances {
		out[id] = in.state
	}
	return out
}

// Shutdowns returns how many times Shutdown was called.
func (g *Group) Shutdowns() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.shutdowns
}

func (g *Group) add(state provider.State, countdown int) string {
	g.seq++
	id := fmt.Sprintf("fake-%04d", g.seq)
	g.instances[id] = &instance{state: state, countdown: countdown}
	return id
}

// begin records a call and returns an injected failure, if any. Callers hold g.mu.
func (g *Group) begin(ctx context.Context, method string, args any) error {
	g.calls = append(g.calls, Call{Method: method, Args: args})
	if err := ctx.Err(); err != nil {
		return err
	}
	if q := g.failures[method]; len(q) > 0 {
		g.failures[method] = q[1:]
		return q[0]
	}
	return nil
}

// Init returns the group's identity.
func (g *Group) Init(ctx context.Context, _ hclog.Logger, _ provider.Settings) (provider.ProviderInfo, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.begin(ctx, "Init", nil); err != nil {
		return provider.ProviderInfo{}, err
	}
	return provider.ProviderInfo{ID: g.opts.ID, MaxSize: g.opts.MaxSize, Version: "0.0.0-fake",
		Capabilities: slices.Clone(g.opts.Capabilities)}, nil
}

// Update reports every instance, then advances transitional states by one step.
func (g *Group) Update(ctx context.Context, fn func(string, provider.State)) error {
	g.mu.Lock()
	if err := g.begin(ctx, "Update", nil); err != nil {
		g.mu.Unlock()
		return err
	}
	snapshot := map[string]provider.State{}
	for _, id := range slices.Sorted(maps.Keys(g.instances)) {
		in := g.instances[id]
		snapshot[id] = in.state
		g.advance(id, in)
	}
	g.mu.Unlock()
	// fn is called without the lock so that it may call back into the group.
	for _, id := range slices.Sorted(maps.Keys(snapshot)) {
		fn(id, snapshot[id])
	}
	return nil
}

func (g *Group) advance(id string, in *instance) {
	if in.countdown > 0 {
		in.countdown--
		return
	}
	switch in.state {
	case provider.StateCreating:
		in.state = provider.StateRunning
	case provider.StateDeleting, provider.StateDeleted:
		delete(g.instances, id)
	case provider.StateSuspending:
		in.state = provider.StateSuspended
	case provider.StateResuming:
		in.state = provider.StateRunning
	}
}

// Increase creates up to delta instances, stopping at MaxSize with ErrCapacity.
func (g *Group) Increase(ctx context.Context, delta int) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.begin(ctx, "Increase", delta); err != nil {
		return 0, err
	}
	if delta < 0 {
		return 0, fmt.Errorf("increase by %d: delta must not be negative", delta)
	}
	n := delta
	if g.opts.MaxSize > 0 {
		n = min(delta, max(0, g.opts.MaxSize-len(g.instances)))
	}
	for range n {
		if g.opts.CreatingUpdates == 0 {
			g.add(provider.StateRunning, 0)
		} else {
			g.add(provider.StateCreating, g.opts.CreatingUpdates-1)
		}
	}
	if n < delta {
		return n, fmt.Errorf("increase by %d: group is at its maximum size %d: %w", delta, g.opts.MaxSize, provider.ErrCapacity)
	}
	return n, nil
}

// Decrease moves the named instances to deleting; unknown IDs are reported as errors.
func (g *Group) Decrease(ctx context.Context, ids []string) ([]string, error) {
	return g.transition(ctx, "Decrease", ids, func(in *instance) error {
		if g.opts.DeletingUpdates == 0 {
			in.state, in.countdown = provider.StateDeleted, 0
		} else {
			in.state, in.countdown = provider.StateDeleting, g.opts.DeletingUpdates-1
		}
		return nil
	})
}

// Suspending is a Group that also implements provider.Suspender, as a plugin of the
// third fleeting generation does: Suspend and Resume drive the suspend states.
type Suspending struct{ *Group }

var (
	_ provider.Suspender   = (*Suspending)(nil)
	_ provider.Heartbeater = (*Suspending)(nil)
)

// NewSuspending returns an empty group that can suspend and resume instances.
func NewSuspending(opts Options) *Suspending { return &Suspending{New(opts)} }

// FirstGeneration returns g as a plugin of the first fleeting generation would be: the
// provider.InstanceGroup methods only, without Heartbeat, Suspend and Resume.
func FirstGeneration(g *Group) provider.InstanceGroup {
	// A pointer to a struct, as sdk/plugin's configuration decoding requires.
	return &struct{ provider.InstanceGroup }{g}
}

// Suspend moves running instances to suspending.
func (s *Suspending) Suspend(ctx context.Context, ids []string) ([]string, error) {
	return s.transition(ctx, "Suspend", ids, func(in *instance) error {
		if in.state != provider.StateRunning {
			return fmt.Errorf("instance is %s, not running", in.state)
		}
		in.state = provider.StateSuspending
		return nil
	})
}

// Resume moves suspended instances to resuming.
func (s *Suspending) Resume(ctx context.Context, ids []string) ([]string, error) {
	return s.transition(ctx, "Resume", ids, func(in *instance) error {
		if in.state != provider.StateSuspended {
			return fmt.Errorf("instance is %s, not suspended", in.state)
		}
		in.state = provider.StateResuming
		return nil
	})
}

func (g *Group) transition(ctx context.Context, method string, ids []string, apply func(*instance) error) ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.begin(ctx, method, slices.Clone(ids)); err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, nil
	}
	var done []string
	var errs []error
	for _, id := range ids {
		in, ok := g.instances[id]
		if !ok {
			errs = append(errs, fmt.Errorf("%s %s: %w", method, id, provider.ErrNotFound))
			continue
		}
		if err := apply(in); err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", method, id, err))
			continue
		}
		done = append(done, id)
	}
	return done, errors.Join(errs...)
}

// ConnectInfo returns a placeholder address for a known instance.
func (g *Group) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.begin(ctx, "ConnectInfo", id); err != nil {
		return provider.ConnectInfo{}, err
	}
	if _, ok := g.instances[id]; !ok {
		return provider.ConnectInfo{}, fmt.Errorf("connect info %s: %w", id, provider.ErrNotFound)
	}
	return provider.ConnectInfo{ID: id, InternalAddr: "127.0.0.1",
		ConnectorConfig: provider.ConnectorConfig{OS: "linux", Arch: "amd64", Protocol: provider.ProtocolSSH}}, nil
}

// Heartbeat fails for unknown instances and for those marked unhealthy.
func (g *Group) Heartbeat(ctx context.Context, id string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.begin(ctx, "Heartbeat", id); err != nil {
		return err
	}
	in, ok := g.instances[id]
	switch {
	case !ok:
		return fmt.Errorf("heartbeat %s: %w", id, provider.ErrNotFound)
	case in.unhealthy:
		return fmt.Errorf("heartbeat %s: %w", id, provider.ErrInstanceUnhealthy)
	}
	return nil
}

// Shutdown counts its calls; it never deletes instances.
func (g *Group) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shutdowns++
	return g.begin(ctx, "Shutdown", nil)
}
