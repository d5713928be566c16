package connector

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Client is one SSH connection to an instance. Commands and forwarded connections are
// channels on it, so any number of goroutines may use it at once (up to the server's
// session limit).
type Client struct {
	ssh      *ssh.Client
	instance string
	addr     string
	user     string
	methods  []string
	log      *slog.Logger

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

func newClient(c *ssh.Client, info provider.ConnectInfo, addr string, methods []string, log *slog.Logger) *Client {
	cl := &Client{ssh: c, instance: info.ID, addr: addr, user: info.Username, methods: methods, log: log,
		done: make(chan struct{})}
	go func() {
		err := c.Wait()
		if err == nil {
			err = ErrConnectionClosed
		} else {
			err = fmt.Errorf("%w: %v", ErrConnectionClosed, err)
		}
		cl.shut(err)
	}()
	if info.Keepalive > 0 {
		go cl.keepalive(info.Keepalive)
	}
	return cl
}

// shut closes the connection once, remembering why.
func (c *Client) shut(why error) {
	c.closeOnce.Do(func() {
		c.closeErr = why
		close(c.done)
		c.ssh.Close()
	})
}

// Close closes the connection and every channel on it.
func (c *Client) Close() error {
	c.shut(fmt.Errorf("%w by the host", ErrConnectionClosed))
	return nil
}

// Done is closed when the connection is gone, for whatever reason.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the connection is gone, or nil while it is up.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.closeErr
	default:
		return nil
	}
}

// Addr is the address the connection was made to.
func (c *Client) Addr() string { return c.addr }

// SSH returns the underlying x/crypto/ssh client, for what this package does not wrap.
func (c *Client) SSH() *ssh.Client { return c.ssh }

// keepalive sends keepalive@openssh.com requests every interval. A request not answered
// within three intervals (OpenSSH's ServerAliveCountMax default) closes the connection,
// so that a Pool re-dials instead of using a dead connection.
func (c *Client) keepalive(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		// Servers answer unknown requests with a failure, which still proves the
		// connection is alive: only a transport error or silence counts.
		c.probe(3 * interval)
		if err := c.Err(); err != nil {
			c.log.Warn("SSH keepalive failed, connection closed", "err", err)
			return
		}
	}
}

// probe sends one keepalive request and closes the connection if it fails or gets no
// answer within limit.
func (c *Client) probe(limit time.Duration) {
	reply := make(chan error, 1)
	go func() {
		_, _, err := c.ssh.SendRequest("keepalive@openssh.com", true, nil)
		reply <- err
	}()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case err := <-reply:
		if err != nil {
			c.shut(fmt.Errorf("%w: %v", ErrConnectionClosed, err))
		}
	case <-t.C:
		c.shut(fmt.Errorf("%w: no answer to a keepalive within %s", ErrConnectionClosed, limit))
	case <-c.done:
	}
}

func (c *Client) errorf(op string, stage Stage, err error) *Error {
	return &Error{Op: op, Instance: c.instance, Addr: c.addr, User: c.user, Stage: stage, Err: err}
}

// channelError explains why opening a channel failed.
func (c *Client) channelError(op string, err error) error {
	var oce *ssh.OpenChannelError
	if errors.As(err, &oce) {
		// OpenSSH refuses a session over MaxSessions with a bare "open failed"
		// (reason "connect failed" or "administratively prohibited", by version);
		// nothing else makes it refuse a session on an authenticated connection.
		return c.errorf(op, StageChannel, fmt.Errorf("%w (server said: %s, %q)", ErrChannelLimit, oce.Reason, oce.Message))
	}
	if cerr := c.Err(); cerr != nil {
		return c.errorf(op, StageChannel, cerr)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		// The connection died and Wait has not noticed yet: mark it dead so that a
		// Pool re-dials.
		err = fmt.Errorf("%w: %v", ErrConnectionClosed, err)
		c.shut(err)
		return c.errorf(op, StageChannel, err)
	}
	return c.errorf(op, StageChannel, err)
}

// opOpenSession is the Op of errors opening a session channel, before any command ran.
const opOpenSession = "open session"

