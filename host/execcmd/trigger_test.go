package execcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/treetest"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
)

// triggerPipeline has a trigger job whose child is included by a rule on the branch,
// and a child job that prints what it got from its parent.
const triggerPipeline = `stages: [build, deploy]
include:
  - local: ci/main-only.yml
    rules: [{if: $CI_COMMIT_BRANCH == "main"}]
build: {stage: build, script: ['echo "parent pipeline $CI_PIPELINE_ID"']}
deploy:
  stage: deploy
  variables: {GREETING: hello}
  trigger:
    include: ci/child.yml
    strategy: depend
`

func writeChildFiles(t *testing.T, dir string) {
	t.Helper()
	treetest.WriteIn(t, dir, map[string]string{
		"ci/main-only.yml": "main-only: {stage: build, script: [echo main]}\n",
		"ci/child.yml":     "child-job:\n  script: ['echo \"child got $GREETING from $CI_PIPELINE_SOURCE\"', 'echo \"child pipeline $CI_PIPELINE_ID\"']\n",
	})
}

// TestExecDryRunChild: --dry-run --json shows the trigger job with its child's plan,
// and include rules decided with the checkout's predefined variables.
func TestExecDryRunChild(t *testing.T) {
	dir := gitProject(t, triggerPipeline)
	writeChildFiles(t, dir)
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	var stdout, stderr bytes.Buffer
	code, err := Run(context.Background(), Options{Dir: dir, DryRun: true, JSON: true, Stdout: &stdout, Stderr: &stderr})
	if code != 0 || err != nil {
		t.Fatalf("exit code %d, %v\n%s", code, err, stderr.String())
	}
	var dr pipeline.DryRun
	if err := json.Unmarshal(stdout.Bytes(), &dr); err != nil {
		t.Fatalf("%v\n%s", err, stdout.String())
	}
	if len(dr.Stages) != 2 || len(dr.Stages[0].Jobs) != 2 || dr.Stages[0].Jobs[0].Name != "main-only" {
		t.Fatalf("the include rule on main did not include ci/main-only.yml: %+v", dr.Stages)
	}
	deploy := dr.Stages[1].Jobs[0]
	if deploy.Trigger == nil || deploy.Trigger.Strategy != "depend" || deploy.Child == nil || deploy.ChildError != "" {
		t.Fatalf("deploy = %+v", deploy)
	}
	child := deploy.Child
	if child.Schema != 1 || len(child.Stages) != 1 || child.Stages[0].Jobs[0].Name != "child-job" || child.Stages[0].Jobs[0].Status != "run" {
		t.Errorf("child = %+v", child)
	}
	if v := child.Stages[0].Jobs[0].Variables; len(v) != 1 || v[0] != (pipeline.DryVariable{Name: "GREETING", Value: "hello"}) {
		t.Errorf("child variables = %+v", v)
	}
}

// TestExecChildPipeline: runner exec runs the child pipeline on the built-in pool;
// its job gets the parent's sources, CI_PIPELINE_SOURCE=parent_pipeline and the
// trigger's variables, and shows under the trigger job.
func TestExecChildPipeline(t *testing.T) {
	dir := gitProject(t, triggerPipeline)
	writeChildFiles(t, dir)
	code, out, errOut := run(t, dir, Options{Follow: true})
	if code != 0 {
		t.Fatalf("exit code %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{"deploy › child-job │ child got hello from parent_pipeline", "deploy › child-job  test", "Pipeline PASSED"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The child is a pipeline of its own, as in GitLab: the next number.
	parent := regexp.MustCompile(`parent pipeline (\d+)`).FindStringSubmatch(out)
	child := regexp.MustCompile(`child pipeline (\d+)`).FindStringSubmatch(out)
	if parent == nil || child == nil {
		t.Fatalf("pipeline IDs not printed:\n%s", out)
	}
	if p, _ := strconv.Atoi(parent[1]); strconv.Itoa(p+1) != child[1] {
		t.Errorf("child CI_PIPELINE_ID %s, want the parent's %s + 1", child[1], parent[1])
	}
}
