package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/treetest"
)

// TestParseTrigger: the forms of trigger: as GitLab reads them.
func TestParseTrigger(t *testing.T) {
	tests := []struct {
		name, job string
		want      Trigger
		include   []string
	}{
		{"include string", "trigger:\n    include: child.yml", Trigger{ForwardYAML: true}, []string{"child.yml"}},
		{"include list of locals, depend", "trigger:\n    include: [{local: a.yml}, b.yml]\n    strategy: depend", Trigger{ForwardYAML: true, Depend: true}, []string{"a.yml", "b.yml"}},
		{"dynamic child", "trigger:\n    include:\n      - artifact: gen.yml\n        job: generate", Trigger{ForwardYAML: true}, []string{"gen.yml (artifact of generate)"}},
		{"forward", "trigger:\n    include: c.yml\n    forward: {yaml_variables: false, pipeline_variables: true}", Trigger{ForwardPipeline: true}, []string{"c.yml"}},
		{"project shorthand", "trigger: group/other", Trigger{ForwardYAML: true, Project: "group/other"}, nil},
		{"project and branch", "trigger:\n    project: group/other\n    branch: stable", Trigger{ForwardYAML: true, Project: "group/other", Branch: "stable"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, "deploy:\n  stage: deploy\n  "+tt.job+"\n")
			got := p.Job("deploy").Trigger
			if got == nil {
				t.Fatal("no trigger")
			}
			var inc []string
			for _, ti := range got.Include {
				inc = append(inc, ti.String())
			}
			if !slices.Equal(inc, tt.include) {
				t.Errorf("include = %q, want %q", inc, tt.include)
			}
			if got.Project != tt.want.Project || got.Branch != tt.want.Branch || got.Depend != tt.want.Depend ||
				got.ForwardYAML != tt.want.ForwardYAML || got.ForwardPipeline != tt.want.ForwardPipeline {
				t.Errorf("trigger = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

// TestParseKeywordErrors: bad trigger, inherit, environment, release, pages and
// include rules are refused with the file, line, key and what to do.
func TestParseKeywordErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"trigger with script", "d:\n  trigger: {include: c.yml}\n  script: x\n", `.gitlab-ci.yml:3:3: d.script: a trigger job cannot have script (GitLab: config contains unknown keys: script) (move the commands into a job of the child pipeline`},
		{"trigger with image", "d:\n  trigger: {include: c.yml}\n  image: alpine\n", `3:3: d.image: a trigger job cannot have image (allowed: trigger, stage`},
		{"unknown trigger keyword", "d:\n  trigger: {include: c.yml, stratgy: depend}\n", `2:29: d.trigger.stratgy: unknown trigger keyword "stratgy" (did you mean "strategy"?)`},
		{"unknown strategy", "d:\n  trigger: {include: c.yml, strategy: wait}\n", `2:39: d.trigger.strategy: unknown trigger strategy "wait" (the strategy is depend`},
		{"include and project", "d:\n  trigger: {include: c.yml, project: g/p}\n", `2:12: d.trigger: trigger has both include and project`},
		{"neither", "d:\n  trigger: {strategy: depend}\n", `2:12: d.trigger: trigger has neither include nor project (add include:`},
		{"too many includes", "d:\n  trigger:\n    include: [a.yml, b.yml, c.yml, d.yml]\n", `3:14: d.trigger.include: trigger:include has 4 entries; GitLab allows 3`},
		{"artifact without job", "d:\n  trigger:\n    include: [{artifact: gen.yml}]\n", `3:15: d.trigger.include[0]: trigger:include needs artifact and job together`},
		{"unknown forward keyword", "d:\n  trigger: {include: c.yml, forward: {yaml: true}}\n", `d.trigger.forward.yaml: unknown trigger:forward keyword "yaml"`},
		{"inherit unknown keyword", "j:\n  inherit: {defaults: false}\n  script: x\n", `2:13: j.inherit.defaults: unknown inherit keyword "defaults" (allowed: default, variables)`},
		{"inherit default unknown keyword", "j:\n  inherit:\n    default: [image, befor_script]\n  script: x\n", `3:22: j.inherit.default[1]: "befor_script" is not a default: keyword (did you mean "before_script"?)`},
		{"inherit variables not a list", "j:\n  inherit: {variables: maybe}\n  script: x\n", `2:24: j.inherit.variables: expected true, false or a list`},
		{"environment action", "j:\n  environment: {name: prod, action: deploy}\n  script: x\n", `2:37: j.environment.action: unknown environment action "deploy"`},
		{"environment tier", "j:\n  environment: {name: prod, deployment_tier: live}\n  script: x\n", `j.environment.deployment_tier: unknown deployment tier "live"`},
		{"environment without name", "j:\n  environment: {url: https://x}\n  script: x\n", `2:16: j.environment.name: an environment needs a name`},
		{"environment name", "j:\n  environment: 'review/a:b'\n  script: x\n", `2:16: j.environment: invalid environment name "review/a:b"`},
		{"on_stop undefined", "j:\n  environment: {name: review, on_stop: stop_revew}\n  script: x\nstop_review:\n  environment: {name: review, action: stop}\n  script: x\n", `2:40: j.environment.on_stop: on_stop job "stop_revew" is not defined (did you mean "stop_review"?)`},
		{"on_stop does not stop", "j:\n  environment: {name: review, on_stop: other}\n  script: x\nother:\n  script: x\n", `on_stop job "other" does not have environment:action: stop`},
		{"release without tag", "r:\n  release: {description: notes}\n  script: x\n", `2:12: r.release.tag_name: a release needs tag_name`},
		{"release unknown keyword", "r:\n  release: {tag_name: v1, description: d, tag: v1}\n  script: x\n", `r.release.tag: unknown release keyword "tag"`},
		{"pages not a boolean", "p:\n  pages: yes please\n  script: x\n", `2:10: p.pages: expected true, false or a mapping`},
		{"include rule variables", "include:\n  - local: a.yml\n    rules: [{if: $X, variables: {A: b}}]\nj: {script: x}\n", `3:22: include[0].rules[0].variables: variables is not an include rule keyword (allowed: if, changes, exists, when)`},
		{"include rule when", "include:\n  - local: a.yml\n    rules: [{when: manual}]\nj: {script: x}\n", `include[0].rules[0].when: unknown when "manual" (include rules take always or never)`},
		{"artifact outside trigger", "include:\n  - artifact: a.yml\n    job: gen\nj: {script: x}\n", `2:5: include[0].artifact: include:artifact is only for trigger:include`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, tt.yaml, tt.want)
		})
	}
}

