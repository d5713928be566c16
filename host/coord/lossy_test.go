package coord

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// lossyKV is etcd behind a failing member: every nth write is applied by the
// cluster, but its answer is lost and the client sees "request timed out", as when
// the member a request went through stops after the cluster committed it.
type lossyKV struct {
	clientv3.KV
	every int64
	n     *atomic.Int64 // writes so far, of every manager
	lost  *atomic.Int64 // answers lost
}

func (k *lossyKV) lose(err error) bool {
	if err != nil || k.n.Add(1)%k.every != 0 {
		return false
	}
	k.lost.Add(1)
	return true
}

func (k *lossyKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	resp, err := k.KV.Put(ctx, key, val, opts...)
	if k.lose(err) {
		return nil, rpctypes.ErrTimeout
	}
	return resp, err
}

func (k *lossyKV) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	resp, err := k.KV.Delete(ctx, key, opts...)
	if k.lose(err) {
		return nil, rpctypes.ErrTimeout
	}
	return resp, err
}

func (k *lossyKV) Txn(ctx context.Context) clientv3.Txn { return &lossyTxn{Txn: k.KV.Txn(ctx), k: k} }

// lossyTxn loses the answer of a transaction that may write.
type lossyTxn struct {
	clientv3.Txn
	k      *lossyKV
	writes bool
}

func (t *lossyTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }

func (t *lossyTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.note(ops)
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *lossyTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.note(ops)
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *lossyTxn) note(ops []clientv3.Op) {
	for _, op := range ops {
		t.writes = t.writes || op.IsPut() || op.IsDelete()
	}
}

func (t *lossyTxn) Commit() (*clientv3.TxnResponse, error) {
	resp, err := t.Txn.Commit()
	if t.writes && t.k.lose(err) {
		return nil, rpctypes.ErrTimeout
	}
	return resp, err
}

// TestLostAnswers: etcd applies writes whose answers never reach the manager (one
// write in five, of every kind: wants, grants, slots, the inventory, elections).
// The retries must not turn one request into two: every job gets exactly one slot,
// no slot is held twice, and no job waits for an answer that will not come.
func TestLostAnswers(t *testing.T) {
	h := newHarness(t, 3)
	lost := &atomic.Int64{}
	writes := &atomic.Int64{}
	h.wrapKV = func(kv clientv3.KV) clientv3.KV { return &lossyKV{KV: kv, every: 5, n: writes, lost: lost} }
	cli := h.cluster.Client(t)
	rev := startRev(t, cli)
	leader, rest := h.three()

	const jobs = 150
	// A request whose answer never comes fails its job: a reservation after a lease
	// TTL and some, an acquisition after the acquire timeout (20s).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	started := time.Now()
	runJobs(ctx, t, append(rest, leader), jobs, 12)
	took := time.Since(started)
	if n, _ := audit(t, cli, leader.g.Prefix(), rev); n != jobs {
		t.Errorf("audit: %d acquisitions recorded, want %d (one per job)", n, jobs)
	}
	if lost.Load() == 0 {
		t.Fatal("no answer was lost: the test tested nothing")
	}
	t.Logf("%d jobs in %s, %d answers lost of %d writes", jobs, took.Round(time.Millisecond), lost.Load(), writes.Load())
}
