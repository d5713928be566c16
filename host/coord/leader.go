package coord

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// statusInterval is how often the leader publishes the pool's state for the other
// managers' status pages (only when it changed).
const statusInterval = 2 * time.Second

// campaign runs for as long as sess: it waits to be elected, leads, and when leading
// ends (the scaler could not start, the watch broke) resigns and tries again.
func (g *Group) campaign(ctx context.Context, sess *concurrency.Session) {
	e := concurrency.NewElection(sess, g.pfx+"/election")
	for ctx.Err() == nil {
		if err := e.Campaign(ctx, g.n.id); err != nil {
			if ctx.Err() == nil {
				g.log.Warn("campaign for the pool's leadership", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		started := time.Now()
		g.lead(ctx, e)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = e.Resign(rctx)
		cancel()
		if time.Since(started) < 5*time.Second {
			// A scaler that cannot start here may start on another manager.
			sleep(ctx, 2*time.Second)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// forever is how long the leader retries its answers, grants and revocations: for as
// long as it leads (its context ends with the leadership), since a manager waits for
// them.
const forever = 24 * time.Hour

// broker is the leader's side of a pool: it serves the managers' wants with the
// taskscaler and records the slots.
type broker struct {
	g     *Group
	sc    Scaler
	fence clientv3.Cmp
	ctx   context.Context
	wg    sync.WaitGroup

	mu    sync.Mutex
	wants map[string]*wantState
	last  []byte // the status last published
}

type wantState struct {
	mgr, key  string
	lease     clientv3.LeaseID
	acquiring bool
	acquired  bool
	cancel    context.CancelFunc
	instance  string
	slot      int
}

// scalerKey is the key a manager's request has in the leader's taskscaler: keys are
// unique per manager only.
func scalerKey(mgr, key string) string { return mgr + "/" + key }

// lead serves the pool while this manager's election key stands.
func (g *Group) lead(ctx context.Context, e *concurrency.Election) {
	fence := clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())
	// One consistent read of the slots held and the wants waiting.
	resp, err := g.n.cli.Txn(ctx).If(fence).Then(
		clientv3.OpGet(g.pfx+"/slots/", clientv3.WithPrefix()),
		clientv3.OpGet(g.pfx+"/wants/", clientv3.WithPrefix())).Commit()
	if err != nil || !resp.Succeeded {
		g.log.Warn("read the pool's slots and wants as its new leader", "err", err)
		return
	}
	slots, wants := resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs
	var held []taskscaler.Held
	heldBy := map[string]*mvccpb.KeyValue{} // want key → its slot's key
	for _, kv := range slots {
		var r slotRecord
		if json.Unmarshal(kv.Value, &r) != nil {
			continue
		}
		held = append(held, taskscaler.Held{Key: scalerKey(r.Manager, r.Key), InstanceID: r.Instance, Slot: r.Slot})
		heldBy[g.wantKey(r.Manager, r.Key)] = kv
	}
	started := time.Now()
	sc, err := g.o.Lead(ctx, NewStore(g.n.cli, g.pfx+"/inventory/", fence, g.n.ttl), held)
	if err != nil {
		g.log.Error("start the pool's taskscaler as its leader", "err", err)
		return
	}
	b := &broker{g: g, sc: sc, fence: fence, ctx: ctx, wants: map[string]*wantState{}}
	g.log.Info("leading the pool: scaling decisions are made here", "slots_held", len(held), "wants", len(wants), "took", time.Since(started).Round(time.Millisecond))
	g.mu.Lock()
	g.broker = b
	g.mu.Unlock()
	if g.o.OnLeading != nil {
		g.o.OnLeading(true)
	}
	defer func() {
		g.mu.Lock()
		g.broker = nil
		g.mu.Unlock()
		b.mu.Lock()
		for _, st := range b.wants {
			if st.cancel != nil {
				st.cancel()
			}
		}
		b.mu.Unlock()
		b.wg.Wait()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		if err := sc.Shutdown(sctx); err != nil {
			g.log.Warn("stop the pool's taskscaler", "err", err)
		}
		cancel()
		if g.o.OnLeading != nil {
			g.o.OnLeading(false)
		}
		g.log.Info("no longer leading the pool")
	}()

	// The held slots are the managers' running jobs: each is watched like a new one,
	// and one the taskscaler could not take over (its instance is not recorded) is
	// taken back from its manager.
	for wk, kv := range heldBy {
		var r slotRecord
		_ = json.Unmarshal(kv.Value, &r)
		st := &wantState{mgr: r.Manager, key: r.Key, acquired: true, instance: r.Instance, slot: r.Slot, lease: clientv3.LeaseID(kv.Lease)}
		b.wants[wk] = st
		if a, ok := sc.Acquisition(scalerKey(r.Manager, r.Key)); ok {
			b.watch(wk, st, a)
		} else {
			b.revoke(wk, st, fmt.Sprintf("instance %s is not in the pool's inventory", r.Instance))
		}
	}
	for _, kv := range wants {
		b.put(kv)
	}
	b.publish()
	rev := resp.Header.Revision + 1
	tick := time.NewTicker(statusInterval)
	defer tick.Stop()
	for {
		wch := g.n.cli.Watch(clientv3.WithRequireLeader(ctx), g.pfx+"/wants/", clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithPrevKV())
	events:
		for {
			select {
			case wr, ok := <-wch:
				if !ok || wr.Err() != nil {
					if wr.CompactRevision != 0 {
						g.log.Warn("wants watch compacted: reading the pool again", "revision", wr.CompactRevision)
						return
					}
					break events
				}
				for _, ev := range wr.Events {
					rev = ev.Kv.ModRevision + 1
					if ev.Type == clientv3.EventTypePut {
						b.put(ev.Kv)
					} else {
						b.gone(ev.Kv)
					}
				}
			case <-tick.C:
				b.publish()
			case <-ctx.Done():
				return
			}
		}
		// The watch broke (the member it was on went away): still the leader?
		if ctx.Err() != nil {
			return
		}
		r, err := g.n.cli.Txn(ctx).If(fence).Commit()
		if err == nil && !r.Succeeded {
			g.log.Warn("the pool's election key is gone: leadership lost")
			return
		}
		sleep(ctx, 100*time.Millisecond)
	}
}

// put serves a want that was written or changed.
func (b *broker) put(kv *mvccpb.KeyValue) {
	wk := string(kv.Key)
	mgr, key, ok := splitKey(b.g.pfx+"/wants/", wk)
	var w want
	if !ok || json.Unmarshal(kv.Value, &w) != nil {
		return
	}
	sk := scalerKey(mgr, key)
	b.mu.Lock()
	st := b.wants[wk]
	switch w.Op {
	case "reserve":
		if st != nil {
			b.mu.Unlock()
			return
		}
		st = &wantState{mgr: mgr, key: key, lease: clientv3.LeaseID(kv.Lease)}
		b.wants[wk] = st
		b.mu.Unlock()
		err := b.sc.Reserve(b.ctx, sk)
		if err != nil {
			b.mu.Lock()
			if b.wants[wk] == st {
				delete(b.wants, wk)
			}
			b.mu.Unlock()
		}
		b.answer(mgr, key, kv, grantOf(kv.ModRevision, err))
	case "acquire":
		if st != nil && (st.acquiring || st.acquired) {
			b.mu.Unlock()
			return
		}
		if st == nil {
			st = &wantState{mgr: mgr, key: key}
			b.wants[wk] = st
		}
		st.lease = clientv3.LeaseID(kv.Lease)
		actx, cancel := context.WithCancel(b.ctx)
		st.acquiring, st.cancel = true, cancel
		b.mu.Unlock()
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer cancel()
			b.acquire(actx, wk, st, kv)
		}()
	default:
		b.mu.Unlock()
	}
}

func grantOf(wantRev int64, err error) grant {
	if err != nil {
		return grant{WantRev: wantRev, Error: err.Error(), NoCapacity: errors.Is(err, taskscaler.ErrNoCapacity)}
	}
	return grant{WantRev: wantRev, Reserved: true}
}

// answer writes the grant for the want kv, if the want is still the one answered.
func (b *broker) answer(mgr, key string, kv *mvccpb.KeyValue, gr grant) {
	v, _ := json.Marshal(gr)
	err := retry(b.ctx, forever, func(ctx context.Context) error {
		_, err := b.g.n.cli.Txn(ctx).
			If(b.fence, clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision)).
			Then(clientv3.OpPut(b.g.grantKey(mgr, key), string(v), clientv3.WithLease(clientv3.LeaseID(kv.Lease)))).Commit()
		return err
	})
	if err != nil && b.ctx.Err() == nil {
		b.g.log.Warn("answer a slot request", "manager", mgr, "key", key, "err", err)
	}
}

// acquire gets a slot from the taskscaler and records it: the slot's key is created
// under the asking manager's lease only while this manager leads, the want is the
// one being served, and nobody holds the slot. Otherwise the slot goes back.
func (b *broker) acquire(ctx context.Context, wk string, st *wantState, kv *mvccpb.KeyValue) {
	sk := scalerKey(st.mgr, st.key)
	a, err := b.sc.Acquire(ctx, sk)
	done := func(acquired bool) {
		b.mu.Lock()
		st.acquiring, st.acquired, st.cancel = false, acquired, nil
		b.mu.Unlock()
	}
	if err != nil {
		done(false)
		b.answer(st.mgr, st.key, kv, grantOf(kv.ModRevision, err))
		return
	}
	slotK := b.g.slotKey(a.InstanceID(), a.Slot())
	rec, _ := json.Marshal(slotRecord{Manager: st.mgr, Key: st.key, Instance: a.InstanceID(), Slot: a.Slot(), Since: time.Now().UTC()})
	gr, _ := json.Marshal(grant{WantRev: kv.ModRevision, Instance: a.InstanceID(), Slot: a.Slot()})
	lease := clientv3.WithLease(clientv3.LeaseID(kv.Lease))
	var resp *clientv3.TxnResponse
	err = retry(b.ctx, forever, func(ctx context.Context) error {
		var err error
		resp, err = b.g.n.cli.Txn(ctx).
			If(b.fence, clientv3.Compare(clientv3.ModRevision(wk), "=", kv.ModRevision), clientv3.Compare(clientv3.CreateRevision(slotK), "=", 0)).
			Then(clientv3.OpPut(slotK, string(rec), lease), clientv3.OpPut(b.g.grantKey(st.mgr, st.key), string(gr), lease)).
			Else(clientv3.OpGet(slotK)).Commit()
		return err
	})
	if err == nil && !resp.Succeeded && ownSlot(resp, st) {
		// An attempt that timed out had in fact been applied: the slot is this want's.
		resp.Succeeded = true
	}
	if err != nil || !resp.Succeeded {
		b.sc.Release(sk)
		done(false)
		if err == nil {
			if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				// The taskscaler thought the slot free: a held slot it did not take over.
				b.g.log.Error("slot already held in etcd; not handed out twice", "slot", slotK, "holder", string(kvs[0].Value), "for", sk)
				b.answer(st.mgr, st.key, kv, grant{WantRev: kv.ModRevision, Error: fmt.Sprintf("slot %d of instance %s is already held; try again", a.Slot(), a.InstanceID())})
			}
		}
		return
	}
	b.mu.Lock()
	st.acquiring, st.acquired, st.cancel = false, true, nil
	st.instance, st.slot = a.InstanceID(), a.Slot()
	b.mu.Unlock()
	b.watch(wk, st, a)
}

// ownSlot reports whether the Else branch of the grant transaction read a slot key
// already recorded for st (by an earlier attempt whose answer was lost).
func ownSlot(resp *clientv3.TxnResponse, st *wantState) bool {
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return false
	}
	var r slotRecord
	return json.Unmarshal(kvs[0].Value, &r) == nil && r.Manager == st.mgr && r.Key == st.key
}

// watch takes the slot back from its manager when the taskscaler ends the
// acquisition for another reason than a release (its instance disappeared).
func (b *broker) watch(wk string, st *wantState, a *taskscaler.Acquisition) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		select {
		case <-a.Context().Done():
		case <-b.ctx.Done():
			return
		}
		if cause := context.Cause(a.Context()); !errors.Is(cause, taskscaler.ErrReleased) {
			b.revoke(wk, st, cause.Error())
		}
	}()
}

