package pipeline

import (
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/treetest"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// vars builds variables from "K=V" strings.
func vars(kvs ...string) jobs.Variables {
	var out jobs.Variables
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		out = append(out, jobs.Variable{Key: k, Value: v})
	}
	return out
}

// fixedChanges is an Env.Changed that knows files, whatever the base.
func fixedChanges(files ...string) func(string) ([]string, bool, error) {
	return func(string) ([]string, bool, error) { return files, true, nil }
}

func evaluate(t *testing.T, y string, env Env) *Evaluation {
	t.Helper()
	ev, err := mustParse(t, y).Evaluate(env)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestRules: each rules keyword, first match wins, no match leaves the job out, and
// the matching rule's when, allow_failure, variables and needs apply.
func TestRules(t *testing.T) {
	branchMain := vars("CI_COMMIT_BRANCH=main", "CI_DEFAULT_BRANCH=main", "CI_PIPELINE_SOURCE=push", "CI_COMMIT_REF_NAME=main")
	tests := []struct {
		name  string
		rules string // the rules: of job j (indented for it)
		env   Env
		job   string // extra job keys
		added bool
		when  string
		rule  int
		check func(t *testing.T, j *Job)
	}{
		{name: "if true", rules: "- if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", env: Env{Predefined: branchMain}, added: true, when: "on_success", rule: 0},
		{name: "if false, no match", rules: "- if: $CI_COMMIT_TAG", env: Env{Predefined: branchMain}, rule: -1},
		{name: "first match wins", rules: "- if: $CI_COMMIT_TAG\n  when: never\n- if: $CI_COMMIT_BRANCH\n  when: manual\n- when: always", env: Env{Predefined: branchMain}, added: true, when: "manual", rule: 1},
		{name: "when never", rules: "- if: $CI_COMMIT_BRANCH\n  when: never\n- when: always", env: Env{Predefined: branchMain}, rule: 0},
		{name: "rule without condition", rules: "- when: on_failure", added: true, when: "on_failure", rule: 0},
		{name: "job when is the default", rules: "- if: $CI_COMMIT_BRANCH", job: "when: manual", env: Env{Predefined: branchMain}, added: true, when: "manual", rule: 0},
		{name: "delayed is on_success", rules: "- when: delayed", added: true, when: "on_success", rule: 0},
		{name: "job variables in if", rules: "- if: $MODE == \"full\"", job: "variables: {MODE: full}", added: true, when: "on_success", rule: 0},
		{name: "--var overrides a job variable", rules: "- if: $MODE == \"full\"", job: "variables: {MODE: full}", env: Env{Overrides: vars("MODE=quick")}, rule: -1},
		{name: "changes matches", rules: "- changes: [\"src/**/*.go\"]", env: Env{Changed: fixedChanges("README.md", "src/a/b.go")}, added: true, when: "on_success", rule: 0},
		{name: "changes does not match", rules: "- changes: [\"src/*.go\"]", env: Env{Changed: fixedChanges("src/a/b.go")}, rule: -1},
		{name: "changes unknown holds", rules: "- changes: [docs/*]", env: Env{}, added: true, when: "on_success", rule: 0},
		{name: "changes with compare_to and braces", rules: "- changes:\n    paths: [\"{api,web}/*.{js,ts}\"]\n    compare_to: refs/heads/main", env: Env{Changed: func(base string) ([]string, bool, error) {
			if base != "refs/heads/main" {
				return nil, true, nil
			}
			return []string{"web/x.ts"}, true, nil
		}}, added: true, when: "on_success", rule: 0},
		{name: "changes path with a variable", rules: "- changes: [\"$DIR/*\"]", job: "variables: {DIR: svc}", env: Env{Changed: fixedChanges("svc/main.go")}, added: true, when: "on_success", rule: 0},
		{name: "if and changes both needed", rules: "- if: $CI_COMMIT_TAG\n  changes: [a]\n- when: manual", env: Env{Predefined: branchMain, Changed: fixedChanges("a")}, added: true, when: "manual", rule: 1},
		{name: "exists", rules: "- exists: [Dockerfile]", env: Env{Dir: treetest.Write(t, map[string]string{"Dockerfile": "FROM x"})}, added: true, when: "on_success", rule: 0},
		{name: "exists deep glob", rules: "- exists: {paths: [\"**/go.mod\"]}", env: Env{Dir: treetest.Write(t, map[string]string{"a/b/go.mod": "module x"})}, added: true, when: "on_success", rule: 0},
		{name: "exists misses", rules: "- exists: [Dockerfile]", env: Env{Dir: treetest.Write(t, map[string]string{"x": ""})}, rule: -1},
		{name: "allow_failure", rules: "- allow_failure: true", added: true, when: "on_success", rule: 0, check: func(t *testing.T, j *Job) {
			if !j.AllowFailure {
				t.Error("allow_failure not applied")
			}
		}},
		{name: "rule variables override job variables", rules: "- variables: {MODE: rule, NEW: n}", job: "variables: {MODE: job}", added: true, when: "on_success", rule: 0, check: func(t *testing.T, j *Job) {
			if v, _ := j.Variables.Get("MODE"); v != "rule" {
				t.Errorf("MODE = %q", v)
			}
			if v, _ := j.Variables.Get("NEW"); v != "n" {
				t.Errorf("NEW = %q", v)
			}
		}},
		{name: "--var beats rule variables", rules: "- variables: {MODE: rule}", env: Env{Overrides: vars("MODE=cli")}, added: true, when: "on_success", rule: 0, check: func(t *testing.T, j *Job) {
			if v, _ := j.Variables.Get("MODE"); v != "cli" {
				t.Errorf("MODE = %q", v)
			}
		}},
		{name: "rule needs replace job needs", rules: "- needs: [b]", job: "needs: [a]", added: true, when: "on_success", rule: 0, check: func(t *testing.T, j *Job) {
			if !slices.Equal(j.Needs, []string{"b"}) {
				t.Errorf("needs = %v", j.Needs)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := ""
			if tt.job != "" {
				job = "  " + tt.job + "\n"
			}
			y := "a: {script: [a]}\nb: {script: [b]}\nj:\n  script: [j]\n" + job + "  rules:\n" + indent(tt.rules, "    ")
			ev := evaluate(t, y, tt.env)
			d := ev.Decision("j")
			j := ev.Pipeline.Job("j")
			if d.Added != tt.added || (j != nil) != tt.added || d.Rule != tt.rule {
				t.Fatalf("decision %+v, job %v; want added %v rule %d", d, j != nil, tt.added, tt.rule)
			}
			if j != nil && j.When != tt.when {
				t.Errorf("when = %q, want %q", j.When, tt.when)
			}
			if j != nil && tt.check != nil {
				tt.check(t, j)
			}
		})
	}
}

func indent(s, pre string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = pre + l
	}
	return strings.Join(lines, "\n") + "\n"
}

// TestWorkflowRules: the first matching workflow rule decides; its variables reach
// every job and workflow:name; no match or when: never creates no pipeline, saying
// which rule.
func TestWorkflowRules(t *testing.T) {
	const y = `workflow:
  name: "$KIND pipeline"
  rules:
    - if: $CI_PIPELINE_SOURCE == "schedule"
      when: never
    - if: $CI_COMMIT_TAG
      variables: {KIND: release}
    - if: $CI_COMMIT_BRANCH
variables: {KIND: dev}
j:
  script: [x]
  rules:
    - if: $KIND == "release"
`
	p := mustParse(t, y)
	tests := []struct {
		name     string
		env      Env
		noneWhy  string
		rule     int
		wfName   string
		jobAdded bool
	}{
		{"tag", Env{Predefined: vars("CI_PIPELINE_SOURCE=push", "CI_COMMIT_TAG=v1")}, "", 1, "release pipeline", true},
		{"branch", Env{Predefined: vars("CI_PIPELINE_SOURCE=push", "CI_COMMIT_BRANCH=x")}, "", 2, "dev pipeline", false},
		{"schedule", Env{Predefined: vars("CI_PIPELINE_SOURCE=schedule", "CI_COMMIT_BRANCH=x")}, `workflow:rules[0] (if: $CI_PIPELINE_SOURCE == "schedule") has when: never`, 0, "", false},
		{"detached, nothing matches", Env{Predefined: vars("CI_PIPELINE_SOURCE=push")}, "none of the 3 workflow rules matched", 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := p.Evaluate(tt.env)
			if tt.noneWhy != "" {
				var none *NoPipelineError
				if !asNoPipeline(err, &none) || none.Reason != tt.noneWhy {
					t.Fatalf("err = %v, want no pipeline: %s", err, tt.noneWhy)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ev.WorkflowRule != tt.rule || ev.Name != tt.wfName || (ev.Pipeline.Job("j") != nil) != tt.jobAdded {
				t.Errorf("rule %d name %q job added %v; want %d %q %v", ev.WorkflowRule, ev.Name, ev.Pipeline.Job("j") != nil, tt.rule, tt.wfName, tt.jobAdded)
			}
		})
	}
}

func asNoPipeline(err error, target **NoPipelineError) bool {
	n, ok := err.(*NoPipelineError)
	*target = n
	return ok
}

// TestOnlyExcept: refs (names, keywords, regexes), variables, changes and
// kubernetes, in the list and the mapping forms; only needs every condition, except
// excludes on any.
func TestOnlyExcept(t *testing.T) {
	branch := vars("CI_COMMIT_BRANCH=feature/x", "CI_COMMIT_REF_NAME=feature/x", "CI_PIPELINE_SOURCE=push")
	tag := vars("CI_COMMIT_TAG=v1.2", "CI_COMMIT_REF_NAME=v1.2", "CI_PIPELINE_SOURCE=push")
	tests := []struct {
		name   string
		filter string
		env    Env
		added  bool
	}{
		{"only branches on a branch", "only: [branches]", Env{Predefined: branch}, true},
		{"only branches on a tag", "only: [branches]", Env{Predefined: tag}, false},
		{"only tags on a tag", "only: [tags]", Env{Predefined: tag}, true},
		{"only a ref name", "only: [main, feature/x]", Env{Predefined: branch}, true},
		{"only a regex", "only: ['/^v\\d+\\.\\d+$/']", Env{Predefined: tag}, true},
		{"only a regex, case-insensitive", "only: ['/^FEATURE/i']", Env{Predefined: branch}, true},
		{"only a regex misses", "only: ['/^release/']", Env{Predefined: branch}, false},
		{"only a source keyword", "only: [schedules]", Env{Predefined: branch}, false},
		{"only pushes", "only: [pushes]", Env{Predefined: branch}, true},
		{"only merge_requests", "only: [merge_requests]", Env{Predefined: vars("CI_PIPELINE_SOURCE=merge_request_event")}, true},
		{"ref@project", "only: [feature/x@group/project]", Env{Predefined: branch}, true},
		{"except tags on a tag", "except: [tags]", Env{Predefined: tag}, false},
		{"except tags on a branch", "except: [tags]", Env{Predefined: branch}, true},
		{"only variables", "only:\n    variables: [$RELEASE == \"yes\", $FORCE]", Env{Predefined: branch, Overrides: vars("FORCE=1")}, true},
		{"only variables, none true", "only:\n    variables: [$RELEASE == \"yes\"]", Env{Predefined: branch}, false},
		{"only refs and variables: both needed", "only:\n    refs: [branches]\n    variables: [$RELEASE]", Env{Predefined: branch}, false},
		{"only changes", "only:\n    changes: [\"*.md\"]", Env{Predefined: branch, Changed: fixedChanges("README.md")}, true},
		{"only changes misses", "only:\n    changes: [\"*.md\"]", Env{Predefined: branch, Changed: fixedChanges("docs/a.md")}, false},
		{"except changes", "except:\n    changes: [\"*.md\"]", Env{Predefined: branch, Changed: fixedChanges("README.md")}, false},
		{"except: any condition excludes", "except:\n    refs: [main]\n    variables: [$SKIP]", Env{Predefined: branch, Overrides: vars("SKIP=1")}, false},
		{"only kubernetes never holds", "only:\n    kubernetes: active", Env{Predefined: branch}, false},
		{"only and except", "only: [branches]\n  except: ['/^feature\\//']", Env{Predefined: branch}, false},
		// A ref may end in @project/path, a /regex/flags ref too (GitLab's only:refs
		// "@project" suffix): GitLab splits it at its first @; the local run is taken as
		// that project, so only the pattern decides.
		{"regex@project matches", "only: ['/.*/@gitlab-org/gitlab-runner']", Env{Predefined: branch}, true},
		{"regex@project misses", "only: ['/^release/@gitlab-org/gitlab-runner']", Env{Predefined: branch}, false},
		{"regex with flags@project", "only: ['/^FEATURE/i@group/proj']", Env{Predefined: branch}, true},
		// The project's last path element is made of regex flag letters: still a project.
		{"regex@project ending in flag letters", "only: ['/^feature/@group/sUmi']", Env{Predefined: branch}, true},
		{"regex@project under refs", "only:\n    refs: ['/^v\\d/@group/proj']", Env{Predefined: tag}, true},
		{"except regex@project", "except: ['/^feature\\//@group/proj']", Env{Predefined: branch}, false},
		{"except regex@project misses", "except: ['/^v\\d/@group/proj']", Env{Predefined: branch}, true},
		{"branches@project", "only: [branches@group/proj]", Env{Predefined: branch}, true},
		{"tags@project on a branch", "only: [tags@group/proj]", Env{Predefined: branch}, false},
		{"regex without a project", "only: ['/^feature/']", Env{Predefined: branch}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := evaluate(t, "j:\n  script: [x]\n  "+tt.filter+"\n", tt.env)
			if d := ev.Decision("j"); d.Added != tt.added {
				t.Errorf("added = %v (%s), want %v", d.Added, d.Reason, tt.added)
			}
		})
	}
}

// TestRulesNeedsOfRemovedJob: a need of a job that rules left out is an error, as in
// GitLab, unless it is optional; then it is dropped.
func TestRulesNeedsOfRemovedJob(t *testing.T) {
	const y = "build:\n  script: [b]\n  rules:\n    - if: $BUILD\ntest:\n  script: [t]\n  needs: [%s]\n"
	_, err := mustParse(t, strings.Replace(y, "%s", "build", 1)).Evaluate(Env{})
	if err == nil || !strings.Contains(err.Error(), `job "test" needs "build", which is not added to the pipeline (none of its 1 rules matched)`) ||
		!strings.Contains(err.Error(), "optional: true") || !strings.Contains(err.Error(), ":7:") {
		t.Errorf("err = %v", err)
	}
	ev, err := mustParse(t, strings.Replace(y, "%s", "{job: build, optional: true}", 1)).Evaluate(Env{})
	if err != nil {
		t.Fatal(err)
	}
	if j := ev.Pipeline.Job("test"); j == nil || j.Needs == nil || len(j.Needs) != 0 {
		t.Errorf("test = %+v, want needs: [] (the optional need dropped)", j)
	}
	plan, err := ev.Pipeline.Plan()
	if err != nil || !slices.Equal(names(plan.Jobs), []string{"test"}) {
		t.Errorf("plan = %v, %v", plan, err)
	}
	// With the variable, build is added and test waits for it.
	ev, err = mustParse(t, strings.Replace(y, "%s", "{job: build, optional: true}", 1)).Evaluate(Env{Overrides: vars("BUILD=1")})
	if err != nil || !slices.Equal(ev.Pipeline.Job("test").Needs, []string{"build"}) {
		t.Errorf("needs = %v, %v", ev.Pipeline.Job("test").Needs, err)
	}
}

// TestRulesParseErrors: mistakes in rules, only and except name the file, line and key.
func TestRulesParseErrors(t *testing.T) {
	tests := []struct{ y, want string }{
		{"j:\n  script: [x]\n  rules:\n    - if: ${CI_COMMIT_BRANCH} == \"main\"\n", `.gitlab-ci.yml:4:11: j.rules[0].if: column 1 of the expression: ${…} is not part of GitLab's expression language (write $NAME instead of ${NAME})`},
		{"j:\n  script: [x]\n  rules:\n    - if: $A ==\n", `.gitlab-ci.yml:4:11: j.rules[0].if: invalid expression "$A ==": column`},
		{"j:\n  script: [x]\n  rules:\n    - when: sometimes\n", `.gitlab-ci.yml:4:13: j.rules[0].when: unknown when "sometimes"`},
		{"j:\n  script: [x]\n  rules:\n    - iff: $A\n", `j.rules[0].iff: unknown rules keyword "iff" (did you mean "if"?)`},
		{"j:\n  script: [x]\n  rules: [{if: $A}]\n  only: [main]\n", `j.rules: rules cannot be used with only or except`},
		{"j:\n  script: [x]\n  only: ['/[/']\n", `j.only: ref pattern /[/:`},
		{"j:\n  script: [x]\n  except: {refs: [main], branch: [x]}\n", `j.except.branch: unknown except keyword "branch"`},
		{"j:\n  script: [x]\n  rules: [{needs: [nope]}]\n", `j.rules[0].needs[0]: needs unknown job "nope"`},
		{"workflow:\n  rules: [{when: manual}]\nj: {script: [x]}\n", `workflow.rules[0].when: unknown when "manual" (workflow rules take always or never)`},
		{"workflow:\n  rulez: []\nj: {script: [x]}\n", `workflow.rulez: unknown workflow keyword "rulez"`},
		{"j:\n  script: [x]\n  rules: [{exists: {paths: [a], project: g/p}}]\n", `exists:project is not supported by runner exec`},
	}
	for _, tt := range tests {
		_, err := Parse(".gitlab-ci.yml", []byte(tt.y))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q:\n got %v\nwant %s", tt.y, err, tt.want)
		}
	}
}

