package pipelinerun

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/treetest"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
)

// childProject writes a project whose deploy job triggers child.yml (two stages),
// with strategy: depend or not, and CHILD_FAIL making the child's second job fail.
func childProject(t *testing.T, depend, fail bool) string {
	t.Helper()
	dir := t.TempDir()
	strategy := ""
	if depend {
		strategy = "\n    strategy: depend"
	}
	childFail := "no"
	if fail {
		childFail = "yes"
	}
	files := map[string]string{
		".gitlab-ci.yml": `stages: [build, deploy, after]
build: {stage: build, script: echo build}
deploy:
  stage: deploy
  variables: {GREETING: hello, CHILD_FAIL: ` + childFail + `}
  trigger:
    include: ci/child.yml` + strategy + `
after: {stage: after, script: echo after}
`,
		"ci/child.yml": `stages: [one, two]
first:
  stage: one
  script:
    - test "$GREETING" = hello
    - test "$CI_PIPELINE_SOURCE" = parent_pipeline
second:
  stage: two
  script: test "$CHILD_FAIL" != yes
`,
	}
	treetest.WriteIn(t, dir, files)
	return dir
}

// TestChildPipeline runs a parent whose trigger job runs a two-stage child pipeline
// on real sshd instances: the child's jobs run in stage order under the trigger job,
// with CI_PIPELINE_SOURCE=parent_pipeline and the trigger's variables; with
// strategy: depend the trigger job takes the child's status, without it the trigger
// job passes once the child is made and the child's failure does not fail the run.
func TestChildPipeline(t *testing.T) {
	tests := []struct {
		name          string
		depend, fail  bool
		deploy, after State
		second        State
		passed        bool
	}{
		{"depend, child passes", true, false, StatePassed, StatePassed, StatePassed, true},
		{"depend, child fails", true, true, StateFailed, StateSkipped, StateFailed, false},
		{"no depend, child fails", false, true, StatePassed, StatePassed, StateFailed, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, nil)
			dir := childProject(t, tt.depend, tt.fail)
			env := pipeline.Env{Dir: dir, Predefined: jobs.Variables{{Key: "CI_PIPELINE_SOURCE", Value: "push"}}}
			pl := planWithChildren(t, h, dir, env, nil)
			rec := &recorder{}
			h.runner.Progress = rec
			sum, err := h.runner.Run(context.Background(), pl)
			if err != nil {
				t.Fatal(err)
			}
			st := states(sum)
			want := map[string]State{"build": StatePassed, "deploy": tt.deploy, "after": tt.after,
				"deploy › first": StatePassed, "deploy › second": tt.second}
			for job, w := range want {
				if st[job] != w {
					t.Errorf("%s = %q, want %q", job, st[job], w)
				}
			}
			if sum.Passed != tt.passed {
				t.Errorf("passed = %v, want %v", sum.Passed, tt.passed)
			}
			// The child's jobs are under the trigger job, in the summary and in the
			// progress, and its stages run in order.
			var names []string
			for _, j := range sum.Jobs {
				names = append(names, j.Name+"@"+j.Parent)
			}
			if got := strings.Join(names, ","); got != "build@,deploy@,deploy › first@deploy,deploy › second@deploy,after@" {
				t.Errorf("summary jobs = %s", got)
			}
			rec.mu.Lock()
			firstDone := slices.Index(rec.states, "deploy › first:passed")
			secondRuns := slices.Index(rec.states, "deploy › second:running")
			rec.mu.Unlock()
			if firstDone < 0 || secondRuns < firstDone {
				t.Errorf("second started before first passed: %v", rec.states)
			}
			if log := filepath.Join(h.runner.LogDir, "deploy", "first.log"); sum.Jobs[2].LogPath != log {
				t.Errorf("child log at %s, want %s", sum.Jobs[2].LogPath, log)
			}
			var out bytes.Buffer
			PrintSummary(&out, sum)
			if !tt.depend && (!strings.Contains(out.String(), "Pipeline PASSED") || !strings.Contains(out.String(), "in child pipelines deploy › second failed, which does not fail this pipeline")) {
				t.Errorf("summary does not say the child failed:\n%s", out.String())
			}
			if tt.depend && tt.fail && (!strings.Contains(out.String(), "--- deploy failed: child pipeline failed: deploy › second ---") || !strings.Contains(out.String(), "Pipeline FAILED in ") || !strings.Contains(out.String(), ": deploy failed (child pipeline failed)\n")) {
				t.Errorf("summary does not blame the trigger job:\n%s", out.String())
			}
		})
	}
}

