package etcdtest

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// callTimeout bounds one etcd call of a test that expects it to succeed at once.
const callTimeout = 5 * time.Second

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls f until it returns nil or the deadline passes: only for waiting on
// etcd (an election, a lease expiry), never as synchronisation of the test's own code.
func eventually(t *testing.T, d time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := f()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(pollInterval)
	}
}

// TestThreeMembersAgree: right after Start every member answers and knows the same
// leader, and a value put through one member is read (linearizably) through another.
func TestThreeMembersAgree(t *testing.T) {
	c := Start(t, 3)
	if got := len(c.Endpoints()); got != 3 {
		t.Fatalf("%d endpoints, want 3", got)
	}
	// Start returned when all serve: each answers at once (a short timeout, not the
	// wait of a client for a member still starting) and knows the same leader.
	var leaders []uint64
	for i := range c.Len() {
		m := c.Member(i)
		st, err := m.Client(t).Status(ctxTimeout(t, 500*time.Millisecond), m.Endpoint())
		if err != nil {
			t.Fatalf("status of %s right after Start: %v", m.Name(), err)
		}
		leaders = append(leaders, st.Leader)
	}
	if leaders[0] == 0 || leaders[0] != leaders[1] || leaders[1] != leaders[2] {
		t.Fatalf("members' leaders %x, want one and the same", leaders)
	}
	if _, err := c.Member(0).Client(t).Put(ctxTimeout(t, callTimeout), "agree", "from-m0"); err != nil {
		t.Fatalf("put via m0: %v", err)
	}
	resp, err := c.Member(2).Client(t).Get(ctxTimeout(t, callTimeout), "agree")
	if err != nil {
		t.Fatalf("get via m2: %v", err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "from-m0" {
		t.Fatalf("get via m2: %v, want agree=from-m0", resp.Kvs)
	}
}

// TestMemberLoss: with one of three members stopped or killed, writes through a client
// on all endpoints still succeed (after an election when it was the leader); restarted,
// the member serves again and has the writes it missed.
func TestMemberLoss(t *testing.T) {
	for _, tc := range []struct {
		name   string
		leader bool // lose the leader, else a follower
		kill   bool // SIGKILL, else SIGTERM
	}{
		{name: "stop follower"},
		{name: "kill leader", leader: true, kill: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Start(t, 3)
			cli := c.Client(t)
			lead := c.Leader(t)
			lost := lead
			if !tc.leader {
				lost = (lead + 1) % c.Len()
			}
			m := c.Member(lost)
			if tc.kill {
				m.Kill(t)
			} else {
				m.Stop(t)
			}
			if m.running() {
				t.Fatalf("member %s still running", m.Name())
			}
			if tc.leader {
				// Puts fail while the survivors elect a leader (about an election
				// timeout): the client sees "no leader" errors.
				took := eventually(t, 10*time.Second, "put after losing the leader", func() error {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					_, err := cli.Put(ctx, "loss", "while-down")
					return err
				})
				t.Logf("writes resumed %v after the leader's loss", took.Round(time.Millisecond))
				if newLead := c.Leader(t); newLead == lost {
					t.Fatalf("leader is still the lost member %s", m.Name())
				}
			} else if _, err := cli.Put(ctxTimeout(t, callTimeout), "loss", "while-down"); err != nil {
				t.Fatalf("put with a follower down: %v", err)
			}
			if _, err := m.Client(t).Get(ctxTimeout(t, time.Second), "loss"); err == nil {
				t.Fatalf("member %s answered while down", m.Name())
			}

			m.Restart(t)
			// Restart returned when the member serves: it answers at once (a short
			// timeout, not the wait of a client for a member still starting), knows the
			// leader, and a serializable read, answered from its own store, has the
			// write made while it was down.
			mc := m.Client(t)
			st, err := mc.Status(ctxTimeout(t, 500*time.Millisecond), m.Endpoint())
			if err != nil || st.Leader == 0 {
				t.Fatalf("status of restarted %s: %+v, %v", m.Name(), st, err)
			}
			resp, err := mc.Get(ctxTimeout(t, 500*time.Millisecond), "loss", clientv3.WithSerializable())
			if err != nil {
				t.Fatalf("get via restarted %s: %v", m.Name(), err)
			}
			if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "while-down" {
				t.Fatalf("restarted %s has %v, want loss=while-down", m.Name(), resp.Kvs)
			}
			if _, err := mc.Put(ctxTimeout(t, callTimeout), "loss", "after-restart"); err != nil {
				t.Fatalf("put via restarted %s: %v", m.Name(), err)
			}
		})
	}
}

// TestProxyCut: a session whose client goes through the proxy loses its lease when the
// proxy is cut (Done closes; its key disappears for a client on the real endpoints),
// while that other client keeps working; after Restore a new session works.
func TestProxyCut(t *testing.T) {
	c := Start(t, 1)
	direct := c.Client(t)
	p := c.Proxy(t)
	if got, want := len(p.Endpoints()), c.Len(); got != want {
		t.Fatalf("%d proxy endpoints, want %d", got, want)
	}
	cut := p.Client(t)

	s := newSession(t, cut, callTimeout)
	if _, err := cut.Put(ctxTimeout(t, callTimeout), "manager/a", "alive", clientv3.WithLease(s.Lease())); err != nil {
		t.Fatalf("put through the proxy: %v", err)
	}
	if n := keyCount(t, direct, "manager/a"); n != 1 {
		t.Fatalf("direct client sees %d manager/a keys, want 1", n)
	}

	p.Cut()
	cutAt := time.Now()
	if _, err := cut.Get(ctxTimeout(t, 500*time.Millisecond), "manager/a"); err == nil {
		t.Fatal("get through a cut proxy succeeded")
	}
	select {
	case <-s.Done():
		t.Logf("session done %v after the cut", time.Since(cutAt).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("session through a cut proxy still alive 10s after the cut (TTL 2s)")
	}
	took := eventually(t, 10*time.Second, "lease of the cut session expires", func() error {
		if n := keyCount(t, direct, "manager/a"); n != 0 {
			return fmt.Errorf("manager/a still there")
		}
		return nil
	})
	t.Logf("key gone %v after the session ended", took.Round(time.Millisecond))
	if _, err := direct.Put(ctxTimeout(t, callTimeout), "manager/b", "alive"); err != nil {
		t.Fatalf("direct put while the proxy is cut: %v", err)
	}

	p.Restore()
	s2 := newSession(t, cut, 15*time.Second)
	if _, err := cut.Put(ctxTimeout(t, callTimeout), "manager/a", "back", clientv3.WithLease(s2.Lease())); err != nil {
		t.Fatalf("put through the restored proxy: %v", err)
	}
	if n := keyCount(t, direct, "manager/a"); n != 1 {
		t.Fatalf("direct client sees %d manager/a keys after Restore, want 1", n)
	}
	ttl, err := direct.TimeToLive(ctxTimeout(t, callTimeout), s2.Lease())
	if err != nil || ttl.TTL <= 0 {
		t.Fatalf("lease of the new session: %+v, %v", ttl, err)
	}
}

// newSession starts a session with a TTL of 2 s on cli, failing the test unless its
// lease is granted within d. The session's context lives until the test's cleanup: a
// context with a deadline would end the session at that deadline, cut or not.
func newSession(t *testing.T, cli *clientv3.Client, d time.Duration) *concurrency.Session {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	type result struct {
		s   *concurrency.Session
		err error
	}
	got := make(chan result, 1)
	go func() {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(2), concurrency.WithContext(ctx))
		got <- result{s, err}
	}()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("session on %v: %v", cli.Endpoints(), r.err)
		}
		t.Cleanup(func() { r.s.Close() })
		return r.s
	case <-time.After(d):
		cancel()
		t.Fatalf("session on %v: lease not granted within %v", cli.Endpoints(), d)
		return nil
	}
}