// TestRulesFromReference: rules shared with !reference and nested lists are
// flattened, as GitLab does.
func TestRulesFromReference(t *testing.T) {
	ev := evaluate(t, ".common:\n  rules:\n    - if: $SKIP\n      when: never\nj:\n  script: [x]\n  rules:\n    - !reference [.common, rules]\n    - when: manual\n", Env{Overrides: vars("SKIP=1")})
	if d := ev.Decision("j"); d.Added || d.Rule != 0 || d.If != "$SKIP" {
		t.Errorf("decision = %+v", d)
	}
}

func TestGlobMatch(t *testing.T) {
	tests := []struct {
		glob, path string
		want       bool
	}{
		{"*.md", "README.md", true},
		{"*.md", "docs/a.md", false},
		{"docs/**/*.md", "docs/a.md", true},
		{"docs/**/*.md", "docs/x/y/a.md", true},
		{"**/*.go", "main.go", true},
		{"src/*", "src/.hidden", true},
		{"{a,b}/x", "b/x", true},
		{"{a,b}/x", "c/x", false},
		{"file?.txt", "file1.txt", true},
		{"file[0-9].txt", "file7.txt", true},
		{"file[!0-9].txt", "file7.txt", false},
		{"a+b(c).txt", "a+b(c).txt", true},
		{"src/**", "src/a/b.go", true},
		{"**/.env", ".env", true},
		{"src/[", "src/[", false}, // malformed: matches nothing
	}
	for _, tt := range tests {
		if got := globMatch(tt.glob, tt.path); got != tt.want {
			t.Errorf("%q ~ %q = %v, want %v", tt.glob, tt.path, got, tt.want)
		}
	}
}
