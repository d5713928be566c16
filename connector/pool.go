package connector

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Pool keeps one SSH connection per instance ID, shared by every job on the instance. A
// connection found dead is re-dialled on the next use; Close(id) drops it when the
// instance goes. All methods are safe for concurrent use.
type Pool struct {
	opts DialOptions

	mu      sync.Mutex
	entries map[string]*poolEntry
	closed  bool
	dials   int
}

type poolEntry struct {
	// lock serialises dialling, so concurrent first uses share one connection; it is a
	// channel so that waiting for it honours ctx.
	lock   chan struct{}
	client *Client
	gone   bool
}

// NewPool returns an empty pool that dials with opts.
func NewPool(opts DialOptions) *Pool {
	if opts.HostKeys == nil {
		opts.HostKeys = NewMemoryHostKeyStore()
	}
	return &Pool{opts: opts, entries: map[string]*poolEntry{}}
}

// Client returns the live connection to the instance, dialling it if there is none or
// the previous one was lost. The pool owns it: do not Close it, call Pool.Close(id).
func (p *Pool) Client(ctx context.Context, info provider.ConnectInfo) (*Client, error) {
	if info.ID == "" {
		return nil, &Error{Op: "dial ssh", Stage: StageConfig, Err: errors.New("the pool needs an instance ID")}
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, &Error{Op: "dial ssh", Instance: info.ID, Stage: StageConfig, Err: errors.New("connection pool is closed")}
	}
	e := p.entries[info.ID]
	if e == nil {
		e = &poolEntry{lock: make(chan struct{}, 1)}
		p.entries[info.ID] = e
	}
	p.mu.Unlock()

	select {
	case e.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, &Error{Op: "dial ssh", Instance: info.ID, Err: fmt.Errorf("waiting for another dial to the instance: %w", context.Cause(ctx))}
	}
	defer func() { <-e.lock }()
	if e.client != nil && e.client.Err() == nil {
		return e.client, nil
	}
	if e.client != nil {
		p.opts.logger().Info("SSH connection to instance lost, re-dialling", "instance", info.ID, "reason", e.client.Err())
	}
	c, err := Dial(ctx, info, p.opts)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.gone || p.closed {
		c.Close()
		return nil, &Error{Op: "dial ssh", Instance: info.ID, Addr: c.addr, Err: errors.New("the instance was removed from the pool while dialling")}
	}
	e.client = c
	p.dials++
	return c, nil
}

// Run runs a command on the instance over its shared connection. If the connection
// turns out to be dead before the command starts, it is re-dialled once.
func (p *Pool) Run(ctx context.Context, info provider.ConnectInfo, opts RunOptions) error {
	for try := 0; ; try++ {
		c, err := p.Client(ctx, info)
		if err != nil {
			return err
		}
		err = c.Run(ctx, opts)
		if try == 0 && notStarted(err, c) {
			continue
		}
		return err
	}
}

// Dial opens a TCP or unix connection from the instance (see Client.Dial), re-dialling
// a dead SSH connection once.
func (p *Pool) Dial(ctx context.Context, info provider.ConnectInfo, network, addr string) (net.Conn, error) {
	for try := 0; ; try++ {
		c, err := p.Client(ctx, info)
		if err != nil {
			return nil, err
		}
		conn, err := c.Dial(ctx, network, addr)
		if try == 0 && notStarted(err, c) {
			continue
		}
		return conn, err
	}
}

// notStarted reports whether err means the channel was never opened because the
// connection was dead, so that retrying on a new connection has no side effects. A
// command that started and then lost its connection is not retried: it may have done
// part of its work.
func notStarted(err error, c *Client) bool {
	var e *Error
	if err == nil || !errors.As(err, &e) || e.Stage != StageChannel || !errors.Is(err, ErrConnectionClosed) || c.Err() == nil {
		return false
	}
	return e.Op == opOpenSession || strings.HasPrefix(e.Op, "dial ")
}

// Close closes the instance's connection and forgets its pinned host key: the instance
// is gone, and a new one may reuse its ID only with a new key.
func (p *Pool) Close(id string) error {
	p.mu.Lock()
	e := p.entries[id]
	delete(p.entries, id)
	if e != nil {
		e.gone = true
	}
	var c *Client
	if e != nil {
		c = e.client
	}
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
	return p.opts.HostKeys.Forget(id)
}

// Disconnect closes the instance's connection but keeps its host key pin; the next use
// dials again.
func (p *Pool) Disconnect(id string) {
	p.mu.Lock()
	e := p.entries[id]
	p.mu.Unlock()
	if e != nil {
		select {
		case e.lock <- struct{}{}:
			if e.client != nil {
				e.client.Close()
			}
			<-e.lock
		default:
			// A dial is in progress; the connection it makes is new anyway.
		}
	}
}

// Shutdown closes every connection; the pool refuses further use. Pins are kept.
func (p *Pool) Shutdown() {
	p.mu.Lock()
	p.closed = true
	entries := p.entries
	p.entries = map[string]*poolEntry{}
	p.mu.Unlock()
	for _, e := range entries {
		select {
		case e.lock <- struct{}{}:
			if e.client != nil {
				e.client.Close()
			}
			<-e.lock
		default:
			// The dial in progress sees p.closed and closes what it made.
		}
	}
}

// Stats is a snapshot of a Pool.
type Stats struct {
	// Instances is the number of instances with a live connection.
	Instances int
	// Dials is the number of successful dials since the pool was made.
	Dials int
}

// Stats returns how many instances are connected and how many dials were made.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Stats{Dials: p.dials}
	for _, e := range p.entries {
		if e.client != nil && e.client.Err() == nil {
			s.Instances++
		}
	}
	return s
}
