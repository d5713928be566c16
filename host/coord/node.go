// Package coord lets several runner managers (`runner run` processes with the same
// [[runners]] entry, each with its own system ID) share one pool through etcd, with
// etcd's official client and its concurrency package (sessions, elections); nothing
// here is a consensus or lock protocol of its own.
//
// Each manager keeps one etcd session: a lease that it renews while it is alive and
// connected. Under it the manager publishes its membership, campaigns for each pool's
// leadership, and holds its job slots. Of each pool:
//
//   - the leader runs the pool's taskscaler: it alone makes scaling decisions and
//     calls Increase and Decrease, and its inventory (intents before creates,
//     instances, demand) lives in etcd, written only while its election key still
//     stands (a fenced transaction), so a deposed leader cannot write;
//   - every manager (the leader too) asks for slots by writing a want under its lease;
//     the leader serves it with its taskscaler and records the slot in a transaction
//     that creates the slot's key under the asking manager's lease only if no one
//     holds it, so a slot is never handed out twice;
//   - a manager whose lease expires loses its wants and slots with it: the leader
//     releases them as "instance unexpectedly lost" and retires their instances, and
//     the manager itself, if it is alive but cut off, aborts those jobs;
//   - a new leader reads the slots held and the wants waiting, takes them over and
//     serves on, within one lease TTL of the old leader's death.
//
// Key layout under the prefix (default /flotilla): managers/<id>;
// pools/<owner>/{election/, inventory/, wants/<manager>/<key>, grants/<manager>/<key>,
// slots/<instance>/<slot>, pins/<instance>, status}. docs/ha.md describes the failure
// model.
package coord

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/host/version"
)

// ErrLost is the cause with which a job's slot ends when its runner manager lost its
// etcd session: another manager may now be given the slot, so the job must stop.
var ErrLost = errors.New("instance unexpectedly lost")

// ErrNotConnected is returned (wrapped in taskscaler.ErrNoCapacity) while this manager
// has no etcd session: it asks GitLab for no job then.
var ErrNotConnected = errors.New("not connected to etcd")

// Node is this runner manager's membership: one etcd client and one session for every
// pool of the process.
type Node struct {
	cli *clientv3.Client
	id  string
	pfx string
	ttl time.Duration
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	since  time.Time

	mu     sync.Mutex
	sess   *concurrency.Session
	groups map[*Group]bool
}

// Manager is what a manager publishes about itself under managers/<id>.
type Manager struct {
	ID      string    `json:"id"`
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	Version string    `json:"version"`
	Since   time.Time `json:"since"`
}

// Options tune a Node beyond its configuration.
type Options struct {
	// Logger receives the node's logs; nil means slog.Default().
	Logger *slog.Logger

	// wrapKV, when set, wraps the client's KV: the tests lose etcd's answers with it.
	wrapKV func(clientv3.KV) clientv3.KV
}

// Open connects to the etcd cluster of cfg as manager id (the runner's system ID) and
// starts its session. It fails when no session can be had within the dial timeout,
// so that a wrong endpoint or certificate is reported at start.
func Open(ctx context.Context, cfg *config.Coordination, id string, o Options) (*Node, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	tlsCfg, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	dial := cfg.DialTimeout.Duration
	if dial == 0 {
		dial = config.DefaultEtcdDialTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: cfg.Endpoints, DialTimeout: dial, TLS: tlsCfg,
		Username: cfg.Username, Password: cfg.Password,
		// Keepalives find a dead connection (a partition) well within a lease TTL.
		DialKeepAliveTime: time.Second, DialKeepAliveTimeout: time.Second,
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", cfg.Endpoints, err)
	}
	if o.wrapKV != nil {
		cli.KV = o.wrapKV(cli.KV)
	}
	n := &Node{cli: cli, id: id, pfx: cfg.KeyPrefix(), ttl: cfg.TTL(), log: log.With("subsystem", "coordination", "manager", id),
		groups: map[*Group]bool{}, done: make(chan struct{}), since: time.Now()}
	n.ctx, n.cancel = context.WithCancel(context.WithoutCancel(ctx))
	sctx, cancel := context.WithTimeout(ctx, dial)
	defer cancel()
	sess, err := n.newSession(sctx)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("open an etcd session at %v: %w", cfg.Endpoints, err)
	}
	n.sess = sess
	go n.run(sess)
	n.log.Info("joined the coordinated pools", "endpoints", cfg.Endpoints, "prefix", n.pfx, "lease_ttl", n.ttl)
	return n, nil
}

