// Command runner is the Flotilla host: it runs CI jobs on autoscaled instances that
// provider plugins create. Each subcommand lives in its own file and registers itself
// on root from an init function, so areas of the CLI do not edit one shared list.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/version"
)

// root is the top-level command; subcommands add themselves to it in init().
var root = &cobra.Command{
	Use:           "runner",
	Short:         "Flotilla: run CI jobs on autoscaled instances",
	Version:       version.String(),
	SilenceUsage:  true,
	SilenceErrors: true,
}

// exitError carries a specific exit code out of a command without printing usage.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	// A write to a closed stdout or stderr (`runner exec | head`, a closed terminal)
	// returns an error instead of killing the process with SIGPIPE before it deletes
	// its instances. Notify, not Ignore: an ignored signal would stay ignored in the
	// plugins and jobs this process starts, and change how their pipes behave.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	os.Exit(execute(os.Args[1:]))
}
