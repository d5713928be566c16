// Package etcdtest starts a real etcd cluster (Debian's etcd-server) on 127.0.0.1 for
// tests of the coordination of several runner managers: one or three members on free
// ports, members that a test can stop, kill and restart, and a TCP proxy that cuts one
// client off from the cluster while the others keep their connections. It is a test
// helper (it imports testing), so no binary links it.
//
// A test that needs etcd skips where the etcd binary is missing, and fails there instead
// under FLOTILLA_REQUIRE_ETCD=1 (as .ci/run sets).
package etcdtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// RequireEnv ("FLOTILLA_REQUIRE_ETCD"), when set to 1 (as .ci/run does), turns a missing
// etcd binary into a test failure instead of a skip, so CI cannot pass without running
// the etcd tests.
const RequireEnv = "FLOTILLA_REQUIRE_ETCD"

// Executable is etcd's server binary, looked up in PATH (Debian's etcd-server installs
// /usr/bin/etcd).
const Executable = "etcd"

const (
	// HeartbeatInterval and ElectionTimeout are the members' raft timings: small, so
	// that the loss of the leader is noticed and a new one elected in about a second.
	HeartbeatInterval = 100 * time.Millisecond
	ElectionTimeout   = 1000 * time.Millisecond

	// startTimeout bounds a start or restart until the member serves; a three-member
	// cluster on a loaded 2-core machine takes a few seconds.
	startTimeout = 30 * time.Second
	// stopTimeout bounds the wait for a member to exit after a signal.
	stopTimeout = 15 * time.Second
	// probeTimeout bounds one health probe, so that the loop notices an exited member.
	probeTimeout = time.Second
	// pollInterval is the pause between two failed probes that returned early.
	pollInterval = 50 * time.Millisecond
	// startAttempts is how often Start picks new ports when one was taken between
	// choosing it and etcd binding it.
	startAttempts = 3
	// logTail is how much of a member's log a failure message quotes.
	logTail = 4 << 10
)

// errAddrInUse marks a start that failed because a chosen port was taken meanwhile.
var errAddrInUse = errors.New("address already in use")

// Cluster is a running etcd cluster, killed when its test ends.
type Cluster struct {
	members []*Member
}

// Member is one etcd process of a Cluster. Its data directory and ports stay the same
// across Stop, Kill and Restart.
type Member struct {
	name      string
	bin       string
	args      []string
	clientURL string
	// logs holds the process's output over all its runs.
	logs syncbuf.Buffer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited; nil before the first start
}

// Start starts an n-member etcd cluster (n is 1 or 3) of the etcd binary on 127.0.0.1
// with free ports and data directories under t.TempDir(), waits until every member
// serves linearizable reads (so a three-member cluster has a leader), and kills it
// (SIGKILL, then waits) at the test's cleanup. Without the binary it skips the test,
// or fails it under RequireEnv=1.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	if n != 1 && n != 3 {
		t.Fatalf("etcdtest.Start: %d members: use 1 or 3", n)
	}
	bin, err := exec.LookPath(Executable)
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("etcd required (%s=1) but not found: %v; install it with apt-get install etcd-server", RequireEnv, err)
		}
		t.Skipf("etcd not installed (apt-get install etcd-server; .ci/run does): %v", err)
	}
	root := t.TempDir() // registered before the kill below, so removed after it
	for attempt := 1; ; attempt++ {
		c, err := start(bin, filepath.Join(root, fmt.Sprint(attempt)), n)
		if err == nil {
			t.Cleanup(c.kill)
			return c
		}
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			t.Fatalf("start %d-member etcd cluster (attempt %d): %v", n, attempt, err)
		}
	}
}

