package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/config"
)

// defaultConfigPath is where a command reads config.toml without -c/--config:
// $CONFIG_FILE, else GitLab Runner's location (/etc/gitlab-runner/config.toml for
// root, ~/.gitlab-runner/config.toml otherwise) when that file exists, else
// ./config.toml when it exists (Flotilla's default before it followed GitLab, kept so
// that existing setups go on working), else GitLab's location (where register creates
// the file).
func defaultConfigPath() string {
	home, _ := os.UserHomeDir()
	return configPathFor(os.Getenv, os.Geteuid(), home, func(p string) bool {
		_, err := os.Stat(p)
		return err == nil
	})
}

// configPathFor is defaultConfigPath with its inputs given (tests).
func configPathFor(getenv func(string) string, euid int, home string, exists func(string) bool) string {
	if p := getenv("CONFIG_FILE"); p != "" {
		return p
	}
	gitlab := filepath.Join(home, ".gitlab-runner", "config.toml")
	if euid == 0 || home == "" {
		gitlab = "/etc/gitlab-runner/config.toml"
	}
	switch {
	case exists(gitlab):
		return gitlab
	case exists("config.toml"):
		return "config.toml"
	}
	return gitlab
}

// configUsage is the help of every -c/--config flag.
const configUsage = "config file: $CONFIG_FILE, else GitLab Runner's (/etc/gitlab-runner/config.toml as root, ~/.gitlab-runner/config.toml otherwise), or ./config.toml if only that exists"

func init() {
	cfgCmd := &cobra.Command{
		Use:   "config",
		Short: "Check config.toml, or migrate docker+machine runners to docker-autoscaler",
	}
	var path string
	cfgCmd.PersistentFlags().StringVarP(&path, "config", "c", defaultConfigPath(), configUsage)

	check := &cobra.Command{
		Use:   "check [FILE]",
		Short: "Report every problem in config.toml with file:line:column, key path and hint",
		Long: "Report every problem in config.toml (FILE, or -c FILE). Unknown keys are warnings;\n" +
			"wrong types and invalid values are errors. Exits 1 only when there are errors.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if c := cmd.Flags().Lookup("config"); c.Changed && path != args[0] {
					return usageError{cmd, fmt.Errorf("config check: the file is given twice (%s and -c %s): give one", args[0], path)}
				}
				path = args[0]
			}
			_, diags, err := config.Load(path)
			out := cmd.OutOrStdout()
			for _, d := range diags {
				fmt.Fprintln(out, d.String())
			}
			if _, invalid := config.AsInvalid(err); err != nil && !invalid {
				return err
			}
			nErr, nWarn := len(diags.Errors()), len(diags.Warnings())
			if nErr > 0 {
				fmt.Fprintf(out, "%s: %d error(s), %d warning(s)\n", path, nErr, nWarn)
				return exitError{1}
			}
			fmt.Fprintf(out, "%s: OK (%d warning(s))\n", path, nWarn)
			return nil
		},
	}

	var outPath string
	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Convert docker+machine runners to the docker-autoscaler executor",
		Long: "Convert every docker+machine runner of config.toml to docker-autoscaler\n" +
			"([runners.machine] → [runners.autoscaler] and policies) and print a warning for\n" +
			"each setting that cannot carry over. Writes to -o, or to stdout.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			data, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("reading config file: %w", err)
			}
			res, err := config.Migrate(path, data)
			if err != nil {
				if errors.Is(err, config.ErrNothingToMigrate) {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", path, err)
					return nil
				}
				return err
			}
			for _, w := range res.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning: "+w)
			}
			if outPath == "" || outPath == "-" {
				_, err = cmd.OutOrStdout().Write(res.Output)
				return err
			}
			if err := os.WriteFile(outPath, res.Output, 0o600); err != nil {
				return fmt.Errorf("writing migrated config: %w", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (%d runner(s) migrated, %d warning(s))\n",
				outPath, res.Migrated, len(res.Warnings))
			return nil
		},
	}
	migrate.Flags().StringVarP(&outPath, "output", "o", "", "write the migrated config here instead of stdout")

	cfgCmd.AddCommand(check, migrate)
	root.AddCommand(cfgCmd)
}
