package pipeline

import (
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/treetest"
)

// joined returns the errors an error joins (itself when it joins none).
func joined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// TestRefsRubyEscapes: only/except regex refs read Ruby's \A…\Z and \h as GitLab's
// do, through the same compiler as rules:if patterns; what RE2 cannot match is an
// error that names the ref.
func TestRefsRubyEscapes(t *testing.T) {
	tag := func(ref string) Env {
		return Env{Predefined: vars("CI_COMMIT_TAG="+ref, "CI_COMMIT_REF_NAME="+ref, "CI_PIPELINE_SOURCE=push")}
	}
	tests := []struct {
		name, filter, ref string
		added             bool
	}{
		{"\\A…\\Z@project matches", `only: ['/\Av[0-9]+\.[0-9]+\Z/@gitlab-org/gitlab-runner']`, "v1.2", true},
		{"\\A…\\Z misses a longer ref", `only: ['/\Av[0-9]+\.[0-9]+\Z/@gitlab-org/gitlab-runner']`, "v1.2-rc1", false},
		{"\\h", `only: ['/^sha-\h+$/']`, "sha-c0ffee", true},
		{"except \\H", `except: ['/\H\Z/']`, "v1.2-x", false},
		{"rules if \\Z", "rules: [{if: '$CI_COMMIT_TAG =~ /\\Av\\d+\\Z/'}]", "v12", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := evaluate(t, "j:\n  script: [x]\n  "+tt.filter+"\n", tag(tt.ref))
			if d := ev.Decision("j"); d.Added != tt.added {
				t.Errorf("added = %v (%s), want %v", d.Added, d.Reason, tt.added)
			}
		})
	}
	wantParseError(t, "j:\n  script: [x]\n  only: ['/^v(?!1)/']\n", `j.only: ref pattern /^v(?!1)/: look-ahead (?! is not supported`)
	wantParseError(t, "j:\n  script: [x]\n  rules: [{if: '$A =~ /(a)\\1/'}]\n", "backreference \\1 is not supported")
}

// TestDependenciesNull: dependencies: without a value is not written (GitLab treats
// nil as unset); [] still means none.
func TestDependenciesNull(t *testing.T) {
	const head = "stages: [build, test]\nb: {stage: build, script: x}\nt:\n  stage: test\n  script: x\n"
	for _, tt := range []struct {
		name, deps string
		want       []string
	}{
		{"empty", "  dependencies:\n", nil},
		{"tilde", "  dependencies: ~\n", nil},
		{"null", "  dependencies: null\n", nil},
		{"none", "  dependencies: []\n", []string{}},
		{"listed", "  dependencies: [b]\n", []string{"b"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j := mustParse(t, head+tt.deps).Job("t")
			if (j.ArtifactsFrom == nil) != (tt.want == nil) || !slices.Equal(j.ArtifactsFrom, tt.want) {
				t.Errorf("ArtifactsFrom = %#v, want %#v", j.ArtifactsFrom, tt.want)
			}
		})
	}
}

// TestRefusedJobNoFollowOnErrors: a job refused for a problem of its own is not
// reported again as an unknown job by the jobs that need it or depend on it.
func TestRefusedJobNoFollowOnErrors(t *testing.T) {
	y := `stages: [build, test]
a:
  stage: build
  script: x
  needs: [{job: z, bogus: 1}]
z: {stage: build, script: x}
b:
  stage: test
  script: x
  needs: [a, zz]
  dependencies: [a]
`
	_, err := Parse(".gitlab-ci.yml", []byte(y))
	errs := joined(err)
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	want := []string{
		`.gitlab-ci.yml:5:20: a.needs[0].bogus: unsupported needs field (runner exec supports job, artifacts, optional, parallel, pipeline, project, ref)`,
		`.gitlab-ci.yml:10:14: b.needs[1]: needs unknown job "zz" (did you mean "z"?)`,
	}
	if !slices.Equal(msgs, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(msgs, "\n"), strings.Join(want, "\n"))
	}
}