// RunOptions describe one remote command.
type RunOptions struct {
	// Command is run by the login shell of the instance's user.
	Command string
	// Stdin, Stdout and Stderr are connected to the command; nil means empty input and
	// discarded output.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Env is set for the command by prefixing it with `export NAME='value';`, because
	// sshd drops variables not listed in its AcceptEnv. It needs a POSIX shell on the
	// instance.
	Env map[string]string
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func commandWithEnv(cmd string, env map[string]string) (string, error) {
	if len(env) == 0 {
		return cmd, nil
	}
	names := make([]string, 0, len(env))
	for k := range env {
		if !envName.MatchString(k) {
			return "", fmt.Errorf("environment variable name %q is not valid for a shell: use letters, digits and _", k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, "export %s=%s; ", k, shellQuote(env[k]))
	}
	b.WriteString(cmd)
	return b.String(), nil
}

// cancelGrace is how long Run waits, after signalling a cancelled command, for the
// server to close the session before returning anyway.
const cancelGrace = time.Second

// Run runs a command on the instance and waits for it. A non-zero exit gives an
// *ExitError. Cancelling ctx sends SIGKILL to the command, closes the session and
// returns an error wrapping ctx's cause within about a second, even if the server does
// not acknowledge the close. Stdout and Stderr are never written to after Run returns.
func (c *Client) Run(ctx context.Context, opts RunOptions) error {
	if err := ctx.Err(); err != nil {
		return c.errorf("run", "", context.Cause(ctx))
	}
	cmd, err := commandWithEnv(opts.Command, opts.Env)
	if err != nil {
		return c.errorf("run", StageConfig, err)
	}
	sess, err := c.ssh.NewSession()
	if err != nil {
		return c.channelError(opOpenSession, err)
	}
	defer sess.Close()
	// After a cancelled Run returns, the session may still deliver output; the gates
	// drop it so the caller's writers are never written to after Run returns.
	stdout, stderr := gate(opts.Stdout), gate(opts.Stderr)
	defer stdout.close()
	defer stderr.close()
	sess.Stdin = opts.Stdin
	if stdout != nil {
		sess.Stdout = stdout
	}
	if stderr != nil {
		sess.Stderr = stderr
	}
	if err := sess.Start(cmd); err != nil {
		return c.errorf("run", StageChannel, fmt.Errorf("start command: %w", err))
	}
	waited := make(chan error, 1)
	go func() { waited <- sess.Wait() }()
	select {
	case err = <-waited:
	case <-ctx.Done():
		// Without a pty the remote process gets no SIGHUP when the channel closes, so
		// it has to be signalled; closing the session then unblocks Wait.
		_ = sess.Signal(ssh.SIGKILL)
		_ = sess.Close()
		t := time.NewTimer(cancelGrace)
		select {
		case <-waited:
		case <-t.C:
		}
		t.Stop()
		return c.errorf("run", "", fmt.Errorf("command cancelled: %w", context.Cause(ctx)))
	}
	var exitErr *ssh.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exitErr):
		return exitErrorFrom(exitErr)
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		// Tell a lost connection from a session the server closed: the connection
		// may not have noticed its loss yet, so ask the server.
		c.probe(5 * time.Second)
		if cerr := c.Err(); cerr != nil {
			return c.errorf("run", StageChannel, fmt.Errorf("command ended without an exit status: %w", cerr))
		}
		return c.errorf("run", StageChannel, errors.New("command ended without an exit status (killed, or the server closed the session)"))
	}
	return c.errorf("run", StageChannel, err)
}

// Dial opens a connection from the instance to addr: network "tcp" (also "tcp4",
// "tcp6") for a host:port as seen from the instance, "unix" for a socket path on the
// instance (direct-streamlocal@openssh.com). A server that refuses unix forwarding gives
// an error wrapping ErrStreamLocalRefused.
func (c *Client) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.ssh.DialContext(ctx, network, addr)
	if err == nil {
		return conn, nil
	}
	op := "dial " + network + " " + addr
	var oce *ssh.OpenChannelError
	if network == "unix" && errors.As(err, &oce) {
		return nil, c.errorf(op, StageChannel, fmt.Errorf("%w (server said: %s)", ErrStreamLocalRefused, oce.Message))
	}
	if errors.As(err, &oce) {
		return nil, c.errorf(op, StageChannel, err)
	}
	if ctx.Err() != nil {
		return nil, c.errorf(op, StageChannel, context.Cause(ctx))
	}
	return nil, c.channelError(op, err)
}

// DockerDialStdio is the remote command that bridges stdin/stdout to the Docker daemon.
const DockerDialStdio = "docker system dial-stdio"