// revoke deletes a held slot and tells its manager why.
func (b *broker) revoke(wk string, st *wantState, why string) {
	gr, _ := json.Marshal(grant{Revoked: why})
	ops := []clientv3.Op{clientv3.OpDelete(b.g.slotKey(st.instance, st.slot))}
	if st.lease != 0 {
		ops = append(ops, clientv3.OpPut(b.g.grantKey(st.mgr, st.key), string(gr), clientv3.WithLease(st.lease)))
	}
	err := retry(b.ctx, forever, func(ctx context.Context) error {
		_, err := b.g.n.cli.Txn(ctx).If(b.fence).Then(ops...).Commit()
		return err
	})
	if err != nil && b.ctx.Err() == nil {
		b.g.log.Warn("take back a slot", "want", wk, "err", err)
	}
}

// gone handles a want that was deleted: the manager released its slot or reservation,
// gave up waiting, or died (its lease expired, deleting all its keys at once).
func (b *broker) gone(kv *mvccpb.KeyValue) {
	wk := string(kv.Key)
	b.mu.Lock()
	st := b.wants[wk]
	delete(b.wants, wk)
	b.mu.Unlock()
	if st == nil {
		return
	}
	sk := scalerKey(st.mgr, st.key)
	switch {
	case st.cancel != nil:
		st.cancel() // a pending Acquire: its slot, if it comes, goes back
	case st.acquired:
		if b.managerGoneAt(st.mgr, kv.ModRevision) {
			why := fmt.Sprintf("runner manager %s lost its etcd lease while the job ran", st.mgr)
			b.g.log.Warn("slot released: instance unexpectedly lost for the job", "manager", st.mgr, "key", st.key, "instance", st.instance, "slot", st.slot)
			// A manager cut off from etcd (alive) stops its job when its own client
			// gives the lease up, which is about when etcd expired it: the slot stays
			// taken, and the instance in service, for one more TTL, so that the job has
			// stopped before anything else happens on the instance.
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				select {
				case <-time.After(b.g.n.ttl):
					b.sc.ReleaseLost(sk, why)
				case <-b.ctx.Done():
				}
			}()
		} else {
			b.sc.Release(sk)
		}
	default:
		b.sc.Unreserve(sk)
	}
}

