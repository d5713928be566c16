package execcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/gittest"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
)

// gitProject makes a Git checkout on branch main holding the pipeline file y.
func gitProject(t *testing.T, y string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "-A"}, {"commit", "-q", "-m", "ci"}} {
		gittest.Run(t, dir, args...)
	}
	return dir
}

const rulesPipeline = `stages: [build, deploy]
build:
  stage: build
  script:
    - echo "built on $CI_COMMIT_BRANCH by $CI_PIPELINE_SOURCE with MODE=$MODE"
  variables: {MODE: job}
  rules:
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
      variables: {MODE: rule}
deploy:
  stage: deploy
  script: [echo DEPLOYED]
  rules:
    - if: $DEPLOY == "yes"
`

// TestExecRulesSkipJob: on the built-in pool, a job whose rules do not match does not
// run, the predefined variables reach the job, and --var brings it in.
func TestExecRulesSkipJob(t *testing.T) {
	dir := gitProject(t, rulesPipeline)
	code, out, errOut := run(t, dir, Options{Follow: true})
	if code != 0 {
		t.Fatalf("exit code %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "built on main by push with MODE=rule") {
		t.Errorf("build did not see its rule's and the predefined variables:\n%s", out)
	}
	if strings.Contains(out, "DEPLOYED") || strings.Contains(out, "deploy ") {
		t.Errorf("deploy ran although its rules do not match:\n%s", out)
	}

	code, out, errOut = run(t, dir, Options{Follow: true, Vars: []string{"DEPLOY=yes"}, Source: "web"})
	if code != 0 || !strings.Contains(out, "DEPLOYED") || !strings.Contains(out, "by web") {
		t.Errorf("with --var DEPLOY=yes --source web: exit code %d\n%s\n%s", code, out, errOut)
	}
}

// TestExecDryRun: --dry-run --json prints the plan without starting a pool (no state,
// no logs), with the rule that decided each job; invalid input is exit status 2 and
// a workflow that creates no pipeline is 0 with the reason.
func TestExecDryRun(t *testing.T) {
	dir := gitProject(t, rulesPipeline)
	dryRun := func(o Options) (int, string, error) {
		state := t.TempDir()
		t.Setenv("XDG_STATE_HOME", state)
		var stdout, stderr bytes.Buffer
		o.Dir, o.DryRun, o.Stdout, o.Stderr = dir, true, &stdout, &stderr
		code, err := Run(context.Background(), o)
		if ents, _ := os.ReadDir(filepath.Join(state, "flotilla")); len(ents) != 0 {
			t.Errorf("a dry run left state behind: %v", ents)
		}
		return code, stdout.String(), err
	}
	code, out, err := dryRun(Options{JSON: true, Vars: []string{"SECRET=x"}})
	if code != 0 || err != nil {
		t.Fatalf("exit code %d, %v\n%s", code, err, out)
	}
	var dr pipeline.DryRun
	if err := json.Unmarshal([]byte(out), &dr); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if dr.Schema != 1 || !dr.Created || len(dr.Stages) != 2 {
		t.Fatalf("plan = %+v", dr)
	}
	build, deploy := dr.Stages[0].Jobs[0], dr.Stages[1].Jobs[0]
	if build.Name != "build" || build.Status != "run" || build.DecidedBy != "rules" || build.Rule == nil || *build.Rule != 0 ||
		build.If != "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH" {
		t.Errorf("build = %+v", build)
	}
	if got := build.Variables; len(got) != 2 || got[0] != (pipeline.DryVariable{Name: "MODE", Value: "rule"}) || got[1].Name != "SECRET" {
		t.Errorf("build variables = %+v", got)
	}
	if deploy.Name != "deploy" || deploy.Status != "skipped" || deploy.Rule != nil || deploy.Reason != "none of its 1 rules matched" {
		t.Errorf("deploy = %+v", deploy)
	}

	code, out, err = dryRun(Options{})
	if code != 0 || err != nil || !strings.Contains(out, "deploy  skipped") || !strings.Contains(out, "rules[0] (if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH) matched") {
		t.Errorf("text: exit code %d, %v\n%s", code, err, out)
	}

	for _, o := range []Options{{Vars: []string{"NO EQUALS"}}, {Source: "cron"}, {File: "missing.yml"}, {Jobs: []string{"deploy"}}} {
		if code, _, err := dryRun(o); code != ExitInvalid || err == nil {
			t.Errorf("%+v: exit code %d, %v; want 2", o, code, err)
		}
	}

	os.WriteFile(filepath.Join(dir, "broken.yml"), []byte("j:\n  script: [x]\n  rules:\n    - if: $A = \"b\"\n"), 0o644)
	if code, _, err := dryRun(Options{File: "broken.yml"}); code != ExitInvalid || err == nil || !strings.Contains(err.Error(), "broken.yml:4") {
		t.Errorf("invalid pipeline: exit code %d, %v", code, err)
	}

	os.WriteFile(filepath.Join(dir, "none.yml"), []byte("workflow:\n  rules: [{if: $CI_COMMIT_TAG}]\nj: {script: [x]}\n"), 0o644)
	code, out, err = dryRun(Options{File: "none.yml", JSON: true})
	if code != 0 || err != nil || !strings.Contains(out, `"created": false`) || !strings.Contains(out, "none of the 1 workflow rules matched") {
		t.Errorf("no pipeline: exit code %d, %v\n%s", code, err, out)
	}
}
