// Command nesting is Flotilla's VM daemon and its client, shaped like GitLab's:
//
//	nesting serve --hypervisor qemu|tart [--config F] [--socket P]
//	nesting init --config F | create IMAGE [--slot N] | delete ID | list | shutdown
//
// serve runs the daemon in front of one hypervisor on a unix socket; the other
// commands call it there.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/version"
	"github.com/flotilla-ci/flotilla/nesting"
)

// hypervisors are the backends `serve --hypervisor` can run, by name.
var hypervisors = map[string]func(log *slog.Logger) nesting.Hypervisor{}

// defaultSocket is where the daemon listens unless --socket or NESTING_SOCKET says
// otherwise: /run/nesting.sock for root, else in the user's runtime directory.
func defaultSocket() string {
	if s := os.Getenv("NESTING_SOCKET"); s != "" {
		return s
	}
	if os.Geteuid() == 0 {
		return "/run/nesting.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "nesting.sock")
	}
	return filepath.Join(os.TempDir(), "nesting-"+strconv.Itoa(os.Geteuid())+".sock")
}

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "nesting:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var socket string
	root := &cobra.Command{
		Use:           "nesting",
		Short:         "Create and delete pre-configured VMs for isolated CI jobs",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&socket, "socket", defaultSocket(), "the daemon's unix socket (env NESTING_SOCKET)")

	timeout := 10 * time.Minute
	root.PersistentFlags().DurationVar(&timeout, "timeout", timeout, "how long a client command may take")
	// call runs f with a client of the daemon, bounded by --timeout.
	call := func(cmd *cobra.Command, f func(ctx context.Context, c *nesting.Client) error) error {
		c, err := nesting.Dial(socket)
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
		defer cancel()
		return f(ctx, c)
	}

	var hv, configPath string
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Run the daemon in front of a hypervisor",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runServe(cmd.Context(), hv, configPath, socket)
		},
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range hypervisors {
			if !yield(n) {
				return
			}
		}
	})
	serve.Flags().StringVar(&hv, "hypervisor", "qemu", "the hypervisor: "+strings.Join(names, " or "))
	serve.Flags().StringVar(&configPath, "config", "", "the hypervisor's config file (JSON); without it a client must call init")

	var initConfig string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Configure the daemon's hypervisor",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := os.ReadFile(initConfig)
			if err != nil {
				return err
			}
			return call(cmd, func(ctx context.Context, c *nesting.Client) error {
				info, err := c.Init(ctx, data)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s (%s), up to %d VMs\n", info.Name, info.Accelerator, info.MaxVMs)
				return nil
			})
		},
	}
	initCmd.Flags().StringVar(&initConfig, "config", "", "the hypervisor's config file (JSON)")
	_ = initCmd.MarkFlagRequired("config")

	slot := nesting.NoSlot
	create := &cobra.Command{
		Use:   "create IMAGE",
		Short: "Create a VM from an image",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(cmd, func(ctx context.Context, c *nesting.Client) error {
				vm, stomped, err := c.Create(ctx, args[0], slot)
				if err != nil {
					return err
				}
				if stomped != "" {
					fmt.Fprintf(cmd.ErrOrStderr(), "deleted %s, which held slot %d\n", stomped, slot)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\t%s\n", vm.ID, vm.Name, vm.Addr)
				return nil
			})
		},
	}
	create.Flags().IntVar(&slot, "slot", nesting.NoSlot, "the slot to create the VM in (0 … max_vms-1); a VM in it is deleted first")

	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return call(cmd, func(ctx context.Context, c *nesting.Client) error {
				return c.Delete(ctx, args[0])
			})
		},
	}

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the VMs and the hypervisor",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(cmd, func(ctx context.Context, c *nesting.Client) error {
				vms, info, err := c.List(ctx)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if asJSON {
					enc := json.NewEncoder(out)
					enc.SetIndent("", "  ")
					return enc.Encode(struct {
						Hypervisor nesting.Info `json:"hypervisor"`
						VMs        []nesting.VM `json:"vms"`
					}{info, append([]nesting.VM{}, vms...)})
				}
				fmt.Fprintf(out, "hypervisor %s, accelerator %s, %d of %d VMs\n", info.Name, info.Accelerator, len(vms), info.MaxVMs)
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tADDR\tIMAGE\tSLOT\tAGE")
				for _, vm := range vms {
					s := "-"
					if vm.Slot != nesting.NoSlot {
						s = strconv.Itoa(vm.Slot)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", vm.ID, vm.Name, vm.Addr, vm.Image, s, time.Since(vm.CreatedAt).Round(time.Second))
				}
				return tw.Flush()
			})
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	shutdown := &cobra.Command{
		Use:   "shutdown",
		Short: "Delete every VM and stop the daemon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return call(cmd, func(ctx context.Context, c *nesting.Client) error {
				return c.Shutdown(ctx)
			})
		},
	}
	root.AddCommand(serve, initCmd, create, del, list, shutdown)
	for _, add := range extraCommands {
		root.AddCommand(add())
	}
	return root
}

// extraCommands are commands that live in their own files (image building).
var extraCommands []func() *cobra.Command

// runServe runs the daemon until SIGTERM/SIGINT (the VMs stay for the next daemon) or
// a client's shutdown (the VMs are deleted).
func runServe(ctx context.Context, name, configPath, socket string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	mk, ok := hypervisors[name]
	if !ok {
		return fmt.Errorf("--hypervisor %q: unknown hypervisor", name)
	}
	h := mk(log)
	initialized := false
	if configPath != "" {
		data, err := os.ReadFile(configPath)
		if err != nil {
			return err
		}
		if _, err := h.Init(ctx, data); err != nil {
			return fmt.Errorf("%s: %w", configPath, err)
		}
		initialized = true
	}
	sock, err := nesting.Listen(socket)
	if err != nil {
		return err
	}
	defer sock.Close()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("serving", "socket", socket, "hypervisor", name)
	if err := nesting.NewServer(h, initialized, log).Serve(ctx, sock); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
