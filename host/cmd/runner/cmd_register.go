package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/runcmd"
)

func init() {
	root.AddCommand(registerCmd(), verifyCmd(), unregisterCmd())
}

func registerCmd() *cobra.Command {
	o := runcmd.RegisterOptions{}
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Register this host with GitLab and add a [[runners]] entry to config.toml",
		Long: "register verifies a runner authentication token (glrt-…, created in GitLab under Settings > CI/CD >\n" +
			"Runners > New runner) and appends a [[runners]] entry for it to config.toml; the rest of the file\n" +
			"(comments, other runners, key order) is left as it is. --registration-token uses GitLab's\n" +
			"deprecated registration flow. --template-config takes the entry's settings from a TOML file.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			o.Warn = cmd.ErrOrStderr()
			r, err := runcmd.Register(ctx, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Runner %q (id %d) registered with %s and added to %s.\nStart it with: runner run --config %s\n",
				r.Name, r.ID, r.URL, o.ConfigPath, o.ConfigPath)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.ConfigPath, "config", "c", defaultConfigPath(), "config file (default $CONFIG_FILE or ./config.toml)")
	f.StringVarP(&o.URL, "url", "u", "", "GitLab instance URL, e.g. https://gitlab.com")
	f.StringVarP(&o.Token, "token", "t", "", "runner authentication token (glrt-…)")
	f.StringVarP(&o.RegistrationToken, "registration-token", "r", "", "legacy registration token (deprecated by GitLab)")
	f.StringVar(&o.Name, "name", "", "name of the entry (default: host name)")
	f.StringVar(&o.Executor, "executor", "instance", "instance or docker-autoscaler")
	f.StringVar(&o.Plugin, "plugin", "local", "fleeting plugin of the pool")
	f.IntVar(&o.CapacityPerInstance, "capacity-per-instance", 1, "jobs per instance")
	f.IntVar(&o.MaxInstances, "max-instances", 2, "instances at most")
	f.StringVar(&o.DockerImage, "docker-image", "", "default job image (docker-autoscaler)")
	f.StringVar(&o.Template, "template-config", "", "TOML file with a [[runners]] entry to take the settings from")
	f.StringVar(&o.Description, "description", "", "legacy registration: runner description")
	f.StringVar(&o.TagList, "tag-list", "", "legacy registration: comma-separated tags")
	f.BoolVar(&o.RunUntagged, "run-untagged", false, "legacy registration: also run untagged jobs")
	f.BoolVar(&o.Locked, "locked", true, "legacy registration: lock the runner to its project")
	f.BoolVar(&o.Paused, "paused", false, "legacy registration: register paused")
	f.StringVar(&o.AccessLevel, "access-level", "", "legacy registration: not_protected or ref_protected")
	f.IntVar(&o.MaximumTimeout, "maximum-timeout", 0, "legacy registration: maximum job timeout in seconds")
	return cmd
}

func verifyCmd() *cobra.Command {
	var path, name string
	var del bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every runner entry's token with GitLab",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			res, err := runcmd.Verify(ctx, path, name, del, nil)
			if err != nil {
				return err
			}
			bad := 0
			for _, r := range res {
				if r.Valid {
					fmt.Fprintf(cmd.OutOrStdout(), "Verifying runner %q at %s: is valid\n", r.Name, r.URL)
					continue
				}
				bad++
				fmt.Fprintf(cmd.OutOrStdout(), "Verifying runner %q at %s: %v\n", r.Name, r.URL, r.Err)
			}
			if bad > 0 {
				if del {
					fmt.Fprintln(cmd.OutOrStdout(), "Entries GitLab refused were removed from", path)
				}
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", defaultConfigPath(), "config file (default $CONFIG_FILE or ./config.toml)")
	cmd.Flags().StringVarP(&name, "name", "n", "", "verify only this runner")
	cmd.Flags().BoolVar(&del, "delete", false, "remove entries whose token GitLab refuses")
	return cmd
}

func unregisterCmd() *cobra.Command {
	o := runcmd.UnregisterOptions{}
	cmd := &cobra.Command{
		Use:   "unregister",
		Short: "Unregister runners from GitLab and remove their entries from config.toml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			names, err := runcmd.Unregister(ctx, o)
			for _, n := range names {
				fmt.Fprintf(cmd.OutOrStdout(), "Runner %q unregistered and removed from %s\n", n, o.ConfigPath)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.ConfigPath, "config", "c", defaultConfigPath(), "config file (default $CONFIG_FILE or ./config.toml)")
	f.StringVarP(&o.Name, "name", "n", "", "the runner entry's name")
	f.StringVarP(&o.URL, "url", "u", "", "GitLab URL of the entry (with --token)")
	f.StringVarP(&o.Token, "token", "t", "", "token of the entry (with --url)")
	f.BoolVar(&o.All, "all-runners", false, "unregister every runner of the file")
	return cmd
}