// managerGoneAt reports whether mgr's membership key was gone at rev: a lease that
// expires deletes the manager's key together with its wants, in one revision.
func (b *broker) managerGoneAt(mgr string, rev int64) bool {
	key := b.g.n.pfx + "/managers/" + mgr
	resp, err := b.g.n.cli.Get(b.ctx, key, clientv3.WithRev(rev))
	if err != nil {
		resp, err = b.g.n.cli.Get(b.ctx, key)
		if err != nil {
			return false
		}
	}
	return len(resp.Kvs) == 0
}

// statusRecord is the pool's state as its leader last published it.
type statusRecord struct {
	Leader string            `json:"leader"`
	At     time.Time         `json:"at"`
	Status taskscaler.Status `json:"status"`
}

// publish writes the pool's state for the other managers when it changed. Instance
// histories are left out: they are long, and `runner pool status --instance` on the
// leader shows them.
func (b *broker) publish() {
	st := b.sc.Status()
	for i := range st.InstanceList {
		st.InstanceList[i].History = nil
	}
	st.Gone = nil
	cmp := st
	cmp.Time = time.Time{}
	body, _ := json.Marshal(cmp)
	b.mu.Lock()
	same := bytes.Equal(body, b.last)
	b.mu.Unlock()
	if same {
		return
	}
	v, _ := json.Marshal(statusRecord{Leader: b.g.n.id, At: time.Now().UTC(), Status: st})
	ctx, cancel := context.WithTimeout(b.ctx, b.g.n.ttl)
	defer cancel()
	if _, err := b.g.n.cli.Txn(ctx).If(b.fence).Then(clientv3.OpPut(b.g.pfx+"/status", string(v))).Commit(); err == nil {
		b.mu.Lock()
		b.last = body
		b.mu.Unlock()
	}
}

