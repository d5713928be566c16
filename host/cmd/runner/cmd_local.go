package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/version"
	"github.com/flotilla-ci/flotilla/plugins/local"
	"github.com/flotilla-ci/flotilla/plugins/local/localdemo"
)

// The local plugin is built into the runner: `runner plugin-local` (hidden) serves it
// when the host launches this binary as a plugin, and `runner local demo` exercises it.
func init() {
	root.AddCommand(&cobra.Command{
		Use:                local.EmbeddedCommand,
		Short:              "Serve the built-in local provider plugin (the host launches this)",
		Hidden:             true,
		DisableFlagParsing: true,
		Run: func(_ *cobra.Command, args []string) {
			// The embedded plugin is exactly as new as the runner it is part of.
			local.Version.Version, local.Version.Revision = version.Version, version.Revision
			local.Main([]string{local.EmbeddedCommand}, args)
		},
	})

	var opts localdemo.Options
	demo := &cobra.Command{
		Use:   "demo",
		Short: "Start N local instances, run a command on each over SSH, delete them and check nothing is left",
		Long: `demo launches the built-in local plugin out of process (this binary, re-executed),
asks it for N instances, waits until they run, runs --command on each over SSH with the
connector, prints the outputs, deletes the instances and verifies that no instance
process or directory is left behind. It exits 1 if any step fails and 2 if a command
exited non-zero.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			opts.Out = cmd.OutOrStdout()
			res, err := localdemo.Run(ctx, opts)
			if err != nil {
				return fmt.Errorf("local demo: %w", err)
			}
			for id, code := range res.ExitCodes {
				if code != 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "runner: local demo: the command exited %d on %s\n", code, id)
					return exitError{2}
				}
			}
			return nil
		},
	}
	f := demo.Flags()
	f.IntVarP(&opts.Instances, "instances", "n", 2, "how many instances to create")
	f.StringVarP(&opts.Command, "command", "c", "uname -a; id -un; pwd", "command to run on each instance")
	f.StringVar(&opts.RootDir, "root-dir", "", "plugin root_dir (default: a new temporary directory, removed afterwards)")
	f.DurationVar(&opts.BootDelay, "boot-delay", 0, "plugin boot_delay: how long instances stay creating")
	f.StringVar(&opts.Isolation, "isolation", "none", `plugin isolation: "none", "namespaces" or "auto"`)
	f.DurationVar(&opts.Timeout, "timeout", 2*time.Minute, "bound for the whole run")

	localCmd := &cobra.Command{
		Use:   "local",
		Short: "Debug commands for the built-in local provider",
	}
	localCmd.AddCommand(demo)
	root.AddCommand(localCmd)
}
