package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/config"
)

// defaultConfigPath is $CONFIG_FILE, else ./config.toml, as for gitlab-runner.
func defaultConfigPath() string {
	if p := os.Getenv("CONFIG_FILE"); p != "" {
		return p
	}
	return "config.toml"
}

func init() {
	cfgCmd := &cobra.Command{
		Use:   "config",
		Short: "Check config.toml, or migrate docker+machine runners to docker-autoscaler",
	}
	var path string
	cfgCmd.PersistentFlags().StringVarP(&path, "config", "c", defaultConfigPath(),
		"config file (default $CONFIG_FILE or ./config.toml)")

	check := &cobra.Command{
		Use:   "check",
		Short: "Report every problem in config.toml with file:line:column, key path and hint",
		Long: "Report every problem in config.toml. Unknown keys are warnings; wrong types and\n" +
			"invalid values are errors. Exits 1 only when there are errors.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
