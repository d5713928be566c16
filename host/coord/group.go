package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Scaler is what the leader needs of its taskscaler (a *taskscaler.Scaler).
type Scaler interface {
	Reserve(ctx context.Context, key string) error
	Unreserve(key string)
	Acquire(ctx context.Context, key string) (*taskscaler.Acquisition, error)
	Acquisition(key string) (*taskscaler.Acquisition, bool)
	Release(key string)
	ReleaseLost(key, why string)
	Status() taskscaler.Status
	Explain(id string) (taskscaler.InstanceStatus, bool)
	Shutdown(ctx context.Context) error
}

// LeadFunc starts the pool's taskscaler when this manager becomes the leader, over
// the inventory in store, with the slots the managers hold, and with the plugin
// wrapped by store.Fenced.
type LeadFunc func(ctx context.Context, store *Store, held []taskscaler.Held) (Scaler, error)

// GroupOptions say how a manager takes part in one pool.
type GroupOptions struct {
	// Lead starts the taskscaler when this manager leads.
	Lead LeadFunc
	// ConnectInfo asks this manager's own plugin how to reach an instance.
	ConnectInfo func(ctx context.Context, id string) (provider.ConnectInfo, error)
	// AcquireTimeout is instance_acquire_timeout: the leader gives up on a slot after
	// it; this manager waits that long plus a lease TTL (for a leader to take over).
	AcquireTimeout time.Duration
	// OnLeading, if set, is called with true when this manager starts leading the
	// pool and with false when it stops.
	OnLeading func(bool)
	Logger    *slog.Logger
}

// Group is this manager's part in one shared pool: it asks for slots like every
// manager and, while elected, serves them.
type Group struct {
	n     *Node
	owner string
	pfx   string
	o     GroupOptions
	log   *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	sess     *concurrency.Session
	sessDone chan struct{}      // closed when sess is replaced
	sessStop context.CancelFunc // ends the goroutines of sess
	waiters  map[string]chan grant
	acqs     map[string]*Acquisition
	broker   *broker
	closed   bool
}

// want is a manager's request for a slot: "reserve" before it asks GitLab for a job,
// "acquire" when the job is there.
type want struct {
	Op string    `json:"op"`
	At time.Time `json:"at"`
}

// grant is the leader's answer to the want of revision WantRev; Revoked, written
// later, takes a held slot back (its instance disappeared).
type grant struct {
	WantRev    int64  `json:"want_rev"`
	Reserved   bool   `json:"reserved,omitempty"`
	Instance   string `json:"instance,omitempty"`
	Slot       int    `json:"slot"`
	Error      string `json:"error,omitempty"`
	NoCapacity bool   `json:"no_capacity,omitempty"`
	Revoked    string `json:"revoked,omitempty"`
}

// slotRecord is the value of a held slot's key (the audit trail of acquisitions is
// the key's history: each acquisition creates it, each release deletes it).
type slotRecord struct {
	Manager  string    `json:"manager"`
	Key      string    `json:"key"`
	Instance string    `json:"instance"`
	Slot     int       `json:"slot"`
	Since    time.Time `json:"since"`
}

// Join makes this manager part of the pool owner ("<URL>|<runner name>", the same on
// every manager of the pool).
func (n *Node) Join(owner string, o GroupOptions) *Group {
	log := o.Logger
	if log == nil {
		log = n.log
	}
	g := &Group{n: n, owner: owner, pfx: n.poolPrefix(owner), o: o,
		log:     log.With("subsystem", "coordination", "manager", n.id),
		waiters: map[string]chan grant{}, acqs: map[string]*Acquisition{}}
	g.ctx, g.cancel = context.WithCancel(n.ctx)
	n.mu.Lock()
	n.groups[g] = true
	sess := n.sess
	n.mu.Unlock()
	g.setSession(sess)
	return g
}

// poolPrefix is where the keys of the pool owner live.
func (n *Node) poolPrefix(owner string) string { return n.pfx + "/pools/" + url.PathEscape(owner) }

// Prefix returns the pool's key prefix in etcd.
func (g *Group) Prefix() string { return g.pfx }

