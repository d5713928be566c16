package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// runCLI runs the command line in-process as main does (execute) and returns stdout,
// stderr and the exit status. Every flag starts from its default, as in a new process.
func runCLI(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	resetFlags(root)
	var out, errOut bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	defer func() {
		resetFlags(root)
		root.SetIn(nil)
		root.SetOut(nil)
		root.SetErr(nil)
		root.SetArgs(nil)
	}()
	code := execute(args)
	return out.String(), errOut.String(), code
}

// resetFlags gives every flag of the tree its default value back and forgets that it
// was set: in-process runs share one command tree.
func resetFlags(c *cobra.Command) {
	reset := func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			sv.Replace(nil)
		} else {
			f.Value.Set(f.DefValue)
		}
		f.Changed = false
	}
	c.Flags().VisitAll(reset)
	c.PersistentFlags().VisitAll(reset)
	for _, sub := range c.Commands() {
		resetFlags(sub)
	}
}

// commandPaths lists every command of the tree as its argument path.
func commandPaths(c *cobra.Command, prefix []string) [][]string {
	var out [][]string
	for _, sub := range c.Commands() {
		p := append(append([]string(nil), prefix...), sub.Name())
		out = append(out, p)
		out = append(out, commandPaths(sub, p)...)
	}
	return out
}

// TestUnknownCommandOrFlagAtAnyDepth: a mistake anywhere in the command line is exit
// status 2 with the reason and the usage on stderr, nothing on stdout, and nothing
// done. Before, `runner fleeting instal` printed the help and exited 0.
func TestUnknownCommandOrFlagAtAnyDepth(t *testing.T) {
	prepareCommands(root)
	paths := commandPaths(root, nil)
	if len(paths) < 30 {
		t.Fatalf("only %d command paths: %v", len(paths), paths)
	}
	for _, p := range paths {
		c, _, err := root.Find(p)
		if err != nil {
			t.Fatalf("%v: %v", p, err)
		}
		if c.DisableFlagParsing {
			continue // the embedded plugin: its arguments are the plugin's
		}
		name := strings.Join(p, " ")
		t.Run(name+" --bogus", func(t *testing.T) {
			out, errOut, code := runCLI(t, "", append(p, "--no-such-flag-zz")...)
			if code != exitUsage || out != "" || !strings.Contains(errOut, "unknown flag: --no-such-flag-zz") || !strings.Contains(errOut, "Usage:") {
				t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
			}
		})
		if c.HasSubCommands() {
			t.Run(name+" nosuchcommand", func(t *testing.T) {
				out, errOut, code := runCLI(t, "", append(p, "nosuchcommand")...)
				if code != exitUsage || out != "" || !strings.Contains(errOut, `unknown command "nosuchcommand" for "runner `+name+`"`) {
					t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
				}
			})
		}
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"regster"}, `unknown command "regster" for "runner"; did you mean "register"?`},
		{[]string{"fleeting", "instal"}, `unknown command "instal" for "runner fleeting"; did you mean "install"?`},
		{[]string{"config", "chek"}, `unknown command "chek" for "runner config"; did you mean "check"?`},
		{[]string{"pool", "stauts"}, `did you mean "status"?`},
		{[]string{"exec", "--dry-rn"}, "unknown flag: --dry-rn; did you mean --dry-run?"},
		{[]string{"register", "--tokne", "x"}, "unknown flag: --tokne; did you mean --token?"},
		{[]string{"register", "--docker-imag", "x"}, "unknown flag: --docker-imag; did you mean --docker-image?"},
		{[]string{"status", "--instance", "x"}, "the pools' status moved to `runner pool status`"},
		{[]string{"verify", "extra"}, `unknown command "extra" for "runner verify"`},
		{[]string{"plugin", "check"}, "accepts 1 arg(s), received 0"},
		{[]string{"config", "check", "a.toml", "b.toml"}, "accepts at most 1 arg(s), received 2"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, errOut, code := runCLI(t, "", tt.args...)
			if code != exitUsage || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, exitUsage, tt.want)
			}
		})
	}
	// A group without a subcommand still shows its help, successfully.
	if out, _, code := runCLI(t, "", "fleeting"); code != 0 || !strings.Contains(out, "Available Commands:") {
		t.Errorf("runner fleeting: exit %d, %q", code, out)
	}
}

// TestVersionIsGitLabsFormat: `runner version` and `--version` print GitLab Runner's
// lines (before, `runner version` was an unknown command).
func TestVersionIsGitLabsFormat(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, errOut, code := runCLI(t, "", args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		want := []string{"Version:      ", "Git revision: ", "Git branch:   ", "GO version:   go", "Built:        ", "OS/Arch:      linux/"}
		if len(lines) != len(want) {
			t.Fatalf("%v: %q", args, out)
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("%v: line %d %q, want prefix %q", args, i, lines[i], w)
			}
		}
	}
}