func tlsConfig(cfg *config.Coordination) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" {
		return nil, nil
	}
	info := transport.TLSInfo{TrustedCAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
	c, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("coordination: TLS files (ca_file %q, cert_file %q, key_file %q): %w", cfg.CAFile, cfg.CertFile, cfg.KeyFile, err)
	}
	return c, nil
}

// ID returns this manager's ID.
func (n *Node) ID() string { return n.id }

// TTL returns the lease TTL.
func (n *Node) TTL() time.Duration { return n.ttl }

// Client returns the etcd client (status and tests).
func (n *Node) Client() *clientv3.Client { return n.cli }

// newSession grants the lease and publishes this manager under it.
func (n *Node) newSession(ctx context.Context) (*concurrency.Session, error) {
	// The lease is granted under ctx (bounded: etcd may be unreachable) and kept alive
	// under the node's context (as long as the node lives).
	lease, err := n.cli.Grant(ctx, int64(math.Ceil(n.ttl.Seconds())))
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	sess, err := concurrency.NewSession(n.cli, concurrency.WithLease(lease.ID), concurrency.WithContext(n.ctx))
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	b, _ := json.Marshal(Manager{ID: n.id, Host: host, PID: os.Getpid(), Version: version.Version, Since: n.since})
	err = retry(ctx, n.ttl, func(ctx context.Context) error {
		_, err := n.cli.Put(ctx, n.pfx+"/managers/"+n.id, string(b), clientv3.WithLease(sess.Lease()))
		return err
	})
	if err != nil {
		sess.Orphan()
		return nil, fmt.Errorf("publish manager %s: %w", n.id, err)
	}
	return sess, nil
}

// run keeps a session: when it ends (the lease expired or could not be renewed for
// its TTL), every group is told, and a new one is made, with backoff, until Close.
func (n *Node) run(sess *concurrency.Session) {
	defer close(n.done)
	n.notify(sess)
	for {
		select {
		case <-sess.Done():
		case <-n.ctx.Done():
			return
		}
		n.log.Error("etcd session lost: this manager's slots and leadership are given up; reconnecting", "lease_ttl", n.ttl)
		n.mu.Lock()
		n.sess = nil
		n.mu.Unlock()
		n.notify(nil)
		for wait := 200 * time.Millisecond; ; wait = min(wait*2, n.ttl) {
			ctx, cancel := context.WithTimeout(n.ctx, n.ttl)
			s, err := n.newSession(ctx)
			cancel()
			if err == nil {
				sess = s
				break
			}
			if n.ctx.Err() != nil {
				return
			}
			n.log.Warn("etcd session", "err", err, "retry_in", wait)
			select {
			case <-time.After(wait):
			case <-n.ctx.Done():
				return
			}
		}
		n.log.Info("etcd session restored")
		n.mu.Lock()
		n.sess = sess
		n.mu.Unlock()
		n.notify(sess)
	}
}

func (n *Node) notify(sess *concurrency.Session) {
	n.mu.Lock()
	groups := make([]*Group, 0, len(n.groups))
	for g := range n.groups {
		groups = append(groups, g)
	}
	n.mu.Unlock()
	for _, g := range groups {
		g.setSession(sess)
	}
}

func (n *Node) session() *concurrency.Session {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sess
}

// Close ends the session (revoking the lease: this manager's keys go at once) and
// the client. Groups should be closed first.
func (n *Node) Close() error {
	n.cancel()
	<-n.done
	n.mu.Lock()
	sess := n.sess
	n.sess = nil
	n.mu.Unlock()
	if sess != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _ = n.cli.Revoke(ctx, sess.Lease())
		cancel()
	}
	return n.cli.Close()
}

// Managers lists the live managers.
func (n *Node) Managers(ctx context.Context) ([]taskscaler.ManagerEntry, error) {
	resp, err := n.cli.Get(ctx, n.pfx+"/managers/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list managers: %w", err)
	}
	var out []taskscaler.ManagerEntry
	for _, kv := range resp.Kvs {
		var m Manager
		if json.Unmarshal(kv.Value, &m) != nil {
			continue
		}
		out = append(out, taskscaler.ManagerEntry{ID: m.ID, Host: m.Host, PID: m.PID, Version: m.Version, Since: m.Since})
	}
	return out, nil
}
