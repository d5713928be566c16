package nesting

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/connector"
	nestingd "github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// hostDialTimeout bounds one SSH dial to the VM host, retries while its sshd does not
// answer included.
const hostDialTimeout = 20 * time.Second

// connect reads the configured keys and makes the client of the daemon: a unix socket
// on this machine, or one on the VM host through an SSH connection that is dialled
// again when it drops. The connection itself is made by the first call.
func (g *InstanceGroup) connect(context.Context) error {
	if err := g.closeClient(); err != nil {
		return err
	}
	path, err := nestingd.SocketPath(g.NestingHost)
	if err != nil {
		return fmt.Errorf("plugin_config.nesting_host: %w: %w", err, provider.ErrInvalidConfig)
	}
	g.socket = path
	var errs []error
	var hostKey []byte
	if s := g.NestingSSH; s != nil && s.KeyFile != "" {
		if hostKey, err = readKey("nesting_ssh.key_file", s.KeyFile); err != nil {
			errs = append(errs, err)
		}
	}
	if g.VMSSH.KeyFile != "" {
		if g.vmKey, err = readKey("vm_ssh.key_file", g.VMSSH.KeyFile); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	var client *nestingd.Client
	var pool *connector.Pool
	if s := g.NestingSSH; s == nil {
		client, err = nestingd.Dial(g.NestingHost)
	} else {
		g.sshHost = s.Address
		if host, _, err := net.SplitHostPort(s.Address); err == nil {
			g.sshHost = host
		}
		g.hostInfo = provider.ConnectInfo{
			ConnectorConfig: provider.ConnectorConfig{Protocol: provider.ProtocolSSH, Username: s.Username,
				Key: hostKey, Password: s.Password, Timeout: hostDialTimeout},
			ID: "nesting-host/" + s.Address, InternalAddr: s.Address, HostKey: []byte(s.HostKey),
		}
		log := g.Log
		if log == nil {
			log = hclog.NewNullLogger()
		}
		pool = connector.NewPool(connector.DialOptions{
			Logger: slog.New(slog.NewTextHandler(log.StandardWriter(&hclog.StandardLoggerOptions{}), nil))})
		info := g.hostInfo
		client, err = nestingd.NewClient(func(ctx context.Context) (net.Conn, error) {
			conn, err := pool.Dial(ctx, info, "unix", path)
			if err != nil {
				return nil, fmt.Errorf("open socket %s on %s: %w", path, s.Address, err)
			}
			return conn, nil
		})
	}
	if err != nil {
		if pool != nil {
			pool.Shutdown()
		}
		return err
	}
	g.mu.Lock()
	g.client, g.pool, g.closed, g.pending = client, pool, false, map[int]bool{}
	g.mu.Unlock()
	return nil
}

// daemon returns the client of the daemon.
func (g *InstanceGroup) daemon() *nestingd.Client {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.client
}

// closeClient closes the client and the SSH connection under it, if any. It is
// idempotent; calls made afterwards fail with the closed client's error.
func (g *InstanceGroup) closeClient() error {
	g.mu.Lock()
	client, pool, closed := g.client, g.pool, g.closed
	g.closed = true
	g.mu.Unlock()
	if closed {
		return nil
	}
	var err error
	if client != nil {
		err = client.Close()
	}
	if pool != nil {
		pool.Shutdown()
	}
	return err
}
