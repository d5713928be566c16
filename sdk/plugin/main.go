// Package plugin turns a provider.InstanceGroup into a plugin binary. The whole main of
// a plugin is one call:
//
//	func main() { plugin.Main(&mygroup.InstanceGroup{}, mygroup.Version) }
//
// Main serves the fleeting protocol over hashicorp/go-plugin (gRPC) when the host
// launches the binary, decodes the host's plugin_config JSON into the struct before
// Init (rejecting unknown keys, listing every problem), answers `version [--json]`
// without the handshake, turns SIGTERM into Shutdown, turns a panic in a call into an
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
	"runtime"
	"runtime/debug"
	"strings"
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

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	go func() {
		<-sig
		logger.Info("received SIGTERM, shutting down")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := once.do(ctx); err != nil {
			logger.Error("shutdown failed", "error", err)
			os.Exit(1)
		}
		os.Exit(0)
	}()

	go exitWithHost(logger, once, time.Second)

	goplugin.Serve(serveConfig(impl, logger, once))
	// Serve returns when the host stopped us (Kill). Shutdown is idempotent, so it is
	// safe to make sure the plugin's resources are freed even if the host did not ask.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := once.do(ctx); err != nil {
		logger.Error("shutdown failed", "error", err)
		return 1
	}
	return 0
}

// exitWithHost ends the plugin soon after the process that launched it is gone. A host
// killed with SIGKILL cannot stop its plugins, and an orphaned plugin would hold its
// resources (locks, cloud sessions) forever. The plugin's Shutdown runs first; its
// instances are left alone, for the next host to adopt or delete.
func exitWithHost(logger hclog.Logger, once *shutdownOnce, every time.Duration) {
	host := os.Getppid()
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		if os.Getppid() == host {
			continue
		}
		logger.Warn("the host process is gone; shutting down", "host_pid", host)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := once.do(ctx)
		cancel()
		if err != nil {
			logger.Error("shutdown failed", "error", err)
			os.Exit(1)
		}
		os.Exit(0)
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
	cfg := serveConfig(impl, newLogger(info.Name, logOutput), &shutdownOnce{impl: impl})
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