func (g *Group) wantKey(mgr, key string) string {
	return g.pfx + "/wants/" + mgr + "/" + url.PathEscape(key)
}

func (g *Group) grantKey(mgr, key string) string {
	return g.pfx + "/grants/" + mgr + "/" + url.PathEscape(key)
}

func (g *Group) slotKey(instance string, slot int) string {
	return g.pfx + "/slots/" + url.PathEscape(instance) + "/" + strconv.Itoa(slot)
}

// splitKey splits "<pfx><manager>/<escaped key>".
func splitKey(pfx, k string) (mgr, key string, ok bool) {
	rest, ok := strings.CutPrefix(k, pfx)
	if !ok {
		return "", "", false
	}
	mgr, esc, ok := strings.Cut(rest, "/")
	if !ok {
		return "", "", false
	}
	key, err := url.PathUnescape(esc)
	return mgr, key, err == nil
}

// setSession switches the group to a new session (nil: none). Whatever the old one
// held is gone with its lease: the jobs on its slots end with ErrLost, and requests
// waiting for an answer fail.
func (g *Group) setSession(sess *concurrency.Session) {
	// Grants are watched from the revision the session starts at, so that no answer
	// to a want of this session can come before the watch.
	rev := int64(0)
	if sess != nil {
		ctx, cancel := context.WithTimeout(g.ctx, g.n.ttl)
		if resp, err := g.n.cli.Get(ctx, g.pfx+"/grants/"+g.n.id+"/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err == nil {
			rev = resp.Header.Revision + 1
		}
		cancel()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if sess != nil && sess == g.sess && !g.closed {
		return // told twice (Join and the node's first notice)
	}
	if g.sessStop != nil {
		g.sessStop()
		close(g.sessDone)
		g.sessStop = nil
	}
	for key, a := range g.acqs {
		a.cancel(fmt.Errorf("%w: runner manager %s lost its etcd session (no answer from etcd for lease_ttl %s), so its slot on %s may be given to another job", ErrLost, g.n.id, g.n.ttl, a.id))
		delete(g.acqs, key)
	}
	g.sess = sess
	if sess == nil || g.closed {
		return
	}
	ctx, stop := context.WithCancel(g.ctx)
	g.sessStop, g.sessDone = stop, make(chan struct{})
	g.wg.Add(2)
	go func() { defer g.wg.Done(); g.watchGrants(ctx, rev) }()
	go func() { defer g.wg.Done(); g.campaign(ctx, sess) }()
}

func (g *Group) session() (*concurrency.Session, chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sess, g.sessDone
}

// watchGrants hands the leader's answers to the waiting requests and revokes the
// slots the leader takes back.
func (g *Group) watchGrants(ctx context.Context, rev int64) {
	pfx := g.pfx + "/grants/" + g.n.id + "/"
	for ctx.Err() == nil {
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		for resp := range g.n.cli.Watch(clientv3.WithRequireLeader(ctx), pfx, opts...) {
			if resp.CompactRevision > 0 {
				rev = resp.CompactRevision // history before it is gone: go on from there
			}
			if resp.Err() != nil {
				break
			}
			for _, ev := range resp.Events {
				rev = ev.Kv.ModRevision + 1
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				_, key, ok := splitKey(g.pfx+"/grants/", string(ev.Kv.Key))
				var gr grant
				if !ok || json.Unmarshal(ev.Kv.Value, &gr) != nil {
					continue
				}
				g.deliver(key, gr)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (g *Group) deliver(key string, gr grant) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gr.Revoked != "" {
		if a, ok := g.acqs[key]; ok {
			a.cancel(fmt.Errorf("%w: %s", taskscaler.ErrInstanceUnexpectedlyRemoved, gr.Revoked))
		}
		return
	}
	if ch, ok := g.waiters[key]; ok {
		select {
		case ch <- gr:
		default:
		}
	}
}

// clientRetry is how long, beyond a lease TTL, a manager retries writing its requests:
// etcd elects a new leader of its own in a few seconds.
const clientRetry = 5 * time.Second

// retry runs op until it succeeds, ctx ends, or within has passed. A request that
// meets a change of etcd's own leader fails ("request timed out") although quorum
// holds; the operations retried here are idempotent or guarded by a comparison.
func retry(ctx context.Context, within time.Duration, op func(context.Context) error) error {
	deadline := time.Now().Add(within)
	wait := 50 * time.Millisecond
	for {
		err := op(ctx)
		if err == nil || ctx.Err() != nil || !time.Now().Add(wait).Before(deadline) {
			return err
		}
		sleep(ctx, wait)
		wait = min(2*wait, time.Second)
	}
}

// errNoAnswer is a request's end when the leader's answer did not come in time.
var errNoAnswer = errors.New("the pool's leader did not answer")

// remoteError is an error the leader answered with; it is ErrNoCapacity when the
// leader's was.
type remoteError struct {
	msg   string
	noCap bool
}

func (e *remoteError) Error() string { return e.msg }

func (e *remoteError) Unwrap() error {
	if e.noCap {
		return taskscaler.ErrNoCapacity
	}
	return nil
}

// ask writes key's want with op and waits for the leader's answer to it, for at most
// timeout.
func (g *Group) ask(ctx context.Context, key, op string, timeout time.Duration) (grant, error) {
	sess, lost := g.session()
	if sess == nil {
		return grant{}, fmt.Errorf("%w: %w", taskscaler.ErrNoCapacity, ErrNotConnected)
	}
	ch := make(chan grant, 8)
	g.mu.Lock()
	if _, dup := g.waiters[key]; dup {
		g.mu.Unlock()
		return grant{}, fmt.Errorf("%s %q: a request with this key is already waiting", op, key)
	}
	g.waiters[key] = ch
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.waiters, key)
		g.mu.Unlock()
	}()
	// The want's value is unique (its time), so that a retry after an answer etcd
	// lost finds the want it had in fact written and waits for the leader's answer to
	// that one: writing it again would change the revision the leader answers.
	v, _ := json.Marshal(want{Op: op, At: time.Now().UTC()})
	wk := g.wantKey(g.n.id, key)
	var rev int64
	err := retry(ctx, g.n.ttl+clientRetry, func(ctx context.Context) error {
		resp, err := g.n.cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(wk), "=", string(v))).
			Then(clientv3.OpGet(wk)).
			Else(clientv3.OpPut(wk, string(v), clientv3.WithLease(sess.Lease())), clientv3.OpGet(wk)).Commit()
		if err != nil {
			return err
		}
		rs := resp.Responses
		kvs := rs[len(rs)-1].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return fmt.Errorf("want %s gone as it was written", wk)
		}
		rev = kvs[0].ModRevision
		return nil
	})
	if err != nil {
		return grant{}, fmt.Errorf("%w: ask the pool's leader for a slot: %w", taskscaler.ErrNoCapacity, err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case gr := <-ch:
			if gr.WantRev == rev {
				return gr, nil
			}
		case <-lost:
			return grant{}, fmt.Errorf("%w: %w: the etcd session ended while waiting for a slot", taskscaler.ErrNoCapacity, ErrNotConnected)
		case <-timer.C:
			g.forget(key, nil)
			return grant{}, fmt.Errorf("%w: %w within %s (is a manager elected? `runner pool status` shows the leader)", taskscaler.ErrNoCapacity, errNoAnswer, timeout)
		case <-ctx.Done():
			g.forget(key, nil)
			return grant{}, context.Cause(ctx)
		}
	}
}

