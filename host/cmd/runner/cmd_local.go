package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
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
exited non-zero. SIGTERM, SIGINT, SIGHUP or SIGQUIT stop it: the instances are still
deleted and checked, and the exit code is 128 plus the signal's number.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stopped, stop := stopOnSignals(cmd.Context())
			defer stop()
			opts.Out = cmd.OutOrStdout()
			res, err := localdemo.Run(ctx, opts)
			if sig := stopped(); sig != 0 {
				if err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), "runner: local demo:", err)
				}
				return exitError{128 + int(sig)}
			}
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

// stopOnSignals returns a context that ends at the first SIGTERM, SIGINT, SIGHUP or
// SIGQUIT (later ones are absorbed while the command cleans up), a function telling
// which signal that was (0: none), and one to stop listening. Without it SIGHUP and
// SIGQUIT would kill the process before it deletes what it created.
func stopOnSignals(parent context.Context) (context.Context, func() syscall.Signal, func()) {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	var got atomic.Int32
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				got.CompareAndSwap(0, int32(s.(syscall.Signal)))
				cancel()
			case <-done:
				return
			}
		}
	}()
	return ctx, func() syscall.Signal { return syscall.Signal(got.Load()) }, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}