// start runs the members of a new cluster under dir and waits until they serve; on
// error it kills whatever it started.
func start(bin, dir string, n int) (*Cluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	token := make([]byte, 8)
	rand.Read(token)
	c := &Cluster{}
	var peers []string
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		peers = append(peers, fmt.Sprintf("%s=http://127.0.0.1:%d", name, ports[2*i+1]))
	}
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		clientURL := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		m := &Member{name: name, bin: bin, clientURL: clientURL, args: []string{
			"--name", name,
			// A directory etcd creates itself gets the 0700 mode it insists on.
			"--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", clientURL,
			"--advertise-client-urls", clientURL,
			"--listen-peer-urls", peerURL,
			"--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", strings.Join(peers, ","),
			"--initial-cluster-state", "new",
			// A token of its own keeps members of other tests' clusters (which may reuse
			// a port after this one ends) from joining it.
			"--initial-cluster-token", fmt.Sprintf("etcdtest-%x", token),
			"--heartbeat-interval", fmt.Sprint(HeartbeatInterval.Milliseconds()),
			"--election-timeout", fmt.Sprint(ElectionTimeout.Milliseconds()),
			"--logger", "zap",
			"--log-level", "error",
		}}
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		if err := m.start(); err != nil {
			c.kill()
			return nil, err
		}
	}
	deadline := time.Now().Add(startTimeout)
	for _, m := range c.members {
		if err := m.waitServing(deadline); err != nil {
			c.kill()
			return nil, err
		}
	}
	return c, nil
}

// freePorts returns n distinct ports that were free a moment ago: all are held open
// together, so that they differ, and closed before etcd binds them.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// kill SIGKILLs every running member and waits for it.
func (c *Cluster) kill() {
	for _, m := range c.members {
		m.signal(syscall.SIGKILL)
	}
	for _, m := range c.members {
		m.wait(stopTimeout)
	}
}

// Endpoints returns the client URLs of all members ("http://127.0.0.1:port"), in
// member order.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientURL)
	}
	return eps
}

// Len is the number of members.
func (c *Cluster) Len() int { return len(c.members) }

// Member returns member i (0 ≤ i < Len()).
func (c *Cluster) Member(i int) *Member { return c.members[i] }

// Client returns a client on all endpoints, closed at the test's cleanup.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return newClient(t, c.Endpoints())
}

// Leader returns the index of the member that is the raft leader, waiting (up to the
// start timeout) while an election is under way. It asks only running members.
func (c *Cluster) Leader(t testing.TB) int {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	var err error
	for {
		var idx int
		if idx, err = c.leader(); err == nil {
			return idx
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd leader: %v", err)
		}
		time.Sleep(pollInterval)
	}
}

func (c *Cluster) leader() (int, error) {
	ids := map[uint64]int{}
	var leader uint64
	var errs []error
	for i, m := range c.members {
		if !m.running() {
			continue
		}
		st, err := m.status()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ids[st.Header.MemberId] = i
		if st.Leader != 0 {
			leader = st.Leader
		}
	}
	if i, ok := ids[leader]; ok && leader != 0 {
		return i, nil
	}
	if leader == 0 {
		errs = append(errs, errors.New("no member knows a leader"))
	} else {
		errs = append(errs, fmt.Errorf("leader %x is none of the running members", leader))
	}
	return 0, errors.Join(errs...)
}

// Endpoint is the member's client URL ("http://127.0.0.1:port").
func (m *Member) Endpoint() string { return m.clientURL }

// Name is the member's etcd name (m0, m1, …).
func (m *Member) Name() string { return m.name }

// Client returns a client of this member alone, closed at the test's cleanup.
func (m *Member) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return newClient(t, []string{m.clientURL})
}

// Logs returns the member's output so far (only errors: it runs with --log-level
// error).
func (m *Member) Logs() string { return m.logs.String() }

// Stop sends the member SIGTERM and waits for it to exit: the graceful loss of a
// member.
func (m *Member) Stop(t testing.TB) {
	t.Helper()
	m.stop(t, syscall.SIGTERM)
}

// Kill sends the member SIGKILL and waits for it to exit: a crash.
func (m *Member) Kill(t testing.TB) {
	t.Helper()
	m.stop(t, syscall.SIGKILL)
}

func (m *Member) stop(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if !m.signal(sig) {
		t.Fatalf("etcd member %s: %v: not running", m.name, sig)
	}
	if !m.wait(stopTimeout) {
		m.signal(syscall.SIGKILL)
		m.wait(stopTimeout)
		t.Fatalf("etcd member %s did not exit within %v of %v; log tail:\n%s", m.name, stopTimeout, sig, m.tail())
	}
}