// forget deletes key's want and grant, and the slot a holds (if a is set and the
// slot is still held under a's lease: after a lost lease it may be another's).
func (g *Group) forget(key string, a *Acquisition) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(g.ctx), 5*time.Second)
	defer cancel()
	del := []clientv3.Op{clientv3.OpDelete(g.wantKey(g.n.id, key)), clientv3.OpDelete(g.grantKey(g.n.id, key))}
	err := retry(ctx, g.n.ttl+clientRetry, func(ctx context.Context) error {
		if a != nil {
			sk := g.slotKey(a.id, a.slot)
			_, err := g.n.cli.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(sk), "=", a.lease)).
				Then(append(del, clientv3.OpDelete(sk))...).Else(del...).Commit()
			return err
		}
		_, err := g.n.cli.Txn(ctx).Then(del...).Commit()
		return err
	})
	if err != nil {
		// The keys are under this manager's lease: if they cannot be deleted now, they
		// go when it expires.
		g.log.Warn("release in etcd", "key", key, "err", err)
	}
}

// Reserve asks the leader to promise a slot to key (before this manager asks GitLab
// for a job). It fails, wrapping taskscaler.ErrNoCapacity, when the leader has no
// capacity, none is elected, or this manager is not connected.
func (g *Group) Reserve(ctx context.Context, key string) error {
	gr, err := g.ask(ctx, key, "reserve", g.n.ttl+5*time.Second)
	if err != nil {
		return err
	}
	if gr.Error != "" {
		g.forget(key, nil)
		return &remoteError{msg: gr.Error, noCap: gr.NoCapacity}
	}
	return nil
}

