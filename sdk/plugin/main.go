// Package plugin turns a provider.InstanceGroup into a plugin binary. The whole main of
// a plugin is one call:
//
//	func main() { plugin.Main(&mygroup.InstanceGroup{}, mygroup.Version) }
//
// Main serves the fleeting protocol over hashicorp/go-plugin (gRPC) when the host
// launches the binary, decodes the host's plugin_config JSON into the struct before
// Init (rejecting unknown keys, listing every problem), answers `version [--json]`
// without the handshake, leaves the signals its host handles to the host (see
// lifecycle) and otherwise turns SIGTERM into Shutdown, turns a panic in a call into an
// error, and logs JSON on stderr for the host to re-emit. Stdout belongs to the
// handshake: a plugin must never print to it.
package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// VersionInfo identifies a plugin build. Set its fields with -ldflags.
type VersionInfo struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Reference string `json:"reference"`
	BuiltAt   string `json:"built_at"`
}

// String returns "name version".
func (v VersionInfo) String() string { return strings.TrimSpace(v.Name + " " + v.Version) }

// BuildInfo returns the revision, reference, build time and Go version on one line.
func (v VersionInfo) BuildInfo() string {
	return fmt.Sprintf("sha=%s; ref=%s; go=%s; built_at=%s; os/arch=%s/%s",
		v.Revision, v.Reference, runtime.Version(), v.BuiltAt, runtime.GOOS, runtime.GOARCH)
}

// Full returns a multi-line description for humans.
func (v VersionInfo) Full() string {
	return fmt.Sprintf("Name:       %s\nVersion:    %s\nGit revision: %s\nGit ref:    %s\nGo version: %s\nBuilt:      %s\nOS/Arch:    %s/%s\n",
		v.Name, v.Version, v.Revision, v.Reference, runtime.Version(), v.BuiltAt, runtime.GOOS, runtime.GOARCH)
}

func (v VersionInfo) withDefaults() VersionInfo {
	if v.Name == "" {
		v.Name = "fleeting-plugin"
	}
	if v.Version == "" {
		v.Version = "0.0.0-dev"
	}
	if v.Revision == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					v.Revision = s.Value
				}
			}
		}
	}
	return v
}

// Command is an extra subcommand a plugin offers besides serving (e.g. "doctor").
type Command struct {
	Name  string
	Usage string
	Run   func(ctx context.Context, args []string, stdout io.Writer) error
}

// Commander is implemented by plugins that offer extra subcommands.
type Commander interface {
	Commands() []Command
}

// LogLevelEnv names the environment variable the host sets to choose the plugin's log
// level (trace, debug, info, warn, error). The default is info.
const LogLevelEnv = "FLEETING_PLUGIN_LOG_LEVEL"

// Main runs the plugin and never returns. See the package documentation.
func Main(impl provider.InstanceGroup, info VersionInfo) {
	MainArgs(impl, info, os.Args[1:])
}

// Serve runs the plugin and never returns, as Main does, with the version taken from
// the binary's name and build information. It is the entry point of GitLab's first
// fleeting generation (plugin.Serve(&InstanceGroup{})), so such a plugin's main ports
// by changing its imports.
func Serve(impl provider.InstanceGroup) {
	Main(impl, VersionInfo{Name: filepath.Base(os.Args[0])})
}

// MainArgs is Main with the arguments given: for a program that serves a plugin from a
// subcommand (the runner's embedded local plugin), args are those after it.
func MainArgs(impl provider.InstanceGroup, info VersionInfo, args []string) {
	os.Exit(run(impl, info.withDefaults(), args, os.Stdout, os.Stderr))
}

func newLogger(name string, out io.Writer) hclog.Logger {
	level := hclog.LevelFromString(os.Getenv(LogLevelEnv))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: level, Output: out, JSONFormat: true})
}

func run(impl provider.InstanceGroup, info VersionInfo, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		return runCommand(impl, info, args, stdout, stderr)
	}
	logger := newLogger(info.Name, stderr)
	once := &shutdownOnce{impl: impl}
	host, gone := hostProcess(logger)
	if gone != "" {
		// Nobody will ever connect: exit rather than wait, reparented, for a host that
		// cannot stop us (a parent that is not the host never changes again).
		logger.Warn(gone + "; shutting down")
		return shutdownCode(logger, once)
	}
	srv := &server{impl: impl, logger: logger, shutdown: once, served: make(chan struct{})}
	lc := &lifecycle{logger: logger, srv: srv, host: host, grace: signalGrace(logger)}
	srv.afterShutdown = lc.hostShutDown

	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	go lc.handleSignals(sig)

	go exitWithHost(logger, lc.host, time.Second, srv.stopServing)

	goplugin.Serve(serveConfig(srv))
	close(srv.served)
	// Serve returns when the host stopped us (Kill) or the plugin decided to exit
	// (lifecycle, exitWithHost: they stop serving rather than call os.Exit, so that
	// go-plugin removes its unix socket). Shutdown is idempotent, so it is safe to make
	// sure the plugin's resources are freed even if the host did not ask.
	return shutdownCode(logger, once)
}

