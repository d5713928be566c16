// Package pluginclient is the host side of the plugin protocol: it launches a plugin
// binary (or attaches to one served in process) and returns a provider.InstanceGroup
// whose calls cross the process boundary.
//
// Every call is bounded by the caller's context. A plugin process that dies is reported
// as such (errors wrap ErrPluginExited and quote the end of its stderr), never as a hang.
// Sentinel errors of sdk/provider survive the boundary: errors.Is works on what the
// plugin returned.
package pluginclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/flotilla-ci/flotilla/sdk/internal/pb/fleeting/v1"
	"github.com/flotilla-ci/flotilla/sdk/internal/wire"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// hostPIDEnv is sdk/plugin.HostPIDEnv (not imported: the host side does not link the
// serving side); a test checks that they agree.
const hostPIDEnv = "FLEETING_PLUGIN_HOST_PID"

// ErrPluginExited is wrapped by every call's error once the plugin process has exited.
var ErrPluginExited = errors.New("plugin process exited")

// Options tune how a plugin is launched.
type Options struct {
	// Args are passed to the binary. Empty for ordinary plugins; the runner uses them to
	// re-execute itself as the embedded local plugin.
	Args []string
	// Env is added to the plugin's environment (on top of the host's).
	Env []string
	// Logger receives the plugin's log lines at their own levels. Default: discarded.
	Logger hclog.Logger
	// StartTimeout bounds the launch and handshake. Default 1 minute.
	StartTimeout time.Duration
	// Name labels the plugin in errors and logs. Default: the binary's base name.
	Name string
}

// Plugin is a launched plugin. It implements provider.InstanceGroup; the JSON
// configuration given to Launch is sent with Init.
type Plugin struct {
	name   string
	config []byte
	client *goplugin.Client
	cmd    *exec.Cmd // nil for Attach
	rpc    pb.InstanceGroupClient
	health grpc_health_v1.HealthClient
	stderr *tail
	proto  int
	// attached is set for Attach: go-plugin's Kill does nothing for a test-mode
	// reattachment, so Kill closes the connection itself.
	attached bool
	// socket is the unix socket a launched plugin serves on, as it was at launch.
	socket *servedSocket
}

// servedSocket is the unix socket file a launched plugin serves on. A plugin removes it
// when it exits on its own or is stopped (sdk/plugin); one that dies without that (a
// crash, SIGKILL, os.Exit in the plugin's code) leaves it in the temporary directory,
// and a host that relaunches a crashing plugin would pile them up. So the host removes
// it once the process is gone.
type servedSocket struct {
	path string
	file os.FileInfo
}

// launchedSocket returns the unix socket the plugin of client announced, if any.
func launchedSocket(client *goplugin.Client) *servedSocket {
	rc := client.ReattachConfig()
	if rc == nil || rc.Addr == nil || rc.Addr.Network() != "unix" {
		return nil
	}
	fi, err := os.Lstat(rc.Addr.String())
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil
	}
	return &servedSocket{path: rc.Addr.String(), file: fi}
}

// remove deletes the socket file if it is still the one the plugin made: never
// another process's that happens to have the same name. Call it only once the plugin
// process has exited.
func (s *servedSocket) remove() {
	if s == nil {
		return
	}
	if fi, err := os.Lstat(s.path); err == nil && os.SameFile(fi, s.file) {
		_ = os.Remove(s.path)
	}
}

// The host side has every call: what a plugin does not implement answers ErrNotSupported.
var (
	_ provider.InstanceGroup = (*Plugin)(nil)
	_ provider.Heartbeater   = (*Plugin)(nil)
	_ provider.Suspender     = (*Plugin)(nil)
)

// tail keeps what a plugin wrote to stderr that explains its end: the last lines, and
// the Go runtime's crash report. Go prints the cause first ("panic: …", "fatal error: …")
// and a stack trace of any length after it, so the last lines alone would lose the one
// that matters. Everything it holds is bounded, however much the plugin writes.
type tail struct {
	mu      sync.Mutex
	lines   []string // the last tailKeep complete lines
	partial []byte   // the line being written, at most maxLineBytes
	cut     bool     // partial was cut: the rest of that line is dropped
	crash   []string // the first crash line and up to crashLines-1 lines after it
}

const (
	tailKeep     = 20   // lines kept
	tailShow     = 5    // lines quoted in errors when there is no crash report
	crashLines   = 8    // lines of a crash report quoted: the cause and the top frames
	maxLineBytes = 4096 // longer lines are cut
)

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := maxLineBytes - len(t.partial); len(chunk) > room {
			chunk, t.cut = chunk[:room], true
		}
		t.partial = append(t.partial, chunk...)
		if i < 0 {
			break
		}
		t.endLine()
		p = p[i+1:]
	}
	return n, nil
}