// Leading reports whether this manager leads the pool now.
func (g *Group) Leading() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.broker != nil
}

// Scaler returns the pool's taskscaler while this manager leads it.
func (g *Group) Scaler() (Scaler, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.broker == nil {
		return nil, false
	}
	return g.broker.sc, true
}

// Status is the pool's state: the leader's own, or on another manager what the
// leader last published, with the coordination state read from etcd.
func (g *Group) Status() taskscaler.Status {
	ctx, cancel := context.WithTimeout(g.ctx, 2*time.Second)
	defer cancel()
	var st taskscaler.Status
	var from time.Time
	if sc, ok := g.Scaler(); ok {
		st = sc.Status()
	} else if resp, err := g.n.cli.Get(ctx, g.pfx+"/status"); err == nil && len(resp.Kvs) > 0 {
		var r statusRecord
		if json.Unmarshal(resp.Kvs[0].Value, &r) == nil {
			st, from = r.Status, r.At
		}
	}
	co := g.Coordination(ctx)
	co.StatusFrom = from
	st.Coordination = &co
	return st
}

// Explain explains an instance; only the leader knows instances' histories.
func (g *Group) Explain(id string) (taskscaler.InstanceStatus, bool) {
	if sc, ok := g.Scaler(); ok {
		return sc.Explain(id)
	}
	return taskscaler.InstanceStatus{}, false
}