// TestDynamicChildPipeline: trigger:include:artifact reads the child's configuration
// from the artifacts of the job that generated it.
func TestDynamicChildPipeline(t *testing.T) {
	h := newHarness(t, nil)
	dir := t.TempDir()
	y := `generate:
  stage: build
  script:
    - 'printf "made: {script: [echo made]}\n" > gen.yml'
  artifacts: {paths: [gen.yml]}
run-it:
  stage: deploy
  trigger:
    include: [{artifact: gen.yml, job: generate}]
    strategy: depend
`
	if err := os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	env := pipeline.Env{Dir: dir}
	pl := planWithChildren(t, h, dir, env, nil)
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	st := states(sum)
	if st["run-it"] != StatePassed || st["run-it › made"] != StatePassed || !sum.Passed {
		var b bytes.Buffer
		PrintSummary(&b, sum)
		t.Errorf("states %v\n%s", st, b.String())
	}
}

// TestChildGetsParentArtifacts: a child pipeline's job with needs:pipeline:job gets
// the archive and the dotenv variables of that job of the parent pipeline (the
// trigger job passing the parent's pipeline ID, the child numbered on its own); with
// artifacts: false it gets neither. The trigger job waits for build without its
// artifacts, so that build's dotenv does not reach the child through the trigger.
func TestChildGetsParentArtifacts(t *testing.T) {
	h := newHarness(t, nil)
	dir := t.TempDir()
	files := map[string]string{
		".gitlab-ci.yml": `stages: [build, deploy]
build:
  stage: build
  script:
    - echo built > out.txt
    - echo FROM_BUILD=yes > build.env
  artifacts:
    paths: [out.txt]
    reports: {dotenv: build.env}
deploy:
  stage: deploy
  needs: [{job: build, artifacts: false}]
  variables: {PARENT_PIPELINE_ID: $CI_PIPELINE_ID}
  trigger: {include: child.yml, strategy: depend}
`,
		"child.yml": `use:
  script:
    - test "$(cat out.txt)" = built
    - test "$FROM_BUILD" = yes
  needs: [{pipeline: $PARENT_PIPELINE_ID, job: build}]
no-artifacts:
  script:
    - test ! -e out.txt
    - test -z "$FROM_BUILD"
  needs: [{pipeline: $PARENT_PIPELINE_ID, job: build, artifacts: false}]
`,
	}
	treetest.WriteIn(t, dir, files)
	env := pipeline.Env{Dir: dir, Predefined: jobs.Variables{{Key: "CI_PIPELINE_SOURCE", Value: "push"}, {Key: "CI_PIPELINE_ID", Value: "1000"}}}
	pl := planWithChildren(t, h, dir, env, func() (int, int) { return 2000, 20 })
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	st := states(sum)
	if st["deploy › use"] != StatePassed || st["deploy › no-artifacts"] != StatePassed || !sum.Passed {
		var b bytes.Buffer
		PrintSummary(&b, sum)
		t.Errorf("states %v\n%s", st, b.String())
	}
}

// planWithChildren loads, evaluates and plans the pipeline of dir with env, gives its
// jobs the working tree and their predefined variables, and lets the runner make
// child pipelines the same way (numbered by ids, if set).
func planWithChildren(t *testing.T, h *harness, dir string, env pipeline.Env, ids func() (int, int)) *pipeline.Plan {
	t.Helper()
	p, err := pipeline.LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"), pipeline.Options{Dir: dir, Env: &env})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Evaluate(env)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := ev.Pipeline.Plan()
	if err != nil {
		t.Fatal(err)
	}
	source := jobs.Source{Kind: jobs.SourceLocal, Dir: dir}
	prepare := func(j *pipeline.Job, predefined jobs.Variables) {
		j.Source = source
		j.Variables = slices.Concat(predefined, j.Variables)
	}
	for _, j := range pl.Jobs {
		prepare(j, env.Predefined)
	}
	h.runner.Children = &Children{Options: pipeline.ChildOptions{Load: pipeline.Options{Dir: dir}, Env: env, PipelineIDs: ids}, Prepare: prepare}
	return pl
}
