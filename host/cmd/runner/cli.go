package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/flotilla-ci/flotilla/host/internal/didyoumean"
)

// exitUsage is the exit status of a command line that names an unknown command or
// flag, or gives the wrong arguments, as GitLab Runner and most Unix tools use it.
const exitUsage = 2

// usageError is a mistake in the command line: main prints it, the command's usage,
// and exits with exitUsage.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// execute runs root with args and returns the process's exit status, printing errors
// and usage to stderr as main does. Tests call it instead of main.
func execute(args []string) int {
	prepareCommands(root)
	args = stripForeignFlags(root, args)
	root.SetArgs(args)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	stderr := root.ErrOrStderr()
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ue usageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		if ue.cmd != nil {
			cmd = ue.cmd
		}
		fmt.Fprintln(stderr, "runner:", err)
		if cmd != nil {
			fmt.Fprintln(stderr)
			fmt.Fprint(stderr, cmd.UsageString())
		}
		return exitUsage
	}
	fmt.Fprintln(stderr, "runner:", err)
	return 1
}

// isCobraUsageError recognises the command-line errors cobra itself returns (as plain
// errors): a required flag left out.
func isCobraUsageError(err error) bool {
	return strings.HasPrefix(err.Error(), "required flag(s)")
}

// prepared marks the command tree as hardened (execute may run many times in tests).
var prepared bool

// prepareCommands makes every command of the tree answer a mistake the same way:
// an unknown subcommand at any depth, an unknown flag or wrong arguments are a
// usageError (exit status 2) with "did you mean" where a known name is close, and
// environment defaults (envFlag) are applied before a command runs.
func prepareCommands(root *cobra.Command) {
	if prepared {
		return
	}
	prepared = true
	root.SetFlagErrorFunc(flagError)
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.SuggestionsMinimumDistance = 2
		switch {
		case c.DisableFlagParsing:
			// Its arguments are someone else's (the embedded plugin's).
		case c.HasSubCommands() && !c.Runnable():
			// A group such as `runner fleeting`: without a RunE cobra prints its help
			// and exits 0 whatever follows, so `runner fleeting instal` looked fine.
			c.Args = unknownSubcommand
			c.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
		default:
			validate := c.Args
			if validate == nil {
				validate = cobra.ArbitraryArgs
			}
			c.Args = func(c *cobra.Command, args []string) error {
				if err := validate(c, args); err != nil {
					return usageError{c, err}
				}
				return nil
			}
		}
		if c.PreRunE == nil && c.PreRun == nil {
			c.PreRunE = func(c *cobra.Command, _ []string) error { return applyEnv(c) }
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// unknownSubcommand is the Args check of a command group: any argument is a
// subcommand that does not exist.
func unknownSubcommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf("; did you mean %q?", s[0])
	}
	return usageError{c, errors.New(msg)}
}

// flagError turns pflag's parse errors into usage errors, with the closest flag of
// the command when one is near.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	var name string
	if _, after, ok := strings.Cut(msg, "unknown flag: --"); ok {
		name = after
	} else if _, after, ok := strings.Cut(msg, "unknown shorthand flag: "); ok {
		// "unknown shorthand flag: 'x' in -xyz"
		name = strings.Trim(strings.Fields(after)[0], "'")
	}
	if name != "" {
		var known []string
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden {
				known = append(known, f.Name)
			}
		})
		if len(name) > 1 {
			if s := didyoumean.Closest(name, known); s != "" {
				msg += fmt.Sprintf("; did you mean --%s?", s)
			}
		}
	}
	return usageError{c, errors.New(msg)}
}

// envAnnotation is the pflag annotation listing a flag's environment variables.
const envAnnotation = "flotilla_env"

// envFlag makes the environment variables envs (the first one set wins) the default
// of flag name, as GitLab Runner's flags have them; a flag given on the command line
// wins. The help shows them as GitLab's does: [$NAME].
func envFlag(fs *pflag.FlagSet, name string, envs ...string) {
	f := fs.Lookup(name)
	if f == nil {
		panic("envFlag: no flag " + name)
	}
	if f.Annotations == nil {
		f.Annotations = map[string][]string{}
	}
	f.Annotations[envAnnotation] = envs
	f.Usage += " [$" + strings.Join(envs, ", $") + "]"
}

// applyEnv sets every flag of c that was not given from its environment variables.
func applyEnv(c *cobra.Command) error {
	var errs []error
	c.Flags().VisitAll(func(f *pflag.Flag) {
		envs := f.Annotations[envAnnotation]
		if len(envs) == 0 || f.Changed {
			return
		}
		for _, e := range envs {
			v, ok := os.LookupEnv(e)
			if !ok || v == "" {
				continue
			}
			var err error
			if sv, ok := f.Value.(pflag.SliceValue); ok {
				// A list in one variable, as GitLab reads RUNNER_ENV and the like.
				err = sv.Replace(splitList(v))
			} else {
				err = f.Value.Set(v)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("environment variable %s=%q for --%s: %v", e, v, f.Name, err))
			}
			return
		}
	})
	return errors.Join(errs...)
}

// splitList splits a list given in one environment variable at commas.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// foreignAnnotation lists the flag prefixes of GitLab Runner's that a command accepts
// and ignores with a warning (register: flags of executors Flotilla does not have).
const foreignAnnotation = "flotilla_foreign_flags"

// ignoredFlags are the foreign flags the last command line gave, for the command to
// warn about.
var ignoredFlags []string

// stripForeignFlags removes from args the flags of GitLab Runner's that the command
// args name accepts without acting on them (its foreignAnnotation prefixes), unless
// one of its own flags is close (a typo, answered with "did you mean"). A foreign
// flag without "=value" takes the next argument as its value when that is not a flag:
// the commands that accept foreign flags take no arguments.
func stripForeignFlags(root *cobra.Command, args []string) []string {
	ignoredFlags = nil
	c, _, err := root.Find(args)
	if err != nil || c.Annotations[foreignAnnotation] == "" {
		return args
	}
	prefixes := strings.Split(c.Annotations[foreignAnnotation], ",")
	c.InheritedFlags() // merges the persistent flags into c.Flags()
	var known []string
	c.Flags().VisitAll(func(f *pflag.Flag) { known = append(known, f.Name) })
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || c.Flags().Lookup(name) != nil || !hasAnyPrefix(name, prefixes) ||
			didyoumean.Closest(name, known) != "" {
			out = append(out, a)
			continue
		}
		ignoredFlags = append(ignoredFlags, "--"+name)
		if !hasValue && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			i++
		}
	}
	sort.Strings(ignoredFlags)
	return out
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// warnIgnored prints one warning naming the flags given that Flotilla does not act on.
func warnIgnored(w io.Writer, flags []string, why string) {
	if len(flags) == 0 {
		return
	}
	fmt.Fprintf(w, "WARNING: ignored %s: %s\n", strings.Join(flags, ", "), why)
}
