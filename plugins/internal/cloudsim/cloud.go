package cloudsim

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"
)

// Clock tells the Cloud what time it is. Only Now is needed: the Cloud never sleeps.
type Clock interface {
	Now() time.Time
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

// VirtualClock is a Clock that moves only when told to, for deterministic tests and
// benchmarks. It is safe for concurrent use.
type VirtualClock struct {
	mu  sync.Mutex
	now time.Time
}

// NewVirtualClock returns a clock standing at start.
func NewVirtualClock(start time.Time) *VirtualClock { return &VirtualClock{now: start} }

// Now returns the clock's current time.
func (c *VirtualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *VirtualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// Distribution draws a delay, such as a VM's boot time.
type Distribution interface {
	Sample(r *rand.Rand) time.Duration
}

// Fixed is a Distribution that always returns the same delay.
type Fixed time.Duration

// Sample returns d.
func (d Fixed) Sample(*rand.Rand) time.Duration { return time.Duration(d) }

// LogNormal is a Distribution with the given median and 99th percentile, the usual shape
// of cloud boot times (most boots close to the median, a long tail).
type LogNormal struct {
	Median, P99 time.Duration
}

// Sample draws one delay.
func (l LogNormal) Sample(r *rand.Rand) time.Duration {
	if l.Median <= 0 {
		return 0
	}
	sigma := 0.0
	if l.P99 > l.Median {
		sigma = math.Log(float64(l.P99)/float64(l.Median)) / 2.326 // z of the 99th percentile
	}
	return time.Duration(float64(l.Median) * math.Exp(sigma*r.NormFloat64()))
}

// State is a VM's lifecycle state in the simulation; each fake maps it to its cloud's
// names (see the package documentation).
type State string

// The VM states.
const (
	Pending     State = "pending"
	Running     State = "running"
	Terminating State = "terminating"
	Terminated  State = "terminated"
)

// Live reports whether a VM in state s still belongs to its group.
func (s State) Live() bool { return s == Pending || s == Running || s == Terminating }

// Settings are a group's options that matter to autoscaling. The fakes map them to their
// cloud's fields; the plugins' doctor checks read them.
type Settings struct {
	// ScaleInProtection protects new VMs from being removed by the group itself when
	// its desired size drops (AWS NewInstancesProtectedFromScaleIn).
	ScaleInProtection bool
	// Rebalance lets the cloud move VMs between zones by replacing them (AWS AZRebalance
	// not suspended).
	Rebalance bool
	// Policies names the group's own autoscaling policies or autoscaler (AWS scaling
	// policies, a GCP autoscaler, an Azure autoscale setting).
	Policies []string
	// Overprovision makes the cloud create extra VMs and delete them once enough are
	// running (Azure VMSS overprovision).
	Overprovision bool
	// Zones the group spreads over; empty means one zone, "zone-a".
	Zones []string
	// Tags are copied onto every VM the group launches.
	Tags map[string]string
}

// Group is a group's configuration and current size, as given to CreateGroup and
// returned by GetGroup.
type Group struct {
	Name         string
	Min, Max     int
	Desired      int
	Capacity     int // most live VMs the group may have at once (launches beyond fail); 0 = no limit
	Settings     Settings
	LastError    string // why the latest launch attempt fell short, "" if it did not
	LaunchFailed int    // launch attempts refused for lack of capacity, in total
}

// VM is a snapshot of one simulated machine.
type VM struct {
	ID        string
	Group     string
	Zone      string
	State     State
	CreatedAt time.Time
	ReadyAt   time.Time // when it turns (or turned) running
	GoneAt    time.Time // when it turns (or turned) terminated; zero while not terminating
	PrivateIP string
	PublicIP  string
	Endpoint  Endpoint // set while running with a backend that serves something
	Protected bool     // protected from scale-in by the group
	// Overprovisioned marks an extra VM of a group with Settings.Overprovision: it is
	// deleted by the cloud ("overprovision") once the requested VMs are running.
	Overprovisioned bool
	Tags            map[string]string
	TermReason      string // who asked for the termination: an API operation or an event
}

// Options configure a Cloud. The zero value is usable.
type Options struct {
	// Clock is the simulation's time; default the real clock.
	Clock Clock
	// BootDelay is how long a VM stays pending; default 0 (running at the next call).
	BootDelay Distribution
	// StopDelay is how long a VM stays terminating; default 0.
	StopDelay Distribution
	// Capacity limits live VMs cloud-wide; 0 means no limit.
	Capacity int
	// Backend serves running VMs; default RecordBackend.
	Backend Backend
	// NewID names the n-th VM (n from 1); default "vm-%06d".
	NewID func(n int) string
	// Seed makes random draws (boot times) repeatable.
	Seed uint64
	// Families maps an operation to its throttling family; an unmapped operation is
	// its own family.
	Families map[string]string
	// ListLag keeps a new VM out of AllVMs and GetVM (the cloud's detailed instance
	// listing and lookup) for this long after it is created, as EC2's eventually
	// consistent DescribeInstances does; the group's own view (VMs) shows it at once.
	ListLag time.Duration
}

type vm struct {
	VM
	keys []pushedKey
}

type pushedKey struct {
	user    string
	key     string // authorized_keys form, trimmed
	expires time.Time
}

type bucket struct {
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	at     time.Time
}

type fault struct {
	err   error
	times int // left; <0 means forever
}

// Cloud is the simulated cloud. All methods are safe for concurrent use.
type Cloud struct {
	opts Options
	mu   sync.Mutex
	rnd  *rand.Rand

	groups    map[string]*Group
	vms       map[string]*vm
	order     []string // VM IDs in creation order
	created   int
	calls     map[string]int
	throttled map[string]int
	buckets   map[string]*bucket
	faults    map[string][]*fault
}

// New returns an empty cloud.
func New(opts Options) *Cloud {
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.BootDelay == nil {
		opts.BootDelay = Fixed(0)
	}
	if opts.StopDelay == nil {
		opts.StopDelay = Fixed(0)
	}
	if opts.Backend == nil {
		opts.Backend = &RecordBackend{}
	}
	if opts.NewID == nil {
		opts.NewID = func(n int) string { return fmt.Sprintf("vm-%06d", n) }
	}
	return &Cloud{
		opts:      opts,
		rnd:       rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15)),
		groups:    map[string]*Group{},
		vms:       map[string]*vm{},
		calls:     map[string]int{},
		throttled: map[string]int{},
		buckets:   map[string]*bucket{},
		faults:    map[string][]*fault{},
	}
}