// TestNeedsProject: cross-project needs cannot be fetched by a local run: the job
// keeps its local needs and runs without those artifacts, with one warning per job
// naming each project, job and ref.
func TestNeedsProject(t *testing.T) {
	y := `stages: [build, test]
b: {stage: build, script: x}
t:
  stage: test
  script: x
  needs:
    - b
    - project: group/lib
      job: build-lib
      ref: main
      artifacts: true
    - project: group/tools
      job: make
      ref: v1
u:
  stage: test
  script: x
  needs: [{project: group/lib, job: build-lib, ref: main}]
`
	p := mustParse(t, y)
	if got := p.Job("t").Needs; !slices.Equal(got, []string{"b"}) {
		t.Errorf("t.Needs = %q, want [b]", got)
	}
	if got := p.Job("u").Needs; got == nil || len(got) != 0 {
		t.Errorf("u.Needs = %#v, want [] (needs: written: the job does not wait for the earlier stages)", got)
	}
	var ws []string
	for _, w := range p.Warnings {
		ws = append(ws, w.Error())
	}
	want := []string{
		`.gitlab-ci.yml:8:7: t.needs[1]: needs:project is not fetched by runner exec: the job runs without the artifacts of job build-lib of group/lib (ref main), job make of group/tools (ref v1)`,
		`.gitlab-ci.yml:18:11: u.needs[0]: needs:project is not fetched by runner exec: the job runs without the artifacts of job build-lib of group/lib (ref main)`,
	}
	if !slices.Equal(ws, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(ws, "\n"), strings.Join(want, "\n"))
	}
	plan, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if got := names2(plan.Jobs); got != "b,t,u" {
		t.Errorf("plan = %s", got)
	}
	wantParseError(t, "j:\n  script: x\n  needs: [{project: group/lib, job: x}]\n", `.gitlab-ci.yml:3:11: j.needs[0]: needs:project needs job: and ref:`)
}

// TestNeedsPipelineStatus: needs:pipeline without job mirrors the status of another
// project's pipeline (a job without a script); a local run cannot wait for it: the
// job is skipped with a warning.
func TestNeedsPipelineStatus(t *testing.T) {
	p := mustParse(t, "b: {stage: build, script: x}\nupstream:\n  stage: test\n  needs:\n    pipeline: other/project\n")
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0].Error(), `.gitlab-ci.yml:5:15: upstream.needs.pipeline: job "upstream" mirrors the status of the pipeline of other/project, which runner exec cannot wait for: it is skipped`) {
		t.Errorf("warnings = %v", p.Warnings)
	}
	plan, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if names2(plan.Jobs) != "b" || len(plan.Skipped) != 1 || plan.Skipped[0].Name != "upstream" || !strings.Contains(plan.Skipped[0].Reason, "needs:pipeline other/project") {
		t.Errorf("plan = %s, skipped %+v", names2(plan.Jobs), plan.Skipped)
	}
	wantParseError(t, "j:\n  script: x\n  needs: {pipeline: a/b, job: c}\n", `j.needs.job: unknown needs:pipeline keyword "job"`)
}

// parentTree is a parent whose trigger job passes its pipeline ID to a child that
// takes its build job's artifacts (needs:pipeline:job), as GitLab documents it.
func parentTree(child string) map[string]string {
	return map[string]string{
		".gitlab-ci.yml": `stages: [build, deploy]
build: {stage: build, script: x, artifacts: {paths: [out]}}
deploy:
  stage: deploy
  variables: {PARENT_PIPELINE_ID: $CI_PIPELINE_ID}
  trigger: {include: c.yml, strategy: depend}
`,
		"c.yml": child,
	}
}

// makeChild loads the parent of files, evaluates it with pipeline ID 1000 and makes
// the child of its deploy job, numbered 2000.
func makeChild(t *testing.T, files map[string]string) (*Child, error) {
	t.Helper()
	dir := treetest.Write(t, files)
	env := Env{Dir: dir, Predefined: vars("CI_PIPELINE_SOURCE=push", "CI_PIPELINE_ID=1000")}
	p, err := LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"), Options{Dir: dir, Env: &env})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Evaluate(env)
	if err != nil {
		t.Fatal(err)
	}
	o := ChildOptions{Load: Options{Dir: dir}, Env: env, Parent: ev.Pipeline, PipelineIDs: func() (int, int) { return 2000, 20 }}
	return NewChild(context.Background(), ev.Pipeline.Job("deploy"), o)
}

