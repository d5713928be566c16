package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/runcmd"
)

func init() {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Take jobs from GitLab and run them on autoscaled instances",
		Long: "run serves every [[runners]] entry of config.toml: it asks GitLab for jobs whenever the entry's\n" +
			"taskscaler can reserve a slot, runs them, streams their logs and reports their state.\n" +
			"Signals: SIGQUIT finishes running jobs then exits; SIGTERM/SIGINT cancel them (after_script runs),\n" +
			"report them and stop the pools; a second one stops waiting for the jobs, a third exits at once;\n" +
			"SIGHUP (or a changed config.toml) reloads. The exit code is 0 after a clean stop, 1 if a pool\n" +
			"could not be stopped cleanly. listen_address serves /metrics, /healthz and /status.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			svc, err := runcmd.New(runcmd.Options{ConfigPath: cfgPath, Logger: logSetup.Logger(), ReloadPoll: 3 * time.Second,
				Metrics: prometheus.DefaultRegisterer, LogConfig: logSetup.ApplyConfig})
			if err != nil {
				return err
			}
			return runcmd.RunWithSignals(cmd.Context(), svc)
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", defaultConfigPath(), configUsage)
	root.AddCommand(cmd)
}