// Unreserve gives back key's reservation.
func (g *Group) Unreserve(key string) { g.forget(key, nil) }

// Acquire asks the leader for a slot for key (using key's reservation) and waits for
// it. The slot is held under this manager's lease until Release.
func (g *Group) Acquire(ctx context.Context, key string) (*Acquisition, error) {
	timeout := g.o.AcquireTimeout
	if timeout <= 0 {
		timeout = taskscaler.DefaultInstanceAcquireTimeout
	}
	gr, err := g.ask(ctx, key, "acquire", timeout+g.n.ttl)
	if err != nil {
		return nil, err
	}
	if gr.Error != "" {
		g.forget(key, nil)
		return nil, &remoteError{msg: gr.Error, noCap: gr.NoCapacity}
	}
	sess, _ := g.session()
	actx, cancel := context.WithCancelCause(context.WithoutCancel(g.ctx))
	a := &Acquisition{g: g, key: key, id: gr.Instance, slot: gr.Slot, ctx: actx, cancel: cancel}
	g.mu.Lock()
	if sess == nil || g.sess != sess {
		g.mu.Unlock()
		cancel(ErrLost)
		return nil, fmt.Errorf("%w: %w: the etcd session ended as the slot was granted", taskscaler.ErrNoCapacity, ErrNotConnected)
	}
	a.lease = sess.Lease()
	g.acqs[key] = a
	g.mu.Unlock()
	return a, nil
}

// Release gives back key's slot.
func (g *Group) Release(key string) {
	g.mu.Lock()
	a := g.acqs[key]
	delete(g.acqs, key)
	g.mu.Unlock()
	if a != nil {
		a.cancel(taskscaler.ErrReleased)
	}
	g.forget(key, a)
}

// Close stops serving (a leader resigns, so another takes over at once) and waits
// for the group's goroutines.
func (g *Group) Close() {
	g.n.mu.Lock()
	delete(g.n.groups, g)
	g.n.mu.Unlock()
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	g.wg.Wait()
	g.setSession(nil)
}

// Acquisition is a slot held by this manager.
type Acquisition struct {
	g      *Group
	key    string
	id     string
	slot   int
	lease  clientv3.LeaseID
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// InstanceID returns the instance the slot is on.
func (a *Acquisition) InstanceID() string { return a.id }

// Slot returns the slot's index on the instance.
func (a *Acquisition) Slot() int { return a.slot }

// ConnectInfo asks this manager's plugin how to reach the instance.
func (a *Acquisition) ConnectInfo(ctx context.Context) (provider.ConnectInfo, error) {
	ci, err := a.g.o.ConnectInfo(ctx, a.id)
	if err != nil {
		return ci, fmt.Errorf("connect info of instance %s: %w", a.id, err)
	}
	return ci, nil
}

// Context ends when the slot is released, taken back by the leader, or lost with
// this manager's session; context.Cause says which.
func (a *Acquisition) Context() context.Context { return a.ctx }

// WithContext returns a child of ctx that is also cancelled, with the same cause,
// when the acquisition's context is.
func (a *Acquisition) WithContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return taskscaler.LinkContext(ctx, a.ctx)
}