// HostPIDEnv names the environment variable in which the host gives a plugin its
// process ID (sdk/pluginclient.Launch sets it). A plugin watches its host by its parent
// process; a host killed while launching the plugin is gone before the plugin starts, so
// the plugin starts as the child of another process (init, a subreaper) that it would
// take for its host forever. With the variable it knows better: if the host is no
// longer its parent nor an ancestor, it runs Shutdown and exits at once. Without it (an
// older host) the parent at start is the host.
const HostPIDEnv = "FLEETING_PLUGIN_HOST_PID"

// hostProcess returns the process whose exit ends the plugin: the host that launched
// it, or, if the host started the plugin through a process of its own (a wrapper script
// that does not exec), the plugin's parent. gone is not empty if that host is already
// gone, and says so.
func hostProcess(logger hclog.Logger) (pid int, gone string) {
	parent := os.Getppid()
	v := os.Getenv(HostPIDEnv)
	if v == "" {
		return parent, ""
	}
	host, err := strconv.Atoi(v)
	if err != nil || host <= 0 {
		logger.Warn(fmt.Sprintf("%s=%q is not a process ID; taking the parent process (pid %d) for the host", HostPIDEnv, v, parent))
		return parent, ""
	}
	if host == parent || isAncestor(host, parent) {
		return parent, ""
	}
	return host, fmt.Sprintf("the host (pid %d) that launched the plugin is gone: the plugin's parent is pid %d", host, parent)
}

// SignalGraceEnv names the environment variable that sets how long a plugin keeps
// serving its host after SIGTERM or SIGINT (a Go duration such as "90s"); 0 makes it
// shut down at once. Default DefaultSignalGrace.
const SignalGraceEnv = "FLEETING_PLUGIN_SIGNAL_GRACE"

// DefaultSignalGrace bounds how long a plugin that got SIGTERM or SIGINT while its host
// is alive keeps serving, waiting for the host to stop it. A service manager that
// stops the whole service (systemd signals every process of its cgroup) kills what is
// left after its own timeout anyway; the bound is for a host that never stops.
const DefaultSignalGrace = 5 * time.Minute

// shutdownLinger is how long a plugin that deferred a signal waits, after the host's
// Shutdown call, for the host to disconnect before it exits by itself.
const shutdownLinger = 5 * time.Second

func signalGrace(logger hclog.Logger) time.Duration {
	v := os.Getenv(SignalGraceEnv)
	if v == "" {
		return DefaultSignalGrace
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		logger.Warn(fmt.Sprintf("%s=%q is not a duration such as \"90s\"; using %s", SignalGraceEnv, v, DefaultSignalGrace))
		return DefaultSignalGrace
	}
	return d
}

// lifecycle decides what a signal does to a serving plugin. The contract (see
// docs/write-a-plugin.md): a plugin ignores the signals its host handles. A host starts
// its plugin in a process group of its own, so group signals reach only the host; but a
// service manager stopping a whole service (systemd's cgroup stop) signals every
// process. If the plugin shut down then, the host, stopping at the same moment, could
// no longer delete its instances. So while a host that has initialised the plugin is
// alive:
//
//   - SIGTERM and SIGINT: keep serving; exit when the host stops the plugin (Kill, or 5s
//     after its Shutdown call), when the host exits, or after the grace period;
//   - SIGHUP and SIGQUIT: ignored; the host reloads or drains and stops the plugin when
//     it is done.
//
// A plugin with no such host (never initialised, or its host is gone) runs Shutdown and
// exits on any of them.
type lifecycle struct {
	logger hclog.Logger
	srv    *server
	host   int // the process that launched the plugin
	grace  time.Duration

	mu       sync.Mutex
	deferred bool // a SIGTERM or SIGINT waits for the host
	shutDown bool // the host's Shutdown call succeeded
}

// hosted reports whether a host depends on this plugin: it has initialised it and is
// still its parent.
func (l *lifecycle) hosted() bool {
	return l.srv.inUse.Load() && os.Getppid() == l.host
}

func (l *lifecycle) handleSignals(sig <-chan os.Signal) {
	for s := range sig {
		name := signalName(s)
		l.mu.Lock()
		done := l.shutDown
		l.mu.Unlock()
		switch {
		case !l.hosted() || l.grace == 0:
			l.logger.Info(fmt.Sprintf("received %s, shutting down", name))
			l.srv.stopServing()
		case done:
			l.logger.Info(fmt.Sprintf("received %s after the host's Shutdown, exiting", name))
			l.srv.stopServing()
		case s == syscall.SIGTERM || s == syscall.SIGINT:
			l.deferToHost(name)
		default:
			l.logger.Info(fmt.Sprintf("received %s; ignored: the host (pid %d) handles it and stops the plugin when it is done", name, l.host))
		}
	}
}

