package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// ErrNotLeader is returned by a Store write after its leadership ended: a deposed
// leader's scaler can neither record nor (since it records before it creates)
// create anything.
var ErrNotLeader = errors.New("no longer the pool's leader: the write was refused")

// maxTxnOps keeps a transaction under etcd's default limit of 128 operations.
const maxTxnOps = 100

// Store is the pool's inventory in etcd, a state.Store written by the leader only:
// every write is a transaction that holds only while the leader's election key is
// the one it won with. The pool's key prefix already names the owner, so the owner
// argument only has to match across calls.
type Store struct {
	cli   *clientv3.Client
	pfx   string // ends with "/"
	fence clientv3.Cmp
	// timeout bounds each call: the taskscaler writes while holding its lock, and a
	// leader cut off from etcd must fail its writes (and so notice) rather than wedge.
	timeout time.Duration
}

// NewStore returns the inventory under pfx, written only while fence holds; each call
// gives up after timeout.
func NewStore(cli *clientv3.Client, pfx string, fence clientv3.Cmp, timeout time.Duration) *Store {
	return &Store{cli: cli, pfx: strings.TrimSuffix(pfx, "/") + "/", fence: fence, timeout: timeout}
}

func (s *Store) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.timeout)
}

func (s *Store) instanceKey(id string) string { return s.pfx + "instances/" + id }

// Load reads the inventory.
func (s *Store) Load(ctx context.Context, _ string) (state.Snapshot, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.pfx, clientv3.WithPrefix())
	if err != nil {
		return state.Snapshot{}, fmt.Errorf("read inventory %s from etcd: %w", s.pfx, err)
	}
	var snap state.Snapshot
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		var err error
		switch {
		case strings.HasPrefix(k, s.pfx+"instances/"):
			var in state.Instance
			if err = json.Unmarshal(kv.Value, &in); err == nil {
				snap.Instances = append(snap.Instances, in)
			}
		case k == s.pfx+"intents":
			err = json.Unmarshal(kv.Value, &snap.Intents)
		case k == s.pfx+"demand":
			snap.Demand = &state.Demand{}
			err = json.Unmarshal(kv.Value, snap.Demand)
		}
		if err != nil {
			return state.Snapshot{}, fmt.Errorf("read inventory key %s: %w", k, err)
		}
	}
	return snap, nil
}

// Apply writes b. Intents come first, then the instance records, then deletions, so
// that a batch too large for one transaction (more than maxTxnOps records, split in
// several) still records an intent before anything it leads to; a crash between the
// parts leaves an instance unrecorded (it is then deleted as unvouched) or a deleted
// one recorded (it is then found gone), never an unrecorded creation.
func (s *Store) Apply(ctx context.Context, _ string, b state.Batch) error {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	var ops []clientv3.Op
	if b.SetIntents {
		v, err := json.Marshal(b.Intents)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(s.pfx+"intents", string(v)))
	}
	if b.Demand != nil {
		v, err := json.Marshal(b.Demand)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(s.pfx+"demand", string(v)))
	}
	for _, in := range b.Put {
		v, err := json.Marshal(in)
		if err != nil {
			return err
		}
		ops = append(ops, clientv3.OpPut(s.instanceKey(in.ID), string(v)))
	}
	for _, id := range b.Delete {
		ops = append(ops, clientv3.OpDelete(s.instanceKey(id)))
	}
	for len(ops) > 0 {
		n := min(len(ops), maxTxnOps)
		resp, err := s.cli.Txn(ctx).If(s.fence).Then(ops[:n]...).Commit()
		if err != nil {
			return fmt.Errorf("write inventory to etcd: %w", err)
		}
		if !resp.Succeeded {
			return ErrNotLeader
		}
		ops = ops[n:]
	}
	return nil
}

// Close does nothing: the etcd client belongs to the Node.
func (s *Store) Close() error { return nil }

// Leading checks that the leadership the store's writes are fenced with still stands.
func (s *Store) Leading(ctx context.Context) error {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	resp, err := s.cli.Txn(ctx).If(s.fence).Commit()
	if err != nil {
		return fmt.Errorf("check the pool's leadership in etcd: %w", err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	return nil
}

// Fenced returns group as the leader's taskscaler must see it: Increase and Decrease
// reach the plugin only while this leadership stands (a deposed leader that has not
// noticed yet must not delete an instance the new leader hands out), and Shutdown
// leaves the plugin running, since leading may end while the manager goes on.
func (s *Store) Fenced(group provider.InstanceGroup) provider.InstanceGroup {
	return fencedGroup{InstanceGroup: group, s: s}
}

type fencedGroup struct {
	provider.InstanceGroup
	s *Store
}

func (g fencedGroup) Increase(ctx context.Context, n int) (int, error) {
	if err := g.s.Leading(ctx); err != nil {
		return 0, err
	}
	return g.InstanceGroup.Increase(ctx, n)
}

func (g fencedGroup) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if err := g.s.Leading(ctx); err != nil {
		return nil, err
	}
	return g.InstanceGroup.Decrease(ctx, ids)
}

func (fencedGroup) Shutdown(context.Context) error { return nil }

// Heartbeat passes the plugin's Heartbeat through (the taskscaler looks for it).
func (g fencedGroup) Heartbeat(ctx context.Context, id string) error {
	hb, ok := g.InstanceGroup.(provider.Heartbeater)
	if !ok {
		return fmt.Errorf("heartbeat: %w", provider.ErrNotSupported)
	}
	return hb.Heartbeat(ctx, id)
}
