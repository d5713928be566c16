package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestExecDryRunCLI: `runner exec --dry-run --json` as a process: the plan on stdout
// and exit status 0; a bad flag, --json without --dry-run and an invalid pipeline
// are exit status 2, with the reason on stderr.
func TestExecDryRunCLI(t *testing.T) {
	bin := runnerBinary(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(`build:
  script: [make]
release:
  script: [make release]
  rules:
    - if: $RELEASE
      when: manual
`), 0o644)
	os.WriteFile(filepath.Join(dir, "bad.yml"), []byte("j:\n  script: [x]\n  rules: [{if: $A =~ }]\n"), 0o644)
	run := func(args ...string) (int, string, string) {
		cmd := exec.Command(bin, append([]string{"exec", "-C", dir}, args...)...)
		cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+t.TempDir())
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	}
	code, out, errOut := run("--dry-run", "--json", "--var", "RELEASE=1")
	if code != 0 {
		t.Fatalf("exit status %d\n%s", code, errOut)
	}
	var plan struct {
		Schema int `json:"schema"`
		Stages []struct {
			Name string `json:"name"`
			Jobs []struct {
				Name, Status, When, If string
			} `json:"jobs"`
		} `json:"stages"`
	}
	if err := json.Unmarshal([]byte(out), &plan); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if plan.Schema != 1 || len(plan.Stages) != 1 || plan.Stages[0].Name != "test" || len(plan.Stages[0].Jobs) != 2 {
		t.Fatalf("plan = %+v", plan)
	}
	if r := plan.Stages[0].Jobs[1]; r.Name != "release" || r.Status != "manual" || r.When != "manual" || r.If != "$RELEASE" {
		t.Errorf("release = %+v", r)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--dry-run", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{[]string{"--json"}, "--json goes with --dry-run"},
		{[]string{"--dry-run", "-f", "bad.yml"}, "bad.yml:3:16: j.rules[0].if: invalid expression"},
		{[]string{"--dry-run", "--var", "=x"}, `--var "=x": expected NAME=VALUE`},
	} {
		if code, _, errOut := run(tt.args...); code != 2 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit status %d, stderr %q; want 2 and %q", tt.args, code, errOut, tt.want)
		}
	}
}
