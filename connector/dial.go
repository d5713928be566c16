package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Defaults used when the corresponding option is zero.
const (
	// DefaultTimeout bounds one Dial, waiting for the instance's sshd included, when
	// connector_config timeout is 0.
	DefaultTimeout = 5 * time.Minute
	// DefaultMinBackoff and DefaultMaxBackoff bound the wait between dial attempts.
	DefaultMinBackoff = 250 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
	// attemptTimeout bounds one attempt's TCP connect and SSH handshake, so that a
	// black-holed attempt does not eat the whole timeout.
	attemptTimeout = 30 * time.Second
)

// DialOptions are the host-side settings for reaching instances. The zero value works.
type DialOptions struct {
	// UseExternalAddr dials ConnectInfo.ExternalAddr when the plugin reports one
	// (connector_config use_external_addr).
	UseExternalAddr bool
	// HostKeys pins host keys on first use when the plugin reports none. Nil means a
	// process-wide in-memory store.
	HostKeys HostKeyStore
	// DialFn opens the transport connection; nil means a TCP dial. Set it to tunnel
	// through another connection (e.g. a jump host's Client.Dial).
	DialFn func(ctx context.Context, network, addr string) (net.Conn, error)
	// MinBackoff and MaxBackoff bound the exponential backoff (with jitter) between dial
	// attempts while the instance's sshd is not up yet.
	MinBackoff, MaxBackoff time.Duration
	// OnRetry, if set, is called before waiting to retry a failed attempt.
	OnRetry func(attempt int, err error, wait time.Duration)
	// Logger receives connection events; nil means slog.Default().
	Logger *slog.Logger
}

var defaultHostKeys = NewMemoryHostKeyStore()

func (o DialOptions) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

func (o DialOptions) hostKeys() HostKeyStore {
	if o.HostKeys != nil {
		return o.HostKeys
	}
	return defaultHostKeys
}

// Dial connects to the instance described by info with the protocol it names. Only SSH
// is implemented: "winrm" and "winrm+https" give ErrWinRMNotSupported.
func Dial(ctx context.Context, info provider.ConnectInfo, opts DialOptions) (*Client, error) {
	switch info.Protocol {
	case "", provider.ProtocolSSH:
		return DialSSH(ctx, info, opts)
	case provider.ProtocolWinRM, provider.ProtocolWinRMHTTPS:
		addr, _ := info.Addr(opts.UseExternalAddr)
		return nil, &Error{Op: "dial " + string(info.Protocol), Instance: info.ID, Addr: addr, User: info.Username,
			Stage: StageConfig, Err: ErrWinRMNotSupported}
	default:
		return nil, &Error{Op: "dial", Instance: info.ID, Stage: StageConfig,
			Err: fmt.Errorf("unknown protocol %q in connector_config: use \"ssh\"", info.Protocol)}
	}
}

