package execcmd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExecInputsAndIncludeProject: --input values reach the pipeline file's spec
// inputs and --include-project a local checkout for include:project, end to end on
// the built-in pool.
func TestExecInputsAndIncludeProject(t *testing.T) {
	proj := t.TempDir()
	os.MkdirAll(filepath.Join(proj, "templates"), 0o755)
	os.WriteFile(filepath.Join(proj, "templates", "greet.yml"), []byte("spec:\n  inputs:\n    who:\n---\ngreet:\n  script:\n    - echo hello $[[ inputs.who ]] from the template\n"), 0o644)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(`spec:
  inputs:
    who:
      options: [world, moon]
---
include:
  - project: my-group/templates
    file: templates/greet.yml
    inputs:
      who: $[[ inputs.who ]]
`), 0o644)
	code, out, errOut := run(t, dir, Options{Inputs: []string{"who=moon"}, IncludeProjects: []string{"my-group/templates=" + proj}, Follow: true})
	if code != 0 || !strings.Contains(out, "hello moon from the template") {
		t.Fatalf("exit code %d\n%s\n%s", code, out, errOut)
	}
}

// TestExecInputFlagErrors: malformed flags and a missing required input stop the run
// before any pool starts, with the flag or the input named.
func TestExecInputFlagErrors(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte("spec:\n  inputs:\n    who:\n---\nj:\n  script:\n    - echo $[[ inputs.who ]]\n"), 0o644)
	tests := []struct {
		o    Options
		want string
	}{
		{Options{Inputs: []string{"who"}}, `--input "who": expected name=value`},
		{Options{IncludeProjects: []string{"g/p"}}, `--include-project "g/p": expected group/name=PATH`},
		{Options{IncludeProjects: []string{"g/p=" + filepath.Join(dir, "nope")}}, "is not a directory"},
		{Options{}, `requires input "who"`},
	}
	for _, tt := range tests {
		tt.o.Dir, tt.o.Stdout, tt.o.Stderr = dir, &bytes.Buffer{}, &bytes.Buffer{}
		code, err := Run(context.Background(), tt.o)
		if code != ExitInvalid || err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: code %d, err = %v; want %q", tt.o.Inputs, code, err, tt.want)
		}
	}
}