// endLine files the partial line.
func (t *tail) endLine() {
	line := strings.TrimRight(string(t.partial), "\r")
	if t.cut {
		line += " …(cut)"
	}
	t.partial, t.cut = t.partial[:0], false
	t.lines = append(t.lines, line)
	if len(t.lines) > tailKeep {
		t.lines = t.lines[len(t.lines)-tailKeep:]
	}
	switch {
	case t.crash == nil && (strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ")):
		t.crash = []string{line}
	case t.crash != nil && len(t.crash) < crashLines:
		t.crash = append(t.crash, line)
	}
}

// crashed reports whether the plugin wrote a Go crash report.
func (t *tail) crashed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.crash != nil
}

// String is what errors quote: the crash report if there is one, else the last lines.
func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.crash != nil {
		return strings.Join(t.crash, "\n")
	}
	last := t.lines
	if len(last) > tailShow {
		last = last[len(last)-tailShow:]
	}
	return strings.Join(last, "\n")
}

// grpcPlugin is the go-plugin glue on the host side.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
}

func (grpcPlugin) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return fmt.Errorf("the host side serves nothing")
}

func (grpcPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return pb.NewInstanceGroupClient(c), nil
}

func pluginSets() map[int]goplugin.PluginSet {
	return map[int]goplugin.PluginSet{wire.ProtocolVersion: {wire.PluginName: grpcPlugin{}}}
}

// Launch starts binary as a plugin, completes the handshake and returns it ready for
// Init. configJSON is the plugin_config object that Init will send.
func Launch(ctx context.Context, binary string, configJSON []byte, opts Options) (*Plugin, error) {
	if opts.Name == "" {
		opts.Name = baseName(binary)
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = time.Minute
	}
	cmd := exec.Command(binary, opts.Args...)
	// The host's PID lets the plugin tell a host that died while launching it (the
	// plugin starts already reparented) from a live one; see sdk/plugin.HostPIDEnv.
	cmd.Env = append(append(os.Environ(), opts.Env...), hostPIDEnv+"="+strconv.Itoa(os.Getpid()))
	ownProcessGroup(cmd)
	stderr := &tail{}
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  wire.Handshake,
		VersionedPlugins: pluginSets(),
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           opts.Logger.Named(opts.Name),
		Stderr:           stderr,
		StartTimeout:     opts.StartTimeout,
	})
	p, err := connect(ctx, client, opts.Name, configJSON, stderr)
	if err != nil {
		// connect killed the plugin; it may have announced its socket before dying.
		if client.Exited() {
			launchedSocket(client).remove()
		}
		return nil, fmt.Errorf("launch plugin %s: %w", binary, err)
	}
	p.cmd = cmd
	p.socket = launchedSocket(client)
	return p, nil
}

// Attach connects to a plugin served elsewhere (sdk/plugin.ServeInProcess) over real
// gRPC. Kill disconnects; the serving side stops when its own context ends.
func Attach(ctx context.Context, rc *goplugin.ReattachConfig, configJSON []byte, opts Options) (*Plugin, error) {
	if opts.Name == "" {
		opts.Name = "in-process"
	}
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  wire.Handshake,
		VersionedPlugins: pluginSets(),
		// go-plugin does not negotiate on reattach: the served version picks the set.
		Plugins:          pluginSets()[rc.ProtocolVersion],
		Reattach:         rc,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           opts.Logger.Named(opts.Name),
	})
	p, err := connect(ctx, client, opts.Name, configJSON, &tail{})
	if err != nil {
		return nil, fmt.Errorf("attach plugin %s: %w", opts.Name, err)
	}
	p.attached = true
	return p, nil
}