// DialSSH connects and authenticates to the instance's SSH server. It retries, with
// exponential backoff and jitter, while the server is not reachable yet (connection
// refused, timeouts, a handshake cut short), until info.Timeout (DefaultTimeout if 0)
// has passed or ctx is done. Host key and authentication failures are not retried.
func DialSSH(ctx context.Context, info provider.ConnectInfo, opts DialOptions) (*Client, error) {
	e := &Error{Op: "dial ssh", Instance: info.ID, User: info.Username}
	fail := func(stage Stage, err error) (*Client, error) {
		e.Stage, e.Err = stage, err
		return nil, e
	}
	addr, err := info.Addr(opts.UseExternalAddr)
	if err != nil {
		return fail(StageConfig, err)
	}
	e.Addr = addr
	if info.Username == "" {
		return fail(StageConfig, errors.New("no username: set username in [runners.autoscaler.connector_config] or have the plugin report one"))
	}
	var authStarted bool
	methods, names, err := authMethods(info.ConnectorConfig, &authStarted)
	e.Methods = names
	if err != nil {
		return fail(StageConfig, err)
	}
	pinID := info.ID
	if pinID == "" {
		pinID = "addr:" + addr
	}

	timeout := info.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeoutCause(ctx, timeout,
		fmt.Errorf("gave up after connector_config timeout %s; raise it for slow-booting instances", timeout))
	defer cancel()

	minB, maxB := opts.MinBackoff, opts.MaxBackoff
	if minB <= 0 {
		minB = DefaultMinBackoff
	}
	if maxB < minB {
		maxB = max(DefaultMaxBackoff, minB)
	}
	log := opts.logger().With("instance", info.ID, "addr", addr)
	backoff := minB
	var prev error // the last attempt's error, before the one in progress
	var prevStage Stage
	for attempt := 1; ; attempt++ {
		e.Attempts = attempt
		authStarted = false
		verifier, err := newHostKeyVerifier(pinID, addr, info.HostKey, opts.hostKeys())
		if err != nil {
			return fail(StageHostKey, err)
		}
		cfg := &ssh.ClientConfig{
			User:              info.Username,
			Auth:              methods,
			HostKeyCallback:   verifier.check,
			HostKeyAlgorithms: verifier.algorithms(),
		}
		client, stage, err := dialOnce(ctx, addr, cfg, opts, verifier, &authStarted)
		if err == nil {
			if attempt > 1 {
				log.Info("instance SSH is up", "attempts", attempt)
			}
			return newClient(client, info, addr, names, log), nil
		}
		if !retriable(stage, err) || ctx.Err() != nil {
			if ctx.Err() != nil && (stage == StageTCP || stage == StageHandshake) {
				if prev != nil && cutShort(err) {
					// The budget ran out in the middle of this attempt: its "i/o
					// timeout" says nothing; the attempt before says why SSH is not
					// reachable ("connection refused").
					stage, err = prevStage, prev
				}
				err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
			}
			return fail(stage, err)
		}
		if prev == nil || !cutShort(err) {
			// An attempt cut short by its deadline says nothing; keep what the
			// attempts before it found.
			prev, prevStage = err, stage
		}
		wait := backoff/2 + rand.N(backoff/2+1) // jitter: spread retries of many hosts
		backoff = min(2*backoff, maxB)
		if opts.OnRetry != nil {
			opts.OnRetry(attempt, err, wait)
		}
		log.Debug("instance SSH not reachable yet, retrying", "attempt", attempt, "stage", stage, "err", err, "wait", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			// The deadline may have cut this attempt before the context reported it.
			return fail(prevStage, fmt.Errorf("%w (%v)", prev, context.Cause(ctx)))
		case <-t.C:
		}
	}
}

// cutShort reports whether err only says that an attempt was cut short by its
// context (a deadline, a cancellation), not what it found.
func cutShort(err error) bool {
	var ne net.Error
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// dialOnce makes one attempt and reports the stage it reached.
func dialOnce(ctx context.Context, addr string, cfg *ssh.ClientConfig, opts DialOptions, v *hostKeyVerifier, authStarted *bool) (*ssh.Client, Stage, error) {
	actx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	dial := opts.DialFn
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	conn, err := dial(actx, "tcp", addr)
	if err != nil {
		return nil, StageTCP, err
	}
	conn = quickAck(conn)
	if dl, ok := actx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// Cancelling ctx must abort a handshake that hangs.
	stop := context.AfterFunc(actx, func() { conn.Close() })
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cfg)
	stopped := stop()
	if err != nil {
		conn.Close()
		switch {
		case v.failed != nil:
			return nil, StageHostKey, v.failed
		case *authStarted:
			return nil, StageAuth, err
		}
		if !stopped && ctx.Err() == nil {
			err = fmt.Errorf("%w (no answer within %s)", err, attemptTimeout)
		}
		return nil, StageHandshake, err
	}
	if !stopped {
		c.Close()
		return nil, StageHandshake, fmt.Errorf("handshake interrupted: %w", context.Cause(actx))
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(c, chans, reqs), "", nil
}

// retriable says whether an attempt's failure may go away once the instance finishes
// booting: nothing listening yet, or sshd accepting and then dropping connections while
// it starts.
func retriable(stage Stage, err error) bool {
	switch stage {
	case StageTCP:
		return true
	case StageHandshake:
		var ne net.Error
		return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
			errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) ||
			errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) ||
			(errors.As(err, &ne) && ne.Timeout())
	}
	return false
}

// ConnectorOptions combine what one-shot Run needs.
type ConnectorOptions struct {
	RunOptions
	DialOptions
}

// Run dials the instance, runs one command and closes the connection: for one-off
// commands outside a Pool (e.g. an instance's ready check). Jobs should use a Pool.
func Run(ctx context.Context, info provider.ConnectInfo, opts ConnectorOptions) error {
	c, err := Dial(ctx, info, opts.DialOptions)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Run(ctx, opts.RunOptions)
}
