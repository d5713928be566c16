package coord

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/internal/etcdtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

const testOwner = "https://gitlab.example|shared"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// manager is one runner manager of the tests: a Node and its Group over a shared
// fake instance group (the cloud every manager's plugin sees).
type manager struct {
	id string
	n  *Node
	g  *Group
}

type harness struct {
	t       testing.TB
	cluster *etcdtest.Cluster
	group   *fake.Group
	ttl     time.Duration
	opts    taskscaler.Options
	wrapKV  func(clientv3.KV) clientv3.KV // the managers' etcd answers, when set
}

func newHarness(t *testing.T, members int) *harness { return newHarnessTB(t, members) }

func newHarnessTB(t testing.TB, members int) *harness {
	t.Helper()
	return &harness{t: t, cluster: etcdtest.Start(t, members), group: fake.New(fake.Options{}), ttl: 2 * time.Second,
		opts: taskscaler.Options{CapacityPerInstance: 2, MaxInstances: 8, Policies: []taskscaler.Policy{{IdleCount: 2, IdleTime: time.Hour}},
			UpdateInterval: 50 * time.Millisecond, UpdateIntervalWhenExpecting: 20 * time.Millisecond, InstanceAcquireTimeout: 20 * time.Second}}
}

// join starts manager id on endpoints.
func (h *harness) join(id string, endpoints []string) *manager {
	h.t.Helper()
	cfg := &config.Coordination{Endpoints: endpoints, LeaseTTL: config.Duration{Duration: h.ttl}, Prefix: "/test"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := Open(ctx, cfg, id, Options{Logger: quiet(), wrapKV: h.wrapKV})
	if err != nil {
		h.t.Fatalf("Open %s: %v", id, err)
	}
	m := &manager{id: id, n: n}
	info := provider.ProviderInfo{ID: "fake"}
	m.g = n.Join(testOwner, GroupOptions{Logger: quiet(), AcquireTimeout: h.opts.InstanceAcquireTimeout,
		ConnectInfo: h.group.ConnectInfo,
		Lead: func(ctx context.Context, store *Store, held []taskscaler.Held) (Scaler, error) {
			o := h.opts
			o.Store, o.Held, o.Info, o.Owner, o.Logger = store, held, &info, testOwner, quiet()
			return taskscaler.New(ctx, store.Fenced(h.group), o)
		}})
	h.t.Cleanup(m.stop)
	return m
}

// three starts three managers on the cluster and returns the one elected and the
// two others.
func (h *harness) three() (leader *manager, rest []*manager) {
	h.t.Helper()
	ms := []*manager{h.join("m1", h.cluster.Endpoints()), h.join("m2", h.cluster.Endpoints()), h.join("m3", h.cluster.Endpoints())}
	leader = leaderOf(h.t, ms...)
	for _, m := range ms {
		if m != leader {
			rest = append(rest, m)
		}
	}
	return leader, rest
}

// stop is a clean stop: the group resigns, the lease is revoked.
func (m *manager) stop() {
	if m.n == nil {
		return
	}
	m.g.Close()
	m.n.Close()
	m.n = nil
}

// die is kill -9 for an in-process manager: its keepalives stop, nothing is
// revoked or resigned, so its lease runs out in etcd after the TTL.
func (m *manager) die() {
	m.n.cancel()
	m.n.cli.Close()
	// What is left of it winds down in the background; nothing reaches etcd.
	go m.g.Close()
	m.n = nil
}

func leaderOf(t testing.TB, ms ...*manager) *manager {
	t.Helper()
	var l *manager
	eventually.True(t, "a leader elected", 15*time.Second, func() bool {
		for _, m := range ms {
			if m.n != nil && m.g.Leading() {
				l = m
				return true
			}
		}
		return false
	})
	return l
}

// audit checks the history of every slot key from rev on: each acquisition creates
// the key (version 1), each release deletes it, so a slot handed out twice would show
// as a put onto a live key.
func audit(t testing.TB, cli *clientv3.Client, pfx string, rev int64) (acquisitions, twice int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A sentinel under the prefix marks the end of the history to read.
	sentinel := pfx + "/slots/~audit-end"
	if _, err := cli.Put(ctx, sentinel, ""); err != nil {
		t.Fatal(err)
	}
	defer cli.Delete(context.Background(), sentinel)
	live := map[string]bool{}
	wch := cli.Watch(ctx, pfx+"/slots/", clientv3.WithPrefix(), clientv3.WithRev(rev))
	for wr := range wch {
		if wr.Err() != nil {
			t.Fatalf("audit watch: %v", wr.Err())
		}
		for _, ev := range wr.Events {
			k := string(ev.Kv.Key)
			if k == sentinel {
				return acquisitions, twice
			}
			if _, _, ok := parseSlotKey(pfx, k); !ok {
				t.Errorf("audit: stray key %s", k)
			}
			switch ev.Type {
			case mvccpb.PUT:
				if ev.Kv.Version != 1 || live[k] {
					t.Errorf("audit: slot %s written while held (version %d): %s", k, ev.Kv.Version, ev.Kv.Value)
					twice++
				}
				live[k] = true
				acquisitions++
			case mvccpb.DELETE:
				live[k] = false
			}
		}
	}
	t.Fatal("audit: the slot keys' history ended before its end mark")
	return acquisitions, twice
}

func startRev(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), "x")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision + 1
}