// deferToHost keeps the plugin serving after SIGTERM or SIGINT, for at most the grace
// period.
func (l *lifecycle) deferToHost(name string) {
	l.mu.Lock()
	first := !l.deferred
	l.deferred = true
	l.mu.Unlock()
	if !first {
		l.logger.Info(fmt.Sprintf("received %s again; still serving the host (pid %d) until it stops the plugin", name, l.host))
		return
	}
	l.logger.Warn(fmt.Sprintf("received %s while the host (pid %d) is alive: serving on so that the host can delete its instances; "+
		"exiting when the host stops the plugin or exits, or in %s at the latest", name, l.host, l.grace))
	time.AfterFunc(l.grace, func() {
		l.logger.Warn(fmt.Sprintf("the host did not stop the plugin within %s of %s; shutting down", l.grace, name))
		l.srv.stopServing()
	})
}

// hostShutDown runs after the host's Shutdown call: a plugin that deferred a signal is
// now done, and exits soon if the host does not disconnect first.
func (l *lifecycle) hostShutDown() {
	l.mu.Lock()
	l.shutDown = true
	deferred := l.deferred
	l.mu.Unlock()
	if deferred {
		time.AfterFunc(shutdownLinger, func() {
			l.logger.Info("the host shut the plugin down after a signal; exiting")
			l.srv.stopServing()
		})
	}
}

// shutdownCode runs the plugin's Shutdown (once, however many ask) and returns the
// process's exit code.
func shutdownCode(logger hclog.Logger, once *shutdownOnce) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := once.do(ctx); err != nil {
		logger.Error("shutdown failed", "error", err)
		return 1
	}
	return 0
}

var signalNames = map[os.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGINT: "SIGINT",
	syscall.SIGHUP: "SIGHUP", syscall.SIGQUIT: "SIGQUIT"}

func signalName(s os.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return s.String()
}

// exitWithHost ends the plugin soon after the process that launched it is gone. A host
// killed with SIGKILL cannot stop its plugins, and an orphaned plugin would hold its
// resources (locks, cloud sessions) forever. stop ends serving; the plugin then runs
// its Shutdown and exits. Its instances are left alone, for the next host to adopt or
// delete.
func exitWithHost(logger hclog.Logger, host int, every time.Duration, stop func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		if os.Getppid() == host {
			continue
		}
		logger.Warn("the host process is gone; shutting down", "host_pid", host)
		stop()
		return
	}
}

func runCommand(impl provider.InstanceGroup, info VersionInfo, args []string, stdout, stderr io.Writer) int {
	var extra []Command
	if c, ok := impl.(Commander); ok {
		extra = c.Commands()
	}
	switch args[0] {
	case "version", "--version", "-v":
		if len(args) > 1 && args[1] == "--json" {
			out := struct {
				VersionInfo
				GoVersion string `json:"go_version"`
				OS        string `json:"os"`
				Arch      string `json:"arch"`
				Protocols []int  `json:"protocol_versions"`
			}{info, runtime.Version(), runtime.GOOS, runtime.GOARCH, []int{1}}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(out); err != nil {
				fmt.Fprintln(stderr, "version:", err)
				return 1
			}
			return 0
		}
		fmt.Fprint(stdout, info.Full())
		return 0
	case "help", "--help", "-h":
		usage(info, extra, stdout)
		return 0
	}
	for _, c := range extra {
		if c.Name == args[0] {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := c.Run(ctx, args[1:], stdout); err != nil {
				fmt.Fprintf(stderr, "%s %s: %v\n", info.Name, c.Name, err)
				return 1
			}
			return 0
		}
	}
	fmt.Fprintf(stderr, "%s: unknown command %q\n", info.Name, args[0])
	usage(info, extra, stderr)
	return 2
}

func usage(info VersionInfo, extra []Command, w io.Writer) {
	fmt.Fprintf(w, "%s is a Flotilla fleeting plugin; the runner host launches it.\n\nUsage:\n", info.Name)
	fmt.Fprintf(w, "  %-22s %s\n", "version [--json]", "print the version")
	for _, c := range extra {
		fmt.Fprintf(w, "  %-22s %s\n", c.Name, c.Usage)
	}
}

// ServeInProcess serves impl over real gRPC on a unix socket inside this process, the
// way Main would in a plugin binary, until ctx is cancelled. It returns the reattach
// configuration that sdk/pluginclient.Attach connects to. Tests and the conformance kit
// use it to exercise the full protocol without building a binary.
func ServeInProcess(ctx context.Context, impl provider.InstanceGroup, info VersionInfo, logOutput io.Writer) (*goplugin.ReattachConfig, <-chan struct{}, error) {
	info = info.withDefaults()
	if logOutput == nil {
		logOutput = io.Discard
	}
	cfg := serveConfig(&server{impl: impl, logger: newLogger(info.Name, logOutput), shutdown: &shutdownOnce{impl: impl}})
	reattach := make(chan *goplugin.ReattachConfig, 1)
	closed := make(chan struct{})
	cfg.Test = &goplugin.ServeTestConfig{Context: ctx, ReattachConfigCh: reattach, CloseCh: closed}
	go goplugin.Serve(cfg)
	select {
	case rc := <-reattach:
		return rc, closed, nil
	case <-closed:
		return nil, nil, fmt.Errorf("serve plugin in process: server stopped before it was ready")
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("serve plugin in process: %w", ctx.Err())
	}
}
