package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/logging"
)

// The runner's own log, set as GitLab Runner sets it: the global flags --debug,
// --log-level (-l) and --log-format, over the environment (RUNNER_DEBUG, LOG_LEVEL,
// LOG_FORMAT), over config.toml's log_level and log_format (`runner run` applies
// them through logSetup.ApplyConfig). It goes to stderr; colour only on a terminal.
var (
	logFlags logging.Settings
	// logSetup is the process's log once the command line is parsed; slog.Default()
	// logs through it.
	logSetup *logging.Setup
)

func init() {
	pf := root.PersistentFlags()
	pf.BoolVar(&logFlags.Debug, "debug", false, "log at debug level (env RUNNER_DEBUG)")
	pf.StringVarP(&logFlags.Level, "log-level", "l", "", "log level: debug, info, warn, error, fatal or panic (env LOG_LEVEL; default info)")
	pf.StringVar(&logFlags.Format, "log-format", "", "log format: runner, text or json (env LOG_FORMAT; default runner)")
	// OnInitialize, not a PersistentPreRun: it runs for every command once its flags
	// are parsed, whatever hooks the commands define.
	cobra.OnInitialize(setupLogging)
}

func setupLogging() {
	s, err := logging.New(os.Stderr, logging.Colour(os.Stderr), logFlags, logging.FromEnv(os.Getenv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "runner:", err)
		os.Exit(2)
	}
	logSetup = s
	slog.SetDefault(s.Logger())
}