// Restart starts a stopped or killed member again on its data directory and ports and
// waits until it serves linearizable reads (it has rejoined and caught up).
func (m *Member) Restart(t testing.TB) {
	t.Helper()
	if m.running() {
		t.Fatalf("etcd member %s: restart: still running (Stop or Kill it first)", m.name)
	}
	deadline := time.Now().Add(startTimeout)
	for {
		m.logs.Write([]byte("--- etcdtest: restart ---\n"))
		err := m.start()
		if err == nil {
			err = m.waitServing(deadline)
		}
		if err == nil {
			return
		}
		m.signal(syscall.SIGKILL)
		m.wait(stopTimeout)
		// Another process may hold the port for a moment (an outgoing connection
		// bound to it): try again until the deadline.
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			t.Fatalf("restart etcd member %s: %v", m.name, err)
		}
		time.Sleep(pollInterval)
	}
}

// start runs the member's process.
func (m *Member) start() error {
	cmd := exec.Command(m.bin, m.args...)
	cmd.Env = env()
	cmd.Stdout, cmd.Stderr = &m.logs, &m.logs
	cmd.SysProcAttr = sysProcAttr()
	// The parent-death signal fires when the thread that started the process ends,
	// not the process: start it from a locked thread that lives until it exits.
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		started <- err
		if err == nil {
			cmd.Wait()
			close(exited)
		}
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start %s for member %s: %w", m.bin, m.name, err)
	}
	m.mu.Lock()
	m.cmd, m.exited = cmd, exited
	m.mu.Unlock()
	return nil
}

// env is this process's environment without ETCD_* variables, which etcd would read
// as flags.
func env() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			out = append(out, kv)
		}
	}
	if runtime.GOARCH != "amd64" {
		// etcd 3.4 refuses to start on architectures it does not test unless told.
		out = append(out, "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	}
	return out
}

// running reports whether the member's process is alive.
func (m *Member) running() bool {
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the member's process; false when it is not running.
func (m *Member) signal(sig syscall.Signal) bool {
	if !m.running() {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd.Process.Signal(sig) == nil
}

// wait waits up to d for the process to exit; true when it has (or never ran).
func (m *Member) wait(d time.Duration) bool {
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	if exited == nil {
		return true
	}
	select {
	case <-exited:
		return true
	case <-time.After(d):
		return false
	}
}

// waitServing polls the member until it answers a linearizable read (which needs a
// leader and a quorum) or the deadline passes or the process exits.
func (m *Member) waitServing(deadline time.Time) error {
	cli, err := clientv3.New(clientConfig([]string{m.clientURL}))
	if err != nil {
		return fmt.Errorf("client of etcd member %s: %w", m.name, err)
	}
	defer cli.Close()
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		_, err = cli.Get(ctx, "etcdtest/health")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			logs := m.logs.String()
			if strings.Contains(logs, "address already in use") {
				return fmt.Errorf("etcd member %s: %w; log tail:\n%s", m.name, errAddrInUse, m.tail())
			}
			return fmt.Errorf("etcd member %s exited before serving; log tail:\n%s", m.name, m.tail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd member %s on %s not serving after %v: %v; log tail:\n%s", m.name, m.clientURL, startTimeout, err, m.tail())
		}
		time.Sleep(pollInterval)
	}
}

// status asks the member alone for its status.
func (m *Member) status() (*clientv3.StatusResponse, error) {
	cli, err := clientv3.New(clientConfig([]string{m.clientURL}))
	if err != nil {
		return nil, fmt.Errorf("client of etcd member %s: %w", m.name, err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	st, err := cli.Status(ctx, m.clientURL)
	if err != nil {
		return nil, fmt.Errorf("status of etcd member %s: %w", m.name, err)
	}
	return st, nil
}

// tail is the end of the member's log, for failure messages.
func (m *Member) tail() string {
	s := m.logs.String()
	if len(s) > logTail {
		s = "…" + s[len(s)-logTail:]
	}
	if s == "" {
		return "(empty)"
	}
	return s
}

// clientConfig is the configuration of the package's clients: quiet (the client's
// retry warnings would drown the test's output), with a bounded first dial.
func clientConfig(endpoints []string) clientv3.Config {
	return clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
}

// newClient returns a client on endpoints, closed at the test's cleanup.
func newClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientConfig(endpoints))
	if err != nil {
		t.Fatalf("etcd client on %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