// TestKeywordsWithoutFalseWarnings: environment, inherit and trigger earn no
// warning; release and pages earn one that says what does not happen locally.
func TestKeywordsWithoutFalseWarnings(t *testing.T) {
	p := mustParse(t, `deploy:
  inherit: {default: false}
  environment: {name: prod, url: https://example.com, kubernetes: {namespace: x}}
  script: x
child:
  trigger: {include: c.yml}
release:
  release: {tag_name: v1, description: notes}
  script: x
pages:
  script: make site
`)
	var got []string
	for _, w := range p.Warnings {
		got = append(got, w.Error())
	}
	want := []string{
		".gitlab-ci.yml:8:3: release.release: no release is created by runner exec (tag v1); the job's script runs",
		".gitlab-ci.yml:11:3: pages: pages are not deployed by runner exec; the published directory public is kept as the job's artifact",
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	pages := p.Job("pages")
	if pages.Pages != "public" || len(pages.Artifacts) != 1 || !slices.Equal(pages.Artifacts[0].Paths, []string{"public"}) {
		t.Errorf("pages job: publish %q, artifacts %+v", pages.Pages, pages.Artifacts)
	}
}

// TestInherit: inherit:default and inherit:variables as GitLab applies them, also
// to workflow:rules:variables.
func TestInherit(t *testing.T) {
	y := `variables: {A: a, B: b}
workflow:
  rules: [{variables: {W: w}}]
default:
  image: alpine
  before_script: [setup]
all:
  script: x
none:
  inherit: {default: false, variables: false}
  variables: {OWN: o}
  script: x
some:
  inherit: {default: [image], variables: [B, W]}
  script: x
`
	ev := evaluate(t, y, Env{})
	tests := []struct {
		job, image, script, vars string
	}{
		{"all", "alpine", "setup,x", "A=a,B=b,W=w"},
		{"none", "", "x", "OWN=o"},
		{"some", "alpine", "x", "B=b,W=w"},
	}
	for _, tt := range tests {
		j := ev.Pipeline.Job(tt.job)
		var vs []string
		for _, v := range j.Variables {
			vs = append(vs, v.Key+"="+v.Value)
		}
		if j.Image.Name != tt.image || strings.Join(j.Script, ",") != tt.script || strings.Join(vs, ",") != tt.vars {
			t.Errorf("%s: image %q, script %q, variables %q; want %q, %q, %q", tt.job, j.Image.Name, j.Script, vs, tt.image, tt.script, tt.vars)
		}
	}
}

// TestEnvironmentVariables: CI_ENVIRONMENT_* as GitLab sets them, the name and URL
// expanded with the job's and predefined variables, the tier guessed from the name.
func TestEnvironmentVariables(t *testing.T) {
	y := `review:
  variables: {APP: shop}
  environment:
    name: review/$CI_COMMIT_REF_SLUG
    url: https://$APP.$CI_COMMIT_REF_SLUG.example.com
  rules:
    - if: $CI_ENVIRONMENT_TIER == "development"
  script: x
prod:
  environment: {name: production, deployment_tier: other, action: prepare}
  script: x
short:
  environment: staging
  script: x
`
	ev := evaluate(t, y, Env{Predefined: vars("CI_COMMIT_REF_SLUG=feature-x")})
	tests := []struct {
		job  string
		want map[string]string
	}{
		{"review", map[string]string{"CI_ENVIRONMENT_NAME": "review/feature-x", "CI_ENVIRONMENT_SLUG": "review-feature-x-bjrazc",
			"CI_ENVIRONMENT_URL": "https://shop.feature-x.example.com", "CI_ENVIRONMENT_ACTION": "start", "CI_ENVIRONMENT_TIER": "development"}},
		{"prod", map[string]string{"CI_ENVIRONMENT_NAME": "production", "CI_ENVIRONMENT_SLUG": "production", "CI_ENVIRONMENT_ACTION": "prepare", "CI_ENVIRONMENT_TIER": "other"}},
		{"short", map[string]string{"CI_ENVIRONMENT_NAME": "staging", "CI_ENVIRONMENT_TIER": "staging"}},
	}
	for _, tt := range tests {
		j := ev.Pipeline.Job(tt.job)
		if j == nil {
			t.Fatalf("%s not added: %s", tt.job, ev.Decision(tt.job).Reason)
		}
		for k, want := range tt.want {
			if got, _ := j.Variables.Get(k); got != want {
				t.Errorf("%s: %s = %q, want %q", tt.job, k, got, want)
			}
		}
		if _, ok := j.Variables.Get("CI_ENVIRONMENT_URL"); ok && tt.want["CI_ENVIRONMENT_URL"] == "" {
			t.Errorf("%s: CI_ENVIRONMENT_URL set without a url", tt.job)
		}
	}
}

// TestEnvironmentSlug: GitLab's slugs (Gitlab::Slug::Environment): the suffix of a
// changed name is the last six base-36 digits of the name's SHA-256, here as computed
// independently (Python's int(sha256(name).hexdigest(), 16) in base 36).
func TestEnvironmentSlug(t *testing.T) {
	for name, want := range map[string]string{
		"staging-12345678901234567": "staging-123456789-s729ne",
		"9-staging-123456789012345": "env-9-staging-123-f6hm7j",
		"staging-1234567890123456":  "staging-1234567890123456",
		"staging-1234567890123456-": "staging-123456789-y52hkh",
		"production":                "production",
		"PRODUCTION":                "production-vl4voz",
		"review/1-foo":              "review-1-foo-9tdj0u",
		"1-foo":                     "env-1-foo-1k46wz",
		"1/foo":                     "env-1-foo-t4rmb4",
		"foo-":                      "foo",
		"foo--bar":                  "foo-bar-q006cp",
		"foo**bar":                  "foo-bar-3jfdn1",
		"*-foo":                     "env-foo-i1o6om",
		"staging-12345678-":         "staging-12345678",
		"staging-12345678-01234567": "staging-12345678-f21q2q",
		"":                          "env-qhkd3p",
	} {
		if got := EnvironmentSlug(name); got != want {
			t.Errorf("EnvironmentSlug(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestManualAllowFailure: a job-level when: manual may fail unless it says
// otherwise, also with rules; a rule's when: manual does not change the job's
// allow_failure (false by default), and such a job blocks the later stages.
func TestManualAllowFailure(t *testing.T) {
	y := `stages: [build, test]
job-manual:
  stage: build
  when: manual
  script: x
job-manual-rules:
  stage: build
  when: manual
  rules: [{exists: [nothing]}, {when: on_success}]
  script: x
rule-manual:
  stage: build
  rules: [{when: manual}]
  script: x
rule-manual-allowed:
  stage: build
  rules: [{when: manual, allow_failure: true}]
  script: x
job-allowed-rule-manual:
  stage: build
  allow_failure: true
  rules: [{when: manual}]
  script: x
later:
  stage: test
  script: x
dag:
  stage: test
  needs: []
  script: x
`
	ev := evaluate(t, y, Env{})
	for job, want := range map[string]bool{"job-manual": true, "job-manual-rules": true, "rule-manual": false, "rule-manual-allowed": true, "job-allowed-rule-manual": true} {
		if got := ev.Pipeline.Job(job).AllowFailure; got != want {
			t.Errorf("%s: allow_failure = %v, want %v", job, got, want)
		}
	}
	plan, err := ev.Pipeline.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if got := names2(plan.Jobs); got != "job-manual-rules,dag" {
		t.Errorf("plan = %s, want job-manual-rules,dag (rule-manual blocks the test stage; dag needs nothing)", got)
	}
	i := slices.IndexFunc(plan.Skipped, func(s Skip) bool { return s.Name == "later" })
	if i < 0 || !strings.Contains(plan.Skipped[i].Reason, "waits for the manual job rule-manual, which blocks the later stages") {
		t.Errorf("later skipped: %+v", plan.Skipped)
	}
	var b bytes.Buffer
	NewDryRun(ev.Pipeline, ev, plan, nil, nil).WriteText(&b)
	if !strings.Contains(b.String(), "job-manual               manual       when: manual, allow_failure\n") ||
		!strings.Contains(b.String(), "rule-manual              manual       when: manual\n") {
		t.Errorf("dry run does not show allow_failure as decided:\n%s", b.String())
	}
}

// TestIncludeRules: include:rules decide with the predefined and --var variables,
// exists and changes; without a run they are not evaluated (a warning).
func TestIncludeRules(t *testing.T) {
	files := map[string]string{
		".gitlab-ci.yml": `variables: {GLOBAL: "yes"}
include:
  - local: main.yml
    rules: [{if: $CI_COMMIT_BRANCH == "main"}]
  - local: docker.yml
    rules: [{exists: [Dockerfile]}]
  - local: docs.yml
    rules: [{changes: ["docs/**/*"]}]
  - local: never.yml
    rules: [{if: $FORCE, when: always}, {when: never}]
  - local: global.yml
    rules: [{if: $GLOBAL == "yes"}]
base: {script: x}
`,
		"main.yml":   "main-job: {script: x}\n",
		"docker.yml": "docker-job: {script: x}\n",
		"docs.yml":   "docs-job: {script: x}\n",
		"never.yml":  "never-job: {script: x}\n",
		"global.yml": "global-job: {script: x}\n",
		"Dockerfile": "FROM scratch\n",
	}
	dir := treetest.Write(t, files)
	load := func(env *Env) []string {
		t.Helper()
		p, err := LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"), Options{Dir: dir, Env: env})
		if err != nil {
			t.Fatal(err)
		}
		return names(p.Jobs)
	}
	tests := []struct {
		name string
		env  Env
		want []string
	}{
		{"main, docs changed", Env{Dir: dir, Predefined: vars("CI_COMMIT_BRANCH=main"), Changed: fixedChanges("docs/a/b.md")}, []string{"main-job", "docker-job", "docs-job", "base"}},
		{"branch, nothing changed", Env{Dir: dir, Predefined: vars("CI_COMMIT_BRANCH=topic"), Changed: fixedChanges("src/x.go")}, []string{"docker-job", "base"}},
		{"--var", Env{Dir: dir, Overrides: vars("FORCE=1"), Changed: fixedChanges()}, []string{"docker-job", "never-job", "base"}},
		{"global variables are not seen", Env{Dir: dir, Changed: fixedChanges()}, []string{"docker-job", "base"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := load(&tt.env); !slices.Equal(got, tt.want) {
				t.Errorf("jobs = %v, want %v", got, tt.want)
			}
		})
	}
	p, err := LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Jobs) != 6 || len(p.Warnings) != 5 || !strings.Contains(p.Warnings[0].Error(), "include rules are not evaluated without a run") {
		t.Errorf("without a run: jobs %v, warnings %v", names(p.Jobs), p.Warnings)
	}
}

// childTree is a parent pipeline with a trigger job whose child has two stages, its
// own workflow and a grandchild.
var childTree = map[string]string{
	".gitlab-ci.yml": `variables: {GLOBAL: parent}
build: {stage: build, script: x}
deploy:
  stage: deploy
  variables: {TARGET: $CI_COMMIT_BRANCH-env}
  trigger:
    include: ci/child.yml
    strategy: depend
docs:
  stage: deploy
  inherit: {variables: false}
  trigger:
    include: [{local: ci/child.yml}]
    forward: {yaml_variables: false, pipeline_variables: true}
other-project:
  trigger: group/other
`,
	"ci/child.yml": `workflow:
  rules:
    - if: $CI_PIPELINE_SOURCE == "parent_pipeline"
stages: [prepare, ship]
variables: {TARGET: child-default}
prepare:
  stage: prepare
  script: echo $TARGET
ship:
  stage: ship
  script: echo $GLOBAL
only-from-push:
  stage: ship
  rules: [{if: $CI_PIPELINE_SOURCE == "push"}]
  script: x
nested:
  stage: ship
  trigger: {include: ci/grandchild.yml}
`,
	"ci/grandchild.yml": "leaf: {script: x}\nagain: {trigger: {include: ci/grandchild.yml}}\n",
}

// TestNewChild: a child pipeline is evaluated with CI_PIPELINE_SOURCE=parent_pipeline
// and the trigger job's variables (expanded) as pipeline variables, or the run's with
// forward:pipeline_variables; children nest MaxChildDepth levels deep.
func TestNewChild(t *testing.T) {
	dir := treetest.Write(t, childTree)
	env := Env{Dir: dir, Predefined: vars("CI_PIPELINE_SOURCE=push", "CI_COMMIT_BRANCH=main"), Overrides: vars("RUN=1")}
	p, err := LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"), Options{Dir: dir, Env: &env})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0].Error(), `job "other-project" (trigger of project group/other) is skipped`) {
		t.Errorf("warnings = %v", p.Warnings)
	}
	ev, err := p.Evaluate(env)
	if err != nil {
		t.Fatal(err)
	}
	o := ChildOptions{Load: Options{Dir: dir}, Env: env}
	deploy, err := NewChild(context.Background(), ev.Pipeline.Job("deploy"), o)
	if err != nil {
		t.Fatal(err)
	}
	if got := names2(deploy.Plan.Jobs); got != "prepare,ship,nested" {
		t.Errorf("child plan = %s, want prepare,ship,nested", got)
	}
	if src, _ := deploy.Env.Predefined.Get("CI_PIPELINE_SOURCE"); src != "parent_pipeline" {
		t.Errorf("CI_PIPELINE_SOURCE = %q", src)
	}
	check := func(c *Child, job, name, want string) {
		t.Helper()
		got, ok := c.Evaluation.Pipeline.Job(job).Variables.Get(name)
		if want == "" && ok || got != want {
			t.Errorf("%s: %s = %q (set %v), want %q", job, name, got, ok, want)
		}
	}
	check(deploy, "prepare", "TARGET", "main-env") // the trigger's variable wins, expanded
	check(deploy, "ship", "GLOBAL", "parent")      // global variables are the trigger's too
	check(deploy, "ship", "RUN", "")               // pipeline variables are not forwarded
	docs, err := NewChild(context.Background(), ev.Pipeline.Job("docs"), o)
	if err != nil {
		t.Fatal(err)
	}
	check(docs, "prepare", "TARGET", "child-default")
	check(docs, "ship", "GLOBAL", "")
	check(docs, "ship", "RUN", "1")

	grand, err := NewChild(context.Background(), deploy.Evaluation.Pipeline.Job("nested"), deploy.Options)
	if err != nil {
		t.Fatal(err)
	}
	if got := names2(grand.Plan.Jobs); got != "leaf,again" || grand.Pipeline.Depth != 2 {
		t.Errorf("grandchild plan = %s at depth %d", got, grand.Pipeline.Depth)
	}
	if _, err := NewChild(context.Background(), grand.Evaluation.Pipeline.Job("again"), grand.Options); !errors.Is(err, ErrChildDepth) {
		t.Errorf("a third level: err = %v, want ErrChildDepth", err)
	}
	if _, err := NewChild(context.Background(), ev.Pipeline.Job("other-project"), o); err == nil || !strings.Contains(err.Error(), "project group/other") {
		t.Errorf("multi-project: err = %v", err)
	}
	plan, err := ev.Pipeline.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Skipped) != 1 || plan.Skipped[0].Name != "other-project" || !strings.Contains(plan.Skipped[0].Reason, "trigger:project group/other") {
		t.Errorf("skipped = %+v", plan.Skipped)
	}
}

// TestChildErrors: a child pipeline that cannot be made says why, naming the file.
func TestChildErrors(t *testing.T) {
	tests := []struct {
		name, parent, child, want string
	}{
		{"missing file", "t: {trigger: {include: nope.yml}}\n", "", `.gitlab-ci.yml:1:24: t.trigger.include: include:local "nope.yml": no such file`},
		{"invalid child", "t: {trigger: {include: c.yml}}\n", "j: {scrpt: x}\n", `c.yml:1:5: j.scrpt: unknown job keyword "scrpt"`},
		{"no pipeline", "t: {trigger: {include: c.yml}}\n", "workflow: {rules: [{if: $CI_PIPELINE_SOURCE == \"push\"}]}\nj: {script: x}\n", `workflow: no pipeline is created`},
		{"no jobs", "t: {trigger: {include: c.yml}}\n", "j: {script: x, rules: [{when: never}]}\n", `the child pipeline has no jobs`},
		{"dynamic in a dry run", "t: {trigger: {include: [{artifact: gen.yml, job: g}]}}\ng: {stage: build, script: x}\n", "", `include:artifact gen.yml: dynamic child pipelines need the artifacts of the job that generates the configuration`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{".gitlab-ci.yml": tt.parent}
			if tt.child != "" {
				files["c.yml"] = tt.child
			}
			dir := treetest.Write(t, files)
			p, err := LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"), Options{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewChild(context.Background(), p.Job("t"), ChildOptions{Load: Options{Dir: dir}, Env: Env{Dir: dir, Predefined: vars("CI_PIPELINE_SOURCE=push")}})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestDryRunChild: the dry run's trigger job carries its child's plan, in the text
// and in the JSON (schema 1, fields added).
func TestDryRunChild(t *testing.T) {
	dir := treetest.Write(t, childTree)
	env := Env{Dir: dir, Predefined: vars("CI_PIPELINE_SOURCE=push", "CI_COMMIT_BRANCH=main")}
	dr := dryRunWithChildren(t, dir, env)
	data, err := json.Marshal(dr)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Schema int
		Stages []struct {
			Name string
			Jobs []struct {
				Name, Status, Reason string
				Trigger              *struct {
					Include  []string
					Project  string
					Strategy string
				}
				Child *struct {
					File   string
					Stages []struct {
						Name string
						Jobs []struct {
							Name, Status string
							Child        *struct{ File string }
							ChildError   string `json:"child_error"`
						}
					}
				}
			}
		}
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Schema != 1 {
		t.Errorf("schema %d", got.Schema)
	}
	jobs := map[string]int{}
	for si, s := range got.Stages {
		for ji, j := range s.Jobs {
			jobs[j.Name] = si*100 + ji
		}
	}
	deploy := got.Stages[jobs["deploy"]/100].Jobs[jobs["deploy"]%100]
	if deploy.Trigger == nil || !slices.Equal(deploy.Trigger.Include, []string{"ci/child.yml"}) || deploy.Trigger.Strategy != "depend" || deploy.Child == nil {
		t.Fatalf("deploy = %+v", deploy)
	}
	if want := filepath.Join(dir, "ci", "child.yml"); deploy.Child.File != want {
		t.Errorf("child file %q, want %q", deploy.Child.File, want)
	}
	var childJobs []string
	for _, s := range deploy.Child.Stages {
		for _, j := range s.Jobs {
			childJobs = append(childJobs, s.Name+"/"+j.Name+":"+j.Status)
			if j.Name == "nested" && (j.Child == nil || j.Child.File != filepath.Join(dir, "ci", "grandchild.yml")) {
				t.Errorf("nested has no grandchild plan: %+v", j)
			}
		}
	}
	if want := "prepare/prepare:run,ship/ship:run,ship/only-from-push:skipped,ship/nested:run"; strings.Join(childJobs, ",") != want {
		t.Errorf("child jobs %s, want %s", strings.Join(childJobs, ","), want)
	}
	other := got.Stages[jobs["other-project"]/100].Jobs[jobs["other-project"]%100]
	if other.Status != "skipped" || other.Trigger == nil || other.Trigger.Project != "group/other" || other.Child != nil {
		t.Errorf("other-project = %+v", other)
	}
	var b bytes.Buffer
	dr.WriteText(&b)
	for _, want := range []string{
		"deploy         run          when: on_success, trigger: ci/child.yml, strategy: depend\n",
		"child pipeline of deploy:\n      Pipeline " + filepath.Join(dir, "ci", "child.yml"),
		"          child pipeline of nested:\n",
		"other-project  skipped      when: on_success, trigger: project group/other\n",
		"child pipeline: child pipelines nest at most 2 levels deep",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}

// dryRunWithChildren is `runner exec --dry-run` of the pipeline in dir: loaded,
// evaluated and planned with env, its trigger jobs' child plans added.
func dryRunWithChildren(t *testing.T, dir string, env Env) *DryRun {
	t.Helper()
	p, err := LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"), Options{Dir: dir, Env: &env})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Evaluate(env)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := ev.Pipeline.Plan()
	if err != nil {
		t.Fatal(err)
	}
	dr := NewDryRun(p, ev, plan, env.Predefined, nil)
	dr.AddChildren(context.Background(), ev, ChildOptions{Load: Options{Dir: dir}, Env: env})
	return dr
}

// dryRunOf is the dry run of pipeline file text y, evaluated without variables.
func dryRunOf(t *testing.T, y string) *DryRun {
	t.Helper()
	p, err := Parse(".gitlab-ci.yml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Evaluate(Env{})
	if err != nil {
		t.Fatal(err)
	}
	plan, err := ev.Pipeline.Plan()
	if err != nil {
		t.Fatal(err)
	}
	return NewDryRun(p, ev, plan, nil, nil)
}
