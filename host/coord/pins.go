package coord

import (
	"context"
	"fmt"
	"net/url"

	"golang.org/x/crypto/ssh"
)

// Pins keeps the host keys first seen for a shared pool's instances in etcd (a
// connector.HostKeyStore), so that a key one manager pinned is the key every manager
// expects: an instance that shows another manager a different key is refused there
// too.
type Pins struct {
	n   *Node
	pfx string // ends with "/"
}

// Pins returns the host-key pins of the pool owner.
func (n *Node) Pins(owner string) *Pins { return &Pins{n: n, pfx: n.poolPrefix(owner) + "/pins/"} }

func (p *Pins) key(instance string) string { return p.pfx + url.PathEscape(instance) }

func (p *Pins) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(p.n.ctx, p.n.ttl+clientRetry)
}

// Lookup returns the pinned key for the instance, or nil if none is pinned.
func (p *Pins) Lookup(instance string) (ssh.PublicKey, error) {
	ctx, cancel := p.ctx()
	defer cancel()
	resp, err := p.n.cli.Get(ctx, p.key(instance))
	if err != nil {
		return nil, fmt.Errorf("read the host key pin of %s from etcd: %w", instance, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(resp.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("host key pin of %s in etcd (%s): %w", instance, p.key(instance), err)
	}
	return key, nil
}

// Pin records key for the instance, replacing any earlier pin.
func (p *Pins) Pin(instance string, key ssh.PublicKey) error {
	ctx, cancel := p.ctx()
	defer cancel()
	if _, err := p.n.cli.Put(ctx, p.key(instance), string(ssh.MarshalAuthorizedKey(key))); err != nil {
		return fmt.Errorf("pin the host key of %s in etcd: %w", instance, err)
	}
	return nil
}

// Forget removes the instance's pin (the instance is gone).
func (p *Pins) Forget(instance string) error {
	ctx, cancel := p.ctx()
	defer cancel()
	if _, err := p.n.cli.Delete(ctx, p.key(instance)); err != nil {
		return fmt.Errorf("forget the host key pin of %s in etcd: %w", instance, err)
	}
	return nil
}

// String says where the pins live, for error messages.
func (p *Pins) String() string { return "etcd keys " + p.pfx + "<instance>" }