// Now returns the simulation's current time.
func (c *Cloud) Now() time.Time { return c.opts.Clock.Now() }

// Close stops every VM's backend endpoint. The Cloud's state stays readable.
func (c *Cloud) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, id := range c.order {
		v := c.vms[id]
		if v.State == Running {
			errs = append(errs, c.opts.Backend.Stop(v.ID))
		}
	}
	return errors.Join(errs...)
}

// CreateGroup adds a group. Its Desired VMs are launched at the next call.
func (c *Cloud) CreateGroup(g Group) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g.Name == "" {
		return &Error{Kind: KindInvalid, Message: "group name is empty"}
	}
	if _, ok := c.groups[g.Name]; ok {
		return &Error{Kind: KindInvalid, Message: fmt.Sprintf("group %q already exists", g.Name)}
	}
	if g.Min < 0 || g.Max < g.Min || g.Desired < g.Min || g.Desired > g.Max {
		return &Error{Kind: KindInvalid, Message: fmt.Sprintf("group %q: need 0 <= min (%d) <= desired (%d) <= max (%d)", g.Name, g.Min, g.Desired, g.Max)}
	}
	if len(g.Settings.Zones) == 0 {
		g.Settings.Zones = []string{"zone-a"}
	}
	c.groups[g.Name] = &g
	return nil
}

// UpdateSettings changes a group's settings, as an operator would in the console.
func (c *Cloud) UpdateSettings(group string, fn func(*Group)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, ok := c.groups[group]
	if !ok {
		return notFoundGroup(group)
	}
	fn(g)
	return nil
}

// GetGroup returns a group's configuration and size.
func (c *Cloud) GetGroup(name string) (Group, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	g, ok := c.groups[name]
	if !ok {
		return Group{}, notFoundGroup(name)
	}
	out := *g
	out.Settings.Policies = slices.Clone(g.Settings.Policies)
	out.Settings.Zones = slices.Clone(g.Settings.Zones)
	out.Settings.Tags = maps.Clone(g.Settings.Tags)
	return out, nil
}

func notFoundGroup(name string) error {
	return &Error{Kind: KindNotFound, Message: fmt.Sprintf("group %q not found", name)}
}

