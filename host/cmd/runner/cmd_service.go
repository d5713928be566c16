package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/config"
	systemd "github.com/flotilla-ci/flotilla/host/service"
)

// unitDirEnv overrides where units are written (packaging, tests).
const unitDirEnv = "FLOTILLA_SYSTEMD_UNIT_DIR"

// The service commands of GitLab Runner, for systemd: install writes and enables a
// unit that runs `runner run`; start, stop, restart and status go through systemctl.
func init() {
	var name string
	manager := func() systemd.Manager {
		return systemd.Manager{Name: name, UnitDir: os.Getenv(unitDirEnv)}
	}
	serviceFlag := func(c *cobra.Command) *cobra.Command {
		c.Flags().StringVarP(&name, "service", "n", systemd.DefaultName, "service name")
		return c
	}

	var cfgPath, workDir, user string
	var syslog bool
	install := &cobra.Command{
		Use:   "install",
		Short: "Install `runner run` as a systemd service (enabled, not started)",
		Long: "install writes /etc/systemd/system/<service>.service (or $" + unitDirEnv + "/…), which runs\n" +
			"`runner run --config <config>` as root or as --user, in --working-directory (default: the current\n" +
			"directory), reloads systemd and enables the service. Start it with `runner start`.",
		Args:        cobra.NoArgs,
		Annotations: map[string]string{foreignAnnotation: "password,init-user"},
		RunE: func(cmd *cobra.Command, _ []string) error {
			warnIgnored(cmd.ErrOrStderr(), ignoredFlags, "they apply to Windows and macOS services only")
			if syslog {
				warnIgnored(cmd.ErrOrStderr(), []string{"--syslog"}, "the service logs to the journal (journalctl -u "+nameOr(name)+")")
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("install: find the runner binary: %w", err)
			}
			if exe, err = filepath.EvalSymlinks(exe); err != nil {
				return fmt.Errorf("install: %w", err)
			}
			cfg, err := filepath.Abs(cfgPath)
			if err != nil {
				return fmt.Errorf("install: %w", err)
			}
			if _, err := os.Stat(cfg); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: %s does not exist yet: create it with `runner register -c %s` before starting the service\n", cfg, cfg)
			}
			if workDir == "" {
				if workDir, err = os.Getwd(); err != nil {
					return fmt.Errorf("install: %w", err)
				}
			}
			if workDir, err = filepath.Abs(workDir); err != nil {
				return fmt.Errorf("install: %w", err)
			}
			m := manager()
			if err := m.Install(cmd.Context(), systemd.InstallOptions{Executable: exe, ConfigPath: cfg, WorkingDirectory: workDir, User: user}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Installed %s (enabled); start it with: runner start --service %s\n", m.UnitPath(), nameOr(name))
			return nil
		},
	}
	serviceFlag(install)
	install.Flags().StringVarP(&cfgPath, "config", "c", defaultConfigPath(), configUsage)
	install.Flags().StringVarP(&workDir, "working-directory", "d", "", "working directory of the service (default: the current directory)")
	install.Flags().StringVarP(&user, "user", "u", "", "run the service as this user (default: root)")
	install.Flags().BoolVar(&syslog, "syslog", false, "accepted for GitLab Runner's scripts and ignored: the journal has the logs")

	simple := func(use, short, done string, do func(systemd.Manager, *cobra.Command) error) *cobra.Command {
		return serviceFlag(&cobra.Command{
			Use:   use,
			Short: short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				if err := do(manager(), cmd); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", nameOr(name), done)
				return nil
			},
		})
	}
	uninstall := simple("uninstall", "Stop and disable the service and remove its unit", "Service uninstalled",
		func(m systemd.Manager, c *cobra.Command) error { return m.Uninstall(c.Context()) })
	start := simple("start", "Start the service (systemctl start)", "Service started",
		func(m systemd.Manager, c *cobra.Command) error { return m.Start(c.Context()) })
	stop := simple("stop", "Stop the service (systemctl stop): running jobs are cancelled, instances deleted", "Service stopped",
		func(m systemd.Manager, c *cobra.Command) error { return m.Stop(c.Context()) })
	restart := simple("restart", "Restart the service (systemctl restart)", "Service restarted",
		func(m systemd.Manager, c *cobra.Command) error { return m.Restart(c.Context()) })

	status := serviceFlag(&cobra.Command{
		Use:   "status",
		Short: "Say whether the service is running (the pools' status is `runner pool status`)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			running, err := manager().Running(cmd.Context())
			if errors.Is(err, systemd.ErrNotInstalled) && hasPools(defaultConfigPath()) {
				fmt.Fprintln(cmd.ErrOrStderr(), "hint: `runner status` is the service's status, as in GitLab Runner; a running host's pools are shown by `runner pool status`")
			}
			if err != nil {
				return err
			}
			if !running {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: Service has stopped\n", nameOr(name))
				return exitError{1}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: Service is running\n", nameOr(name))
			return nil
		},
	})
	// `runner status --instance ID` was the pools' status before it moved.
	status.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		ue := flagError(c, err).(usageError)
		ue.err = fmt.Errorf("%w (the pools' status moved to `runner pool status`)", ue.err)
		return ue
	})
	root.AddCommand(install, uninstall, start, stop, restart, status)
}

func nameOr(n string) string {
	if n == "" {
		return systemd.DefaultName
	}
	return n
}

// hasPools reports whether the config file at path loads and has an autoscaled runner.
func hasPools(path string) bool {
	cfg, _, err := config.Load(path)
	if err != nil {
		return false
	}
	for _, r := range cfg.Runners {
		if r.Autoscaler != nil {
			return true
		}
	}
	return false
}