func keyCount(t *testing.T, cli *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := cli.Get(ctxTimeout(t, callTimeout), key, clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return resp.Count
}

// recorder is a testing.TB that records Skip and Fatal instead of ending the test.
type recorder struct {
	testing.TB
	mu      sync.Mutex
	skipped bool
	failed  bool
	msg     string
}

func (r *recorder) Helper() {}

func (r *recorder) end(skip bool, format string, args ...any) {
	r.mu.Lock()
	r.skipped, r.failed, r.msg = skip, !skip, fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any)  { r.end(true, format, args...) }
func (r *recorder) Fatalf(format string, args ...any) { r.end(false, format, args...) }

// TestStartRefuses: without the etcd binary Start skips with how to install it, or fails
// under RequireEnv=1; a member count other than 1 or 3 fails.
func TestStartRefuses(t *testing.T) {
	for _, tc := range []struct {
		name     string
		noBinary bool
		require  string
		n        int
		skip     bool
		msg      string
	}{
		{name: "missing etcd skips", noBinary: true, n: 1, skip: true, msg: "apt-get install etcd-server"},
		{name: "missing etcd required fails", noBinary: true, require: "1", n: 3, msg: "apt-get install etcd-server"},
		{name: "two members", n: 2, msg: "use 1 or 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.noBinary {
				t.Setenv("PATH", t.TempDir())
			}
			t.Setenv(RequireEnv, tc.require)
			r := &recorder{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				Start(r, tc.n)
			}()
			<-done
			if r.skipped != tc.skip || r.failed == tc.skip {
				t.Fatalf("skipped=%v failed=%v (%s), want skipped=%v", r.skipped, r.failed, r.msg, tc.skip)
			}
			if !strings.Contains(r.msg, tc.msg) {
				t.Fatalf("message %q does not say %q", r.msg, tc.msg)
			}
		})
	}
}