// holders tracks which job holds which slot, as the jobs see it.
type holders struct {
	mu   sync.Mutex
	held map[string]string
	errs []string
}

func (h *holders) take(a *Acquisition, key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := fmt.Sprintf("%s/%d", a.InstanceID(), a.Slot())
	if other, ok := h.held[s]; ok {
		h.errs = append(h.errs, fmt.Sprintf("slot %s given to %s while %s holds it", s, key, other))
	}
	h.held[s] = key
}

func (h *holders) give(a *Acquisition) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.held, fmt.Sprintf("%s/%d", a.InstanceID(), a.Slot()))
}

// run is one job on m: reserve (retrying while there is no capacity), acquire,
// hold for a moment, release.
func run(ctx context.Context, m *manager, key string, h *holders) error {
	for {
		err := m.g.Reserve(ctx, key)
		if err == nil {
			break
		}
		// A leader with no capacity answers so; one that does not answer at all
		// (within a lease TTL and some) has lost the request.
		if !errors.Is(err, taskscaler.ErrNoCapacity) || errors.Is(err, errNoAnswer) || ctx.Err() != nil {
			return fmt.Errorf("reserve %s: %w", key, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	a, err := m.g.Acquire(ctx, key)
	if err != nil {
		return fmt.Errorf("acquire %s: %w", key, err)
	}
	h.take(a, key)
	h.give(a)
	m.g.Release(key)
	return nil
}

// runJobs runs jobs jobs through the managers in turn, parallel at a time, and fails
// t for every job that failed and every slot the jobs saw held twice.
func runJobs(ctx context.Context, t testing.TB, ms []*manager, jobs, parallel int) {
	t.Helper()
	hs := &holders{held: map[string]string{}}
	var wg sync.WaitGroup
	errs := make(chan error, jobs)
	sem := make(chan struct{}, parallel)
	for i := range jobs {
		m := ms[i%len(ms)]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := run(ctx, m, fmt.Sprintf("job-%d", i), hs); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, e := range hs.errs {
		t.Error(e)
	}
}

func TestJobsThroughThreeManagers(t *testing.T) {
	h := newHarness(t, 3)
	cli := h.cluster.Client(t)
	rev := startRev(t, cli)
	ms := []*manager{h.join("m1", h.cluster.Endpoints()), h.join("m2", h.cluster.Endpoints()), h.join("m3", h.cluster.Endpoints())}
	leaderOf(t, ms...)

	const jobs = 300
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runJobs(ctx, t, ms, jobs, 24)
	if n, _ := audit(t, cli, ms[0].g.Prefix(), rev); n != jobs {
		t.Errorf("audit: %d acquisitions recorded, want %d (one per job)", n, jobs)
	}
	st := ms[1].g.Status()
	if st.Coordination == nil || len(st.Coordination.Managers) != 3 || st.Coordination.Leader == "" {
		t.Fatalf("status coordination: %+v", st.Coordination)
	}
}

func TestLeaderDeathTakeover(t *testing.T) {
	h := newHarness(t, 3)
	cli := h.cluster.Client(t)
	leader, followers := h.three()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A follower's job holds a slot across the leader's death.
	if err := followers[0].g.Reserve(ctx, "long"); err != nil {
		t.Fatal(err)
	}
	a, err := followers[0].g.Acquire(ctx, "long")
	if err != nil {
		t.Fatal(err)
	}
	leader.die()
	died := time.Now()
	next := leaderOf(t, followers...)
	took := time.Since(died)
	if took > h.ttl+5*time.Second {
		t.Errorf("new leader after %s; want within about one lease TTL (%s)", took, h.ttl)
	}
	// The held slot survives the takeover and is not handed out again.
	if a.Context().Err() != nil {
		t.Fatalf("held slot ended by the takeover: %v", context.Cause(a.Context()))
	}
	sc, _ := next.g.Scaler()
	if _, ok := sc.Acquisition(scalerKey(followers[0].id, "long")); !ok {
		t.Fatal("the new leader did not take over the held slot")
	}
	hs := &holders{held: map[string]string{}}
	hs.take(a, "long")
	for i := range 6 {
		if err := run(ctx, followers[i%2], fmt.Sprintf("after-%d", i), hs); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range hs.errs {
		t.Error(e)
	}
	followers[0].g.Release("long")
	resp, err := cli.Get(ctx, followers[0].g.Prefix()+"/slots/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("slots left held: %v %v", resp, err)
	}
}

func TestManagerCutOffLosesItsSlots(t *testing.T) {
	h := newHarness(t, 3)
	proxy := h.cluster.Proxy(t)
	m1 := h.join("m1", h.cluster.Endpoints())
	leaderOf(t, m1)
	cut := h.join("cut", proxy.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cut.g.Reserve(ctx, "j"); err != nil {
		t.Fatal(err)
	}
	a, err := cut.g.Acquire(ctx, "j")
	if err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	// The cut-off manager aborts its job once its lease is gone...
	select {
	case <-a.Context().Done():
	case <-time.After(h.ttl + 10*time.Second):
		t.Fatal("the job of a manager cut off from etcd was not ended")
	}
	if cause := context.Cause(a.Context()); !errors.Is(cause, ErrLost) || !strings.Contains(cause.Error(), "instance unexpectedly lost") {
		t.Fatalf("cause = %v", cause)
	}
	// ...and gets no job while cut off.
	if err := cut.g.Reserve(ctx, "k"); !errors.Is(err, taskscaler.ErrNoCapacity) {
		t.Fatalf("reserve while cut off: %v", err)
	}
	// The leader released the slot as lost and retires the instance.
	sc, _ := m1.g.Scaler()
	eventually.True(t, "instance retired", 10*time.Second, func() bool {
		st, ok := sc.Explain(a.InstanceID())
		return !ok || (st.Removing && strings.Contains(st.RemoveReason, "lost its etcd lease"))
	})
	// The pool keeps serving the others.
	hs := &holders{held: map[string]string{}}
	if err := run(ctx, m1, "other", hs); err != nil {
		t.Fatal(err)
	}
	proxy.Restore()
	eventually.True(t, "the cut-off manager serves again", 15*time.Second, func() bool {
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
		defer rcancel()
		err := cut.g.Reserve(rctx, "again")
		if err == nil {
			cut.g.Unreserve("again")
		}
		return err == nil
	})
}

func TestEtcdMemberLoss(t *testing.T) {
	h := newHarness(t, 3)
	ms := []*manager{h.join("m1", h.cluster.Endpoints()), h.join("m2", h.cluster.Endpoints())}
	leaderOf(t, ms...)
	h.cluster.Member(h.cluster.Leader(t)).Stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hs := &holders{held: map[string]string{}}
	for i := range 10 {
		if err := run(ctx, ms[i%2], fmt.Sprintf("j%d", i), hs); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range ms {
		if st := m.g.Status(); !st.Coordination.Connected {
			t.Errorf("%s disconnected after one member of three stopped", m.id)
		}
	}
}

// TestDeposedLeaderIsFenced: once its election key is gone, a leader's writes to the
// inventory and its Increase and Decrease are refused, so a leader that has not yet
// noticed its deposition can neither record, create nor delete.
func TestDeposedLeaderIsFenced(t *testing.T) {
	c := etcdtest.Start(t, 1)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(sess, "/fence/election")
	if err := e.Campaign(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	store := NewStore(cli, "/fence/inventory/", clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()), 5*time.Second)
	g := fake.New(fake.Options{})
	fenced := store.Fenced(g)
	if err := store.Apply(ctx, "o", state.Batch{Put: []state.Instance{{ID: "a"}}}); err != nil {
		t.Fatalf("leader's write: %v", err)
	}
	if n, err := fenced.Increase(ctx, 1); err != nil || n != 1 {
		t.Fatalf("leader's Increase: %d %v", n, err)
	}
	if err := e.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if err := store.Apply(ctx, "o", state.Batch{Put: []state.Instance{{ID: "b"}}}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's write: %v", err)
	}
	if _, err := fenced.Increase(ctx, 1); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's Increase: %v", err)
	}
	if _, err := fenced.Decrease(ctx, []string{"fake-0001"}); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("deposed leader's Decrease: %v", err)
	}
	for _, call := range g.Calls() {
		if call.Method == "Decrease" {
			t.Fatalf("Decrease reached the plugin after the deposition")
		}
	}
	snap, err := store.Load(ctx, "o")
	if err != nil || len(snap.Instances) != 1 || snap.Instances[0].ID != "a" {
		t.Fatalf("inventory after the refused write: %+v %v", snap, err)
	}
}

// TestFencedGroupKeepsHeartbeat: the fenced plugin still answers the taskscaler's
// Heartbeat, so an unhealthy instance is seen as such under a leader too.
func TestFencedGroupKeepsHeartbeat(t *testing.T) {
	g := fake.New(fake.Options{})
	fenced := (&Store{}).Fenced(g)
	hb, ok := fenced.(provider.Heartbeater)
	if !ok {
		t.Fatal("the fenced group hides Heartbeat")
	}
	if err := hb.Heartbeat(context.Background(), "nope"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("Heartbeat of an unknown instance: %v; want the plugin's own answer", err)
	}
}

// parseSlotKey is the inverse of slotKey (the audit reads the slot keys' history with it).
func parseSlotKey(pfx, k string) (instance string, slot int, ok bool) {
	rest, ok := strings.CutPrefix(k, pfx+"/slots/")
	if !ok {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(rest[i+1:])
	return rest[:i], n, err == nil
}

// TestPinsSharedByManagers: a host key one manager pinned is what another manager
// finds, and a forgotten pin is gone for both.
func TestPinsSharedByManagers(t *testing.T) {
	h := newHarness(t, 1)
	m1, m2 := h.join("m1", h.cluster.Endpoints()), h.join("m2", h.cluster.Endpoints())
	p1, p2 := m1.n.Pins(testOwner), m2.n.Pins(testOwner)
	other := m1.n.Pins("https://gitlab.example|another pool")
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := p2.Lookup("i-1"); err != nil || got != nil {
		t.Fatalf("lookup before any pin: %v %v", got, err)
	}
	if err := p1.Pin("i-1", key); err != nil {
		t.Fatal(err)
	}
	got, err := p2.Lookup("i-1")
	if err != nil || got == nil || !bytes.Equal(got.Marshal(), key.Marshal()) {
		t.Fatalf("the other manager's lookup: %v %v; want the pinned key", got, err)
	}
	if got, _ := other.Lookup("i-1"); got != nil {
		t.Fatal("a pin of one pool is seen by another")
	}
	if err := p2.Forget("i-1"); err != nil {
		t.Fatal(err)
	}
	if got, err := p1.Lookup("i-1"); err != nil || got != nil {
		t.Fatalf("lookup after the pin was forgotten: %v %v", got, err)
	}
	if !strings.Contains(p1.String(), "/pins/") {
		t.Errorf("String() = %q", p1.String())
	}
}