// DialUnix connects to a unix socket on the instance through the SSH connection; if the
// server does not open it (see ErrStreamLocalRefused) and fallback is not empty, it runs
// fallback (e.g. DockerDialStdio) and uses its stdin/stdout as the connection instead.
// A fallback that fails reports its exit status and stderr on the first read.
func (c *Client) DialUnix(ctx context.Context, path, fallback string) (net.Conn, error) {
	conn, err := c.Dial(ctx, "unix", path)
	if err == nil || fallback == "" || !errors.Is(err, ErrStreamLocalRefused) {
		return conn, err
	}
	c.log.Debug("unix socket forwarding refused, using the fallback command", "socket", path, "command", fallback)
	return c.DialRun(ctx, fallback)
}

// DialRun starts command on the instance and returns a connection whose reads are the
// command's stdout and whose writes go to its stdin, as `docker system dial-stdio`
// expects. Closing the connection closes the session. When the command fails, reads
// return an error carrying its exit status and the end of its stderr.
func (c *Client) DialRun(ctx context.Context, command string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, c.errorf("dial-run", "", context.Cause(ctx))
	}
	sess, err := c.ssh.NewSession()
	if err != nil {
		return nil, c.channelError(opOpenSession, err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, c.errorf("dial-run", StageChannel, err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, c.errorf("dial-run", StageChannel, err)
	}
	stderr := &tailBuffer{max: 4096}
	sess.Stderr = stderr
	if err := sess.Start(command); err != nil {
		sess.Close()
		return nil, c.errorf("dial-run", StageChannel, fmt.Errorf("start %q: %w", command, err))
	}
	conn := &cmdConn{sess: sess, stdin: stdin, stdout: stdout, stderr: stderr, command: command,
		exited: make(chan struct{}), client: c}
	go func() {
		conn.waitErr = sess.Wait()
		close(conn.exited)
	}()
	return conn, nil
}

// gatedWriter passes writes on until closed, then discards them.
type gatedWriter struct {
	mu     sync.Mutex
	w      io.Writer
	closed bool
}

func gate(w io.Writer) *gatedWriter {
	if w == nil {
		return nil
	}
	return &gatedWriter{w: w}
}

func (g *gatedWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return len(p), nil
	}
	return g.w.Write(p)
}

func (g *gatedWriter) close() {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// cmdConn is a net.Conn over a remote command's stdin and stdout.
type cmdConn struct {
	client  *Client
	sess    *ssh.Session
	command string
	stdin   io.WriteCloser
	stdout  io.Reader
	stderr  *tailBuffer
	exited  chan struct{}
	waitErr error
	once    sync.Once
}

// Read reads the command's stdout. At the end of output it reports how the command
// ended if that was a failure.
func (c *cmdConn) Read(p []byte) (int, error) {
	n, err := c.stdout.Read(p)
	if err == io.EOF {
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-c.exited:
			if c.waitErr != nil {
				msg := c.stderr.String()
				if msg != "" {
					msg = ": " + msg
				}
				return n, c.client.errorf("dial-run "+c.command, "", fmt.Errorf("%v%s", errString(c.waitErr), msg))
			}
		case <-t.C:
		}
	}
	return n, err
}

func (c *cmdConn) Write(p []byte) (int, error) { return c.stdin.Write(p) }

// CloseWrite closes the command's stdin, leaving its stdout readable.
func (c *cmdConn) CloseWrite() error { return c.stdin.Close() }

func (c *cmdConn) Close() error {
	c.once.Do(func() {
		c.stdin.Close()
		c.sess.Close()
	})
	return nil
}

type cmdAddr string

func (a cmdAddr) Network() string { return "ssh-exec" }
func (a cmdAddr) String() string  { return string(a) }

func (c *cmdConn) LocalAddr() net.Addr  { return cmdAddr(c.client.addr) }
func (c *cmdConn) RemoteAddr() net.Addr { return cmdAddr(c.command) }

// Deadlines are not supported, as on x/crypto/ssh's own forwarded connections.
func (c *cmdConn) SetDeadline(time.Time) error      { return errDeadline }
func (c *cmdConn) SetReadDeadline(time.Time) error  { return errDeadline }
func (c *cmdConn) SetWriteDeadline(time.Time) error { return errDeadline }

var errDeadline = errors.New("deadlines are not supported on a command's stdio connection")