func connect(ctx context.Context, client *goplugin.Client, name string, configJSON []byte, stderr *tail) (*Plugin, error) {
	type result struct {
		raw any
		err error
	}
	done := make(chan result, 1)
	var health grpc_health_v1.HealthClient
	go func() {
		rpcClient, err := client.Client()
		if err != nil {
			done <- result{err: err}
			return
		}
		if g, ok := rpcClient.(*goplugin.GRPCClient); ok {
			health = grpc_health_v1.NewHealthClient(g.Conn)
		}
		raw, err := rpcClient.Dispense(wire.PluginName)
		done <- result{raw, err}
	}()
	select {
	case <-ctx.Done():
		client.Kill()
		return nil, ctx.Err()
	case r := <-done:
		if r.err != nil {
			client.Kill() // returns once the plugin's stderr is read to its end
			if stderr.crashed() {
				// The crash report is the cause; go-plugin's guesses about
				// architectures and permissions would mislead.
				return nil, withStderr(errors.New("the plugin crashed before completing the handshake"), stderr)
			}
			return nil, withStderr(r.err, stderr)
		}
		return &Plugin{name: name, config: configJSON, client: client, rpc: r.raw.(pb.InstanceGroupClient),
			health: health, stderr: stderr, proto: client.NegotiatedVersion()}, nil
	}
}

func baseName(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[i+1:]
	}
	return path
}

// ProtocolVersion is the protocol version negotiated with the plugin.
func (p *Plugin) ProtocolVersion() int { return p.proto }

// Exited reports whether the plugin process has exited.
func (p *Plugin) Exited() bool { return p.client.Exited() }

// Pid is the plugin process's ID; 0 for an attached plugin.
func (p *Plugin) Pid() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// ExitStatus describes how the plugin process ended ("signal: killed", "exit status
// 2"), with the crash report or last lines of its stderr when it wrote any; "" while
// it runs.
func (p *Plugin) ExitStatus() string {
	if !p.client.Exited() {
		return ""
	}
	status := "exited"
	// go-plugin sets exited only after cmd.Wait returned, so ProcessState is set.
	if p.cmd != nil && p.cmd.ProcessState != nil {
		status = p.cmd.ProcessState.String()
	}
	if s := p.stderr.String(); s != "" {
		status += stderrLines + s
	}
	return status
}

// stderrLines introduces the plugin's stderr in messages.
const stderrLines = "; last stderr lines:\n"

// Kill stops the plugin: go-plugin asks it to stop gracefully (the plugin then runs its
// Shutdown if nobody did), and kills the process if it does not exit in time. A process
// that cannot answer (stopped, or hung) is killed with SIGKILL at once if it is stopped,
// else after killBound: go-plugin's own graceful stop waits on the process without a
// bound. For an attached plugin it closes the connection; the serving side stops when
// its context ends. Once the process is gone, Kill removes the unix socket the plugin
// served on if the plugin did not (it crashed, or was killed).
func (p *Plugin) Kill() {
	if p.attached {
		// Only disconnect: asking the server to stop (go-plugin's Close) would race
		// with the serving side stopping on its own context.
		if rpc, err := p.client.Client(); err == nil {
			if g, ok := rpc.(*goplugin.GRPCClient); ok {
				_ = g.Conn.Close()
			}
		}
		p.client.Kill()
		return
	}
	// go-plugin's Kill returns once the process has exited: the socket is no longer used.
	defer p.socket.remove()
	if pid := p.Pid(); pid != 0 && !p.client.Exited() && processState(pid) == stateStopped {
		p.sigkill()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.client.Kill()
	}()
	t := time.NewTimer(killBound)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	p.sigkill()
	<-done // go-plugin's stop returns once the process is gone
}

// killBound is how long Kill leaves go-plugin's graceful stop (which itself kills a
// process that has not exited 2 seconds after it was asked to) before it kills the
// process itself.
const killBound = 5 * time.Second

// sigkill kills the plugin process with SIGKILL, which also ends a stopped process.
func (p *Plugin) sigkill() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL) // an error means it is gone already
	}
}

// Ping checks that the plugin process answers: it calls the gRPC health service that
// go-plugin serves beside the plugin's own, which answers whatever the plugin's methods
// are doing, unless the process is stopped, wedged or its server gone. It returns nil
// if the plugin answered within ctx.
func (p *Plugin) Ping(ctx context.Context) error {
	if p.health == nil {
		return nil // not a gRPC plugin: nothing to ask
	}
	_, err := p.health.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: goplugin.GRPCServiceName})
	if err == nil {
		return nil
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return fmt.Errorf("ping plugin %s: %w", p.name, err)
	}
	return nil // the server answered, if only with an error
}

// fail turns a call's error into the host-side error, naming the method and the plugin.
func (p *Plugin) fail(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	if p.client.Exited() || status.Code(err) == codes.Unavailable && ctx.Err() == nil && p.exitedSoon() {
		msg := fmt.Sprintf("%s: plugin %s: %v", method, p.name, ErrPluginExited)
		if s := p.stderr.String(); s != "" {
			msg += stderrLines + s
		}
		return &exitedError{msg: msg}
	}
	return fmt.Errorf("plugin %s: %w", p.name, wire.FromStatus(ctx, method, err))
}

