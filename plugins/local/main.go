// Package local is Flotilla's built-in provider: its instances are sandboxes on this
// machine, each a directory with its own SSH server on 127.0.0.1, so that the whole
// runner works without a cloud. It is linked into the runner binary, which re-executes
// itself as the plugin (out of process, through the same plugin client as any other),
// and is also built standalone as fleeting-plugin-local.
//
// Instance servers are detached processes: they outlive the plugin, and a relaunched
// plugin finds its instances again in root_dir. See docs/local-plugin.md.
package local

import (
	"context"
	"fmt"
	"os"

	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
)

// Version identifies this build of the local plugin. Set its fields with -ldflags.
var Version = plugin.VersionInfo{Name: "fleeting-plugin-local", Version: "0.1.0"}

// EmbeddedCommand is the hidden runner subcommand that serves the local plugin.
const EmbeddedCommand = "plugin-local"

// Main runs the local plugin and never returns. prefix are the arguments that selected
// the plugin in this program (nil for fleeting-plugin-local, {EmbeddedCommand} in the
// runner); args are the ones after them. The plugin re-executes this program with
// prefix to start instance servers.
func Main(prefix, args []string) {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleeting-plugin-local: find own executable:", err)
		os.Exit(1)
	}
	self := append([]string{exe}, prefix...)
	plugin.MainArgs(New(self), Version, args)
}

// ServeIfAsked serves the plugin, and never returns, when args (os.Args) select it
// with EmbeddedCommand; otherwise it returns at once. A test binary calls it first
// thing in TestMain, so that LaunchEmbedded, which re-executes the running program,
// works from tests as it does from the runner.
func ServeIfAsked(args []string) {
	if len(args) > 1 && args[1] == EmbeddedCommand {
		Main([]string{EmbeddedCommand}, args[2:])
	}
}

// LaunchEmbedded starts the running program (the runner) as the local plugin, out of
// process, through pluginclient.Launch. The program must serve the plugin on
// EmbeddedCommand by calling Main.
func LaunchEmbedded(ctx context.Context, configJSON []byte, opts pluginclient.Options) (*pluginclient.Plugin, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("launch the embedded local plugin: find own executable: %w", err)
	}
	opts.Args = []string{EmbeddedCommand}
	if opts.Name == "" {
		opts.Name = "local"
	}
	return pluginclient.Launch(ctx, exe, configJSON, opts)
}