// SetDesired sets a group's desired size. Growing launches VMs (as capacity allows);
// shrinking removes the group's newest unprotected VMs, as a group scaling itself in
// would, which is why the plugins want scale-in protection on.
func (c *Cloud) SetDesired(group string, n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	g, ok := c.groups[group]
	if !ok {
		return notFoundGroup(group)
	}
	if n < g.Min || n > g.Max {
		return &Error{Kind: KindInvalid, Message: fmt.Sprintf("desired size %d is outside the bounds of group %s (min %d, max %d)", n, g.Name, g.Min, g.Max)}
	}
	g.Desired = n
	c.reconcile(g)
	return nil
}

// Terminate ends VMs of a group on request (reason names the API operation). With
// decrement the group's desired size drops by one per VM, so nothing replaces them; it
// is refused (KindInvalid) if that would go below Min. Without it, the group launches
// replacements. Unknown IDs, or VMs of another group, give KindNotFound and are not
// touched; the others are still terminated. It returns the IDs it terminated.
func (c *Cloud) Terminate(group string, ids []string, decrement bool, reason string) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	g, ok := c.groups[group]
	if !ok {
		return nil, notFoundGroup(group)
	}
	var done []string
	var errs []error
	for _, id := range ids {
		v, ok := c.vms[id]
		if !ok || v.Group != group || !v.State.Live() {
			errs = append(errs, &Error{Kind: KindNotFound, Message: fmt.Sprintf("instance %s is not part of group %s", id, group)})
			continue
		}
		if v.State == Terminating {
			done = append(done, id) // already on its way out: idempotent
			continue
		}
		if decrement && !v.Overprovisioned { // an extra VM never counted towards the desired size
			if g.Desired-1 < g.Min {
				errs = append(errs, &Error{Kind: KindInvalid, Message: fmt.Sprintf("terminating %s would take group %s below its minimum size %d", id, group, g.Min)})
				continue
			}
			g.Desired--
		}
		c.terminate(v, reason)
		done = append(done, id)
	}
	c.reconcile(g)
	return done, errors.Join(errs...)
}

// Reclaim terminates a VM without any request from the plugin, as a spot reclaim, an
// operator or a rebalance would. The group launches a replacement.
func (c *Cloud) Reclaim(id, reason string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	v, ok := c.vms[id]
	if !ok || !v.State.Live() {
		return &Error{Kind: KindNotFound, Message: fmt.Sprintf("instance %s not found", id)}
	}
	c.terminate(v, "external:"+reason)
	c.reconcile(c.groups[v.Group])
	return nil
}

// VMs returns the live VMs of a group (pending, running, terminating) in creation order.
func (c *Cloud) VMs(group string) ([]VM, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	if _, ok := c.groups[group]; !ok {
		return nil, notFoundGroup(group)
	}
	var out []VM
	for _, id := range c.order {
		if v := c.vms[id]; v.Group == group && v.State.Live() {
			out = append(out, v.snapshot())
		}
	}
	return out, nil
}

// GetVM returns one VM, also a terminated one (clouds keep those listed for a while).
func (c *Cloud) GetVM(id string) (VM, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	v, ok := c.vms[id]
	if !ok || c.lagging(v) {
		return VM{}, &Error{Kind: KindNotFound, Message: fmt.Sprintf("instance %s not found", id)}
	}
	return v.snapshot(), nil
}

// lagging reports whether v is too new for the detailed listing (Options.ListLag).
func (c *Cloud) lagging(v *vm) bool {
	return c.opts.ListLag > 0 && c.opts.Clock.Now().Sub(v.CreatedAt) < c.opts.ListLag
}

// AllVMs returns every VM ever created, in creation order, except those still hidden
// by Options.ListLag.
func (c *Cloud) AllVMs() []VM {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	out := make([]VM, 0, len(c.order))
	for _, id := range c.order {
		if v := c.vms[id]; !c.lagging(v) {
			out = append(out, v.snapshot())
		}
	}
	return out
}

func (v *vm) snapshot() VM {
	out := v.VM
	out.Tags = make(map[string]string, len(v.Tags))
	for k, val := range v.Tags {
		out.Tags[k] = val
	}
	return out
}