// exitedSoon waits briefly for the process to be reaped: a dying plugin closes its
// socket a moment before the host notices the exit.
func (p *Plugin) exitedSoon() bool {
	deadline := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if p.client.Exited() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return p.client.Exited()
}

type exitedError struct{ msg string }

func (e *exitedError) Error() string { return e.msg }
func (e *exitedError) Unwrap() error { return ErrPluginExited }

// Init sends the plugin configuration and connector settings.
func (p *Plugin) Init(ctx context.Context, _ hclog.Logger, settings provider.Settings) (provider.ProviderInfo, error) {
	resp, err := p.rpc.Init(ctx, &pb.InitRequest{Config: p.config, ConnectorConfig: wire.ConnectorToPB(settings.ConnectorConfig)})
	if err != nil {
		return provider.ProviderInfo{}, p.fail(ctx, "init", err)
	}
	info, err := wire.InfoFromInitPB(resp)
	if err != nil {
		return info, fmt.Errorf("init: plugin %s: %w", p.name, err)
	}
	return info, nil
}

// Update lists the group's instances into fn.
func (p *Plugin) Update(ctx context.Context, fn func(string, provider.State)) error {
	resp, err := p.rpc.Update(ctx, &pb.UpdateRequest{})
	if err != nil {
		return p.fail(ctx, "update", err)
	}
	// Check every instance before reporting any, so that a bad answer changes nothing.
	instances, err := wire.InstancesFromPB(resp)
	if err != nil {
		return fmt.Errorf("update: plugin %s: %w", p.name, err)
	}
	for _, in := range instances {
		fn(in.ID, in.State)
	}
	return nil
}

// Increase requests delta instances.
func (p *Plugin) Increase(ctx context.Context, delta int) (int, error) {
	resp, err := p.rpc.Increase(ctx, &pb.IncreaseRequest{Delta: int64(delta)})
	if err != nil {
		return 0, p.fail(ctx, "increase", err)
	}
	return wire.IncreaseFromPB(resp, delta)
}

// Decrease deletes instances.
func (p *Plugin) Decrease(ctx context.Context, ids []string) ([]string, error) {
	resp, err := p.rpc.Decrease(ctx, &pb.DecreaseRequest{Instances: ids})
	if err != nil {
		return nil, p.fail(ctx, "decrease", err)
	}
	return wire.BatchFromPB(ids, resp.GetSucceeded(), resp.GetFailures())
}

// Suspend suspends instances.
func (p *Plugin) Suspend(ctx context.Context, ids []string) ([]string, error) {
	resp, err := p.rpc.Suspend(ctx, &pb.SuspendRequest{Instances: ids})
	if err != nil {
		return nil, p.fail(ctx, "suspend", err)
	}
	return wire.BatchFromPB(ids, resp.GetSucceeded(), resp.GetFailures())
}

// Resume resumes instances.
func (p *Plugin) Resume(ctx context.Context, ids []string) ([]string, error) {
	resp, err := p.rpc.Resume(ctx, &pb.ResumeRequest{Instances: ids})
	if err != nil {
		return nil, p.fail(ctx, "resume", err)
	}
	return wire.BatchFromPB(ids, resp.GetSucceeded(), resp.GetFailures())
}

// ConnectInfo asks how to reach an instance.
func (p *Plugin) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	resp, err := p.rpc.ConnectInfo(ctx, &pb.ConnectInfoRequest{Instance: id})
	if err != nil {
		return provider.ConnectInfo{}, p.fail(ctx, "connect info", err)
	}
	return wire.ConnectInfoFromPB(resp), nil
}

// Heartbeat checks an instance's health.
func (p *Plugin) Heartbeat(ctx context.Context, id string) error {
	_, err := p.rpc.Heartbeat(ctx, &pb.HeartbeatRequest{Instance: id})
	return p.fail(ctx, "heartbeat", err)
}

// Shutdown asks the plugin to free its resources. The process keeps running until Kill.
func (p *Plugin) Shutdown(ctx context.Context) error {
	_, err := p.rpc.Shutdown(ctx, &pb.ShutdownRequest{})
	return p.fail(ctx, "shutdown", err)
}

// tail is the io.Writer go-plugin copies the plugin's raw stderr into.
var _ io.Writer = (*tail)(nil)

// Process states that change what the host does.
const (
	stateStopped = "stopped" // SIGSTOP: answers nothing until continued
	stateUnknown = "unknown"
)
