package dockerautoscaler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"golang.org/x/crypto/ssh"
)

// servicePollInterval is how often a service's port is tried while the job waits.
const servicePollInterval = 200 * time.Millisecond

// startedService is a service container the job may wait for.
type startedService struct {
	id, image string
	aliases   []string
}

// waitForServices waits, up to Options.WaitForServices from now, until each service's
// exposed TCP ports accept connections, as GitLab Runner's wait_for_services_timeout.
// A port that does not is a warning naming the service and the port, not a failure:
// the job's script may not need it yet. The ports are tried from the instance, through
// Options.Dial, since the services' addresses are the instance's.
func (e *Env) waitForServices(ctx context.Context, svcs []startedService, log io.Writer) error {
	if e.opts.WaitForServices <= 0 || e.opts.Dial == nil || len(svcs) == 0 {
		return nil
	}
	mode := container.NetworkMode(e.networkMode)
	if mode.IsNone() || mode.IsContainer() {
		return nil
	}
	fmt.Fprintf(log, "Waiting for services to be up and running (timeout %s)...\n", e.opts.WaitForServices)
	deadline := time.Now().Add(e.opts.WaitForServices)
	for _, s := range svcs {
		addr, ports, err := e.servicePorts(ctx, s)
		if err != nil {
			return err
		}
		for _, port := range ports {
			err := e.waitForPort(ctx, net.JoinHostPort(addr, strconv.Itoa(port)), deadline)
			switch {
			case ctx.Err() != nil:
				return context.Cause(ctx)
			case errors.Is(err, errForwardingRefused):
				fmt.Fprintf(log, "WARNING: cannot wait for services: %v\n", err)
				return nil
			case err != nil:
				fmt.Fprintf(log, "WARNING: service %s (%s) probably didn't start properly: nothing accepted connections on port %d/tcp within %s (wait_for_services_timeout): %v\n",
					s.image, s.aliases[0], port, e.opts.WaitForServices, err)
			}
		}
	}
	return nil
}

// servicePorts returns the address of a service container as the instance reaches it
// and its exposed TCP ports, sorted.
func (e *Env) servicePorts(ctx context.Context, s startedService) (string, []int, error) {
	res, err := e.docker.ContainerInspect(ctx, s.id, client.ContainerInspectOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("inspect service %s: %w", s.image, err)
	}
	c := res.Container
	var ports []int
	if c.Config != nil {
		for p := range c.Config.ExposedPorts {
			if p.Proto() == "tcp" {
				ports = append(ports, int(p.Num()))
			}
		}
	}
	slices.Sort(ports)
	if container.NetworkMode(e.networkMode).IsHost() {
		return "127.0.0.1", ports, nil
	}
	var ip netip.Addr
	if c.NetworkSettings != nil {
		name := e.networkMode
		if name == "" || name == "default" {
			name = "bridge"
		}
		if ep := c.NetworkSettings.Networks[name]; ep != nil {
			ip = ep.IPAddress
		}
	}
	if !ip.IsValid() {
		return "", nil, nil // not running, or on no network the job can reach
	}
	return ip.String(), ports, nil
}

// errForwardingRefused is the instance's SSH server refusing TCP forwarding
// (AllowTcpForwarding no): no port can be checked.
var errForwardingRefused = errors.New("the instance's SSH server refuses TCP forwarding (AllowTcpForwarding)")

// waitForPort tries addr until a connection is accepted or deadline passes (it tries
// at least once), and returns the last error.
func (e *Env) waitForPort(ctx context.Context, addr string, deadline time.Time) error {
	for {
		dctx, cancel := context.WithDeadline(ctx, time.Now().Add(max(time.Until(deadline), servicePollInterval)))
		conn, err := e.opts.Dial(dctx, "tcp", addr)
		cancel()
		if err == nil {
			conn.Close()
			return nil
		}
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) && oce.Reason == ssh.Prohibited {
			return fmt.Errorf("%w: %v", errForwardingRefused, err)
		}
		if ctx.Err() != nil || time.Until(deadline) <= 0 {
			return err
		}
		t := time.NewTimer(min(servicePollInterval, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-t.C:
		}
	}
}