// Coordination reads who the managers are, which leads, and who holds which slot.
func (g *Group) Coordination(ctx context.Context) taskscaler.Coordination {
	sess, _ := g.session()
	co := taskscaler.Coordination{Backend: "etcd", Self: g.n.id, Connected: sess != nil}
	resp, err := g.n.cli.Txn(ctx).Then(
		clientv3.OpGet(g.pfx+"/election/", clientv3.WithFirstCreate()...),
		clientv3.OpGet(g.n.pfx+"/managers/", clientv3.WithPrefix()),
		clientv3.OpGet(g.pfx+"/slots/", clientv3.WithPrefix())).Commit()
	if err != nil {
		co.Error = fmt.Sprintf("read the coordination state from etcd: %v", err)
		return co
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		co.Leader = string(kvs[0].Value)
	}
	jobs := map[string]int{}
	for _, kv := range resp.Responses[2].GetResponseRange().Kvs {
		var r slotRecord
		if json.Unmarshal(kv.Value, &r) != nil {
			continue
		}
		jobs[r.Manager]++
		co.Slots = append(co.Slots, taskscaler.SlotHolder{Instance: r.Instance, Slot: r.Slot, Manager: r.Manager, Key: r.Key, Since: r.Since})
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var m Manager
		if json.Unmarshal(kv.Value, &m) != nil {
			continue
		}
		co.Managers = append(co.Managers, taskscaler.ManagerEntry{ID: m.ID, Host: m.Host, PID: m.PID, Version: m.Version,
			Since: m.Since, Jobs: jobs[m.ID], IsLeader: m.ID == co.Leader})
	}
	return co
}