// TestNeedsPipelineJob: a child job's needs:pipeline:job names a job of the parent
// pipeline, through a variable holding the parent's pipeline ID; anything else is an
// error when the child is made, naming the file, line and job.
func TestNeedsPipelineJob(t *testing.T) {
	ch, err := makeChild(t, parentTree("use:\n  script: x\n  needs:\n    - pipeline: $PARENT_PIPELINE_ID\n      job: build\n    - {pipeline: $PARENT_PIPELINE_ID, job: deploy, artifacts: false}\n"))
	if err != nil {
		t.Fatal(err)
	}
	use := ch.Plan.Jobs[0]
	want := []ParentNeed{{Pipeline: "$PARENT_PIPELINE_ID", Job: "build", Artifacts: true}, {Pipeline: "$PARENT_PIPELINE_ID", Job: "deploy"}}
	var got []ParentNeed
	for _, n := range use.ParentNeeds {
		got = append(got, ParentNeed{Pipeline: n.Pipeline, Job: n.Job, Artifacts: n.Artifacts})
	}
	if !slices.Equal(got, want) || use.Needs == nil || len(use.Needs) != 0 {
		t.Errorf("needs = %#v, parent needs = %+v, want [] and %+v", use.Needs, got, want)
	}

	for _, tt := range []struct{ name, need, want string }{
		{"another pipeline", `{pipeline: "12345", job: build}`, `c.yml:1:37: use.needs[0].pipeline: needs:pipeline is 12345, not the parent pipeline (1000): runner exec gets artifacts from the parent pipeline only`},
		{"own pipeline", `{pipeline: $CI_PIPELINE_ID, job: build}`, `c.yml:1:37: use.needs[0].pipeline: needs:pipeline is $CI_PIPELINE_ID, the child pipeline's own ID (pass the parent's ID from the trigger job: variables: {PARENT_PIPELINE_ID: $CI_PIPELINE_ID}, and write $PARENT_PIPELINE_ID)`},
		{"unset", `{pipeline: $NOPE, job: build}`, `c.yml:1:37: use.needs[0].pipeline: needs:pipeline $NOPE is empty`},
		{"unknown job", `{pipeline: $PARENT_PIPELINE_ID, job: bild}`, `c.yml:1:63: use.needs[0].job: job "use" needs job "bild" of the parent pipeline, which has no such job (did you mean "build"?)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := makeChild(t, parentTree("use: {script: x, needs: ["+tt.need+"]}\n"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v\nwant %s", err, tt.want)
			}
		})
	}
}

// TestDryRunShowsParentNeeds: the dry run shows a child job's needs:pipeline:job, in
// the JSON and in the text.
func TestDryRunShowsParentNeeds(t *testing.T) {
	dir := treetest.Write(t, parentTree("use:\n  script: x\n  needs: [{pipeline: $PARENT_PIPELINE_ID, job: build}]\n"))
	env := Env{Dir: dir, Predefined: vars("CI_PIPELINE_SOURCE=push", "CI_PIPELINE_ID=1000")}
	dr := dryRunWithChildren(t, dir, env)
	deploy := dr.Stages[1].Jobs[0]
	if deploy.ChildError != "" || deploy.Child == nil {
		t.Fatalf("deploy: child %v, error %s", deploy.Child, deploy.ChildError)
	}
	use := deploy.Child.Stages[0].Jobs[0]
	data, err := json.Marshal(use)
	if err != nil {
		t.Fatal(err)
	}
	if want := `"needs":[],"parent_needs":[{"pipeline":"$PARENT_PIPELINE_ID","job":"build","artifacts":true}]`; !strings.Contains(string(data), want) {
		t.Errorf("JSON %s\nlacks %s", data, want)
	}
	var b strings.Builder
	dr.WriteText(&b)
	if want := "use  run          when: on_success, needs: build (parent pipeline)\n"; !strings.Contains(b.String(), want) {
		t.Errorf("text lacks %q:\n%s", want, b.String())
	}
}