// PushSSHKey authorizes publicKey (authorized_keys form) for user on a running VM for 60
// seconds of the Cloud's clock, as EC2 Instance Connect does.
func (c *Cloud) PushSSHKey(id, user, publicKey string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	v, ok := c.vms[id]
	if !ok || !v.State.Live() {
		return &Error{Kind: KindNotFound, Message: fmt.Sprintf("instance %s not found", id)}
	}
	if v.State != Running {
		return &Error{Kind: KindInvalid, Message: fmt.Sprintf("instance %s is not running", id)}
	}
	now := c.opts.Clock.Now()
	v.keys = slices.DeleteFunc(v.keys, func(k pushedKey) bool { return !now.Before(k.expires) })
	v.keys = append(v.keys, pushedKey{user: user, key: trimKey(publicKey), expires: now.Add(60 * time.Second)})
	return nil
}

// keyPushed reports whether key was pushed for user on VM id and has not expired. The
// SSH backend asks this during authentication.
func (c *Cloud) keyPushed(id, user, key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.vms[id]
	if !ok {
		return false
	}
	now := c.opts.Clock.Now()
	for _, k := range v.keys {
		if k.user == user && k.key == trimKey(key) && now.Before(k.expires) {
			return true
		}
	}
	return false
}

// Step brings the simulation up to the clock's time without an API call (benchmarks
// call it after advancing a virtual clock).
func (c *Cloud) Step() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
}

// advance finishes boots and terminations that are due and launches what groups miss.
// Call with c.mu.
func (c *Cloud) advance() {
	c.transitions()
	names := make([]string, 0, len(c.groups))
	for n := range c.groups {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c.reconcile(c.groups[n])
	}
	// VMs just launched with no boot delay are running at once.
	c.transitions()
}

// transitions finishes the boots and terminations that are due. Call with c.mu.
func (c *Cloud) transitions() {
	now := c.opts.Clock.Now()
	for _, id := range c.order {
		v := c.vms[id]
		switch {
		case v.State == Pending && !now.Before(v.ReadyAt):
			ep, err := c.opts.Backend.Start(BackendVM{ID: v.ID, Group: v.Group, Index: c.indexOf(v.ID), cloud: c})
			if err != nil {
				// The VM failed to boot: the cloud replaces it, as a health check would.
				c.terminate(v, "boot-failed: "+err.Error())
				continue
			}
			v.State, v.Endpoint = Running, ep
			if ep.Host != "" {
				v.PrivateIP, v.PublicIP = ep.Host, ep.Host
			}
		case v.State == Terminating && !now.Before(v.GoneAt):
			v.State = Terminated
		}
	}
}

func (c *Cloud) indexOf(id string) int {
	return slices.Index(c.order, id) + 1
}

// terminate starts a VM's termination. Call with c.mu.
func (c *Cloud) terminate(v *vm, reason string) {
	if v.State == Running {
		_ = c.opts.Backend.Stop(v.ID)
	}
	v.State, v.TermReason, v.Endpoint = Terminating, reason, Endpoint{}
	v.GoneAt = c.opts.Clock.Now().Add(c.opts.StopDelay.Sample(c.rnd))
	if !c.opts.Clock.Now().Before(v.GoneAt) {
		v.State = Terminated
	}
}

// reconcile launches or removes VMs until the group has Desired non-terminating VMs.
// Call with c.mu.
func (c *Cloud) reconcile(g *Group) {
	var active, extras []*vm // pending or running; extras are overprovisioned VMs
	live := 0
	for _, id := range c.order {
		v := c.vms[id]
		if v.Group != g.Name || (v.State != Pending && v.State != Running) {
			continue
		}
		if v.Overprovisioned {
			extras = append(extras, v)
		} else {
			active = append(active, v)
		}
	}
	for _, v := range c.vms {
		if v.State.Live() {
			live++
		}
	}
	// Scale in: newest unprotected first.
	for i := len(active) - 1; i >= 0 && len(active) > g.Desired; i-- {
		if active[i].Protected {
			continue
		}
		c.terminate(active[i], "scale-in")
		active = slices.Delete(active, i, i+1)
	}
	// Overprovisioned VMs go once every requested VM is running, as a VMSS deletes its
	// extra VMs when enough have succeeded.
	if len(extras) > 0 && !slices.ContainsFunc(active, func(v *vm) bool { return v.State == Pending }) {
		for _, v := range extras {
			c.terminate(v, "overprovision")
		}
	}
	g.LastError = ""
	groupLive := 0
	for _, v := range c.vms {
		if v.Group == g.Name && v.State.Live() {
			groupLive++
		}
	}
	launched := 0
	for len(active) < g.Desired {
		if !c.hasCapacity(g, live, groupLive) {
			break
		}
		active = append(active, c.launch(g))
		live++
		groupLive++
		launched++
	}
	if launched > 0 && g.Settings.Overprovision {
		for range (launched + 4) / 5 { // about 20% more, at least one
			if !c.hasCapacity(g, live, groupLive) {
				g.LastError = "" // the requested VMs did launch; only the extras did not
				break
			}
			c.launch(g).Overprovisioned = true
			live++
			groupLive++
		}
	}
}

