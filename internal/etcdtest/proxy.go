package etcdtest

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Proxy is a TCP proxy in front of a cluster's members, one listening address per
// member, so that a test can cut one client (one manager) off from etcd while other
// clients keep their direct connections. It is closed at the test's cleanup.
type Proxy struct {
	listeners []net.Listener
	wg        sync.WaitGroup
	done      chan struct{} // closed at cleanup

	mu     sync.Mutex
	closed bool
	cut    bool
	gate   chan struct{}         // while cut: closed by Restore
	conns  map[net.Conn]struct{} // both sides of every forwarded connection
}

// Proxy starts a proxy in front of every member of the cluster (including members that
// are stopped now: it dials a member when a connection arrives).
func (c *Cluster) Proxy(t testing.TB) *Proxy {
	t.Helper()
	p := &Proxy{done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	for _, m := range c.members {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			p.close()
			t.Fatalf("etcd proxy: listen on 127.0.0.1: %v", err)
		}
		p.listeners = append(p.listeners, l)
		target := strings.TrimPrefix(m.clientURL, "http://")
		p.wg.Go(func() { p.accept(l, target) })
	}
	t.Cleanup(p.close)
	return p
}

// Endpoints returns the proxy's client URLs, one per member in member order.
func (p *Proxy) Endpoints() []string {
	var eps []string
	for _, l := range p.listeners {
		eps = append(eps, "http://"+l.Addr().String())
	}
	return eps
}

// Client returns a client on the proxy's endpoints, closed at the test's cleanup: the
// client a Cut cuts off.
func (p *Proxy) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return newClient(t, p.Endpoints())
}

// Cut partitions the proxy's clients from the cluster: it closes every forwarded
// connection (so the client's streams, lease keep-alives among them, fail at once) and,
// until Restore, accepts new connections but passes no byte of them either way. The
// client's leases then expire on the server after their TTL, as for a manager cut off
// from etcd by the network.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cut {
		p.cut = true
		p.gate = make(chan struct{})
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Restore ends a Cut: connections accepted meanwhile are forwarded from now on (what
// the client sent waits in them, as after a healed partition), and so are new ones.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		p.cut = false
		close(p.gate)
	}
}

func (p *Proxy) accept(l net.Listener, target string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return // closed at cleanup
		}
		p.wg.Go(func() { p.serve(c, target) })
	}
}

// serve holds c while the proxy is cut, then forwards it to target.
func (p *Proxy) serve(c net.Conn, target string) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		if !p.cut {
			p.conns[c] = struct{}{}
			p.mu.Unlock()
			break
		}
		gate := p.gate
		p.mu.Unlock()
		select {
		case <-gate:
		case <-p.done:
		}
	}
	// A stopped member refuses: so does the proxy, by closing the client's side.
	d, err := net.DialTimeout("tcp", target, probeTimeout)
	p.mu.Lock()
	_, forwarded := p.conns[c] // false when a Cut or the cleanup closed c meanwhile
	if err != nil || !forwarded {
		delete(p.conns, c)
		p.mu.Unlock()
		c.Close()
		if d != nil {
			d.Close()
		}
		return
	}
	p.conns[d] = struct{}{}
	p.mu.Unlock()

	var pipes sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// One direction ended: end the connection, as the peers would see it end.
		c.Close()
		d.Close()
	}
	pipes.Go(func() { pipe(d, c) })
	pipes.Go(func() { pipe(c, d) })
	pipes.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, d)
	p.mu.Unlock()
}

// close stops the proxy: its listeners, held and forwarded connections, goroutines.
func (p *Proxy) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
	p.mu.Unlock()
	for _, l := range p.listeners {
		l.Close()
	}
	p.wg.Wait()
}