// hasCapacity reports whether one more VM fits, recording why not in g.LastError.
// Call with c.mu.
func (c *Cloud) hasCapacity(g *Group, live, groupLive int) bool {
	switch {
	case c.opts.Capacity > 0 && live >= c.opts.Capacity:
		g.LastError = fmt.Sprintf("insufficient capacity: the cloud's %d VMs are all in use", c.opts.Capacity)
	case g.Capacity > 0 && groupLive >= g.Capacity:
		g.LastError = fmt.Sprintf("insufficient capacity: group %s may have at most %d VMs", g.Name, g.Capacity)
	default:
		return true
	}
	g.LaunchFailed++
	return false
}

// launch creates one pending VM in g. Call with c.mu.
func (c *Cloud) launch(g *Group) *vm {
	c.created++
	now := c.opts.Clock.Now()
	id := c.opts.NewID(c.created)
	n := c.created
	v := &vm{VM: VM{
		ID:        id,
		Group:     g.Name,
		Zone:      g.Settings.Zones[n%len(g.Settings.Zones)],
		State:     Pending,
		CreatedAt: now,
		ReadyAt:   now.Add(c.opts.BootDelay.Sample(c.rnd)),
		PrivateIP: fmt.Sprintf("10.%d.%d.%d", (n>>16)&0xff, (n>>8)&0xff, n&0xff),
		PublicIP:  fmt.Sprintf("203.0.113.%d", n%254+1),
		Protected: g.Settings.ScaleInProtection,
		Tags:      map[string]string{},
	}}
	for k, val := range g.Settings.Tags {
		v.Tags[k] = val
	}
	if _, dup := c.vms[id]; dup {
		panic(fmt.Sprintf("cloudsim: NewID returned %q twice", id))
	}
	c.vms[id] = v
	c.order = append(c.order, id)
	return v
}

// Check verifies the accounting: every VM ever created is live in the group that
// created it or terminated with a recorded reason, no ID is used twice, and no group
// has more non-terminating VMs than its desired size unless they are protected. It
// returns every violation found.
func (c *Cloud) Check() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	var errs []error
	if len(c.order) != len(c.vms) || len(c.order) != c.created {
		errs = append(errs, fmt.Errorf("%d VMs created but %d recorded (%d in order)", c.created, len(c.vms), len(c.order)))
	}
	seen := map[string]bool{}
	active := map[string]int{}
	for _, id := range c.order {
		if seen[id] {
			errs = append(errs, fmt.Errorf("VM %s was created twice", id))
		}
		seen[id] = true
		v := c.vms[id]
		if _, ok := c.groups[v.Group]; !ok {
			errs = append(errs, fmt.Errorf("VM %s belongs to unknown group %q", id, v.Group))
		}
		switch {
		case v.State == Pending || v.State == Running:
			active[v.Group]++
		case v.State == Terminating || v.State == Terminated:
			if v.TermReason == "" {
				errs = append(errs, fmt.Errorf("VM %s is %s but no request or event terminated it", id, v.State))
			}
		default:
			errs = append(errs, fmt.Errorf("VM %s is in unknown state %q", id, v.State))
		}
	}
	for name, g := range c.groups {
		if active[name] < g.Desired && g.LastError == "" {
			errs = append(errs, fmt.Errorf("group %s has %d active VMs for a desired size of %d, and no launch error", name, active[name], g.Desired))
		}
	}
	return errors.Join(errs...)
}

// Reasons counts terminated and terminating VMs by termination reason.
func (c *Cloud) Reasons() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.advance()
	out := map[string]int{}
	for _, v := range c.vms {
		if v.TermReason != "" {
			out[v.TermReason]++
		}
	}
	return out
}
