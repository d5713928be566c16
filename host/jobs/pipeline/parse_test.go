package pipeline

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

const full = `
stages: [build, test, deploy]
variables:
  GLOBAL: "g"
  OVERRIDE: global
default:
  image: alpine:3
  before_script:
    - echo before
  timeout: 10m
.base:
  variables:
    FROM_BASE: "1"
    OVERRIDE: base
  after_script: [echo cleanup]
  tags: [linux]
build:
  stage: build
  extends: .base
  script:
    - make
    - [echo nested, echo flattened]
  artifacts:
    paths: [bin/]
test:
  stage: test
  image:
    name: golang:1.26
    entrypoint: [""]
  variables:
    OVERRIDE: job
  before_script: []
  script: go test ./...
  timeout: 1h 30m
  allow_failure:
    exit_codes: [3, 4]
lint:
  stage: test
  needs: []
  script: golint
  when: always
deploy:
  stage: deploy
  needs: [build]
  script: ./deploy
  when: manual
`

func TestParseFull(t *testing.T) {
	p, err := Parse(".gitlab-ci.yml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{".pre", "build", "test", "deploy", ".post"}; !slices.Equal(p.Stages, want) {
		t.Errorf("stages = %v, want %v", p.Stages, want)
	}
	build := p.Job("build")
	if want := []string{"echo before", "make", "echo nested", "echo flattened"}; !slices.Equal(build.Script, want) {
		t.Errorf("build script = %q, want %q", build.Script, want)
	}
	if v, _ := build.Variables.Get("OVERRIDE"); v != "base" {
		t.Errorf("build OVERRIDE = %q, want base (extends overrides global)", v)
	}
	if v, _ := build.Variables.Get("GLOBAL"); v != "g" {
		t.Errorf("build GLOBAL = %q", v)
	}
	if !slices.Equal(build.AfterScript, []string{"echo cleanup"}) || build.Image.Name != "alpine:3" || build.Timeout != 10*time.Minute {
		t.Errorf("build defaults not applied: after=%q image=%q timeout=%v", build.AfterScript, build.Image.Name, build.Timeout)
	}
	if len(build.Artifacts) != 1 || !slices.Equal(build.Artifacts[0].Paths, []string{"bin/"}) {
		t.Errorf("artifacts = %+v", build.Artifacts)
	}
	test := p.Job("test")
	if !slices.Equal(test.Script, []string{"go test ./..."}) {
		t.Errorf("test script = %q (before_script: [] must clear the default)", test.Script)
	}
	if test.Image.Name != "golang:1.26" || test.Timeout != 90*time.Minute || !test.AllowFailure || !slices.Equal(test.AllowFailureExitCodes, []int{3, 4}) {
		t.Errorf("test = %+v", test.Job)
	}
	if v, _ := test.Variables.Get("OVERRIDE"); v != "job" {
		t.Errorf("test OVERRIDE = %q", v)
	}
	if lint := p.Job("lint"); lint.Needs == nil || len(lint.Needs) != 0 || lint.When != WhenAlways {
		t.Errorf("lint needs=%#v when=%q", lint.Needs, lint.When)
	}
	if p.Job(".base") != nil {
		t.Error("hidden job became a job")
	}
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0].Error(), "build.tags") {
		t.Errorf("warnings = %v, want one for the inherited tags", p.Warnings)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings, each must appear in the error
	}{
		{"bad yaml", "build:\n  script: [a\n", []string{".gitlab-ci.yml:", "invalid YAML"}},
		{"no script", "build:\n  stage: build\n", []string{".gitlab-ci.yml:2:3: build: job \"build\" has no script"}},
		{"unknown keyword with hint", "build:\n  scrpit: make\n  script: make\n", []string{"2:3: build.scrpit: unknown job keyword \"scrpit\" (did you mean \"script\"?)"}},
		{"undeclared stage", "stages: [build]\nt:\n  stage: tset\n  script: x\n", []string{"3:10: t.stage: stage \"tset\" is not declared"}},
		{"unknown need", "a:\n  script: x\n  needs: [bb]\nb:\n  script: y\n", []string{"3:11: a.needs[0]: needs unknown job \"bb\" (did you mean \"b\"?)"}},
		{"extends cycle", ".a:\n  extends: .b\n.b:\n  extends: .a\nj:\n  extends: .a\n  script: x\n", []string{"extends cycle"}},
		{"extends unknown", "j:\n  extends: .tmpl\n  script: x\n", []string{"2:12", "extends unknown job \".tmpl\""}},
		{"include of a missing file", "include: other.yml\nj:\n  script: x\n", []string{`.gitlab-ci.yml:1:10: include: include:local "other.yml": no such file`}},
		{"bad timeout", "j:\n  timeout: 5 fortnights\n  script: x\n", []string{"2:12: j.timeout:", "unknown unit \"fortnights\""}},
		{"bad when", "j:\n  when: sometimes\n  script: x\n", []string{"j.when: unknown when \"sometimes\""}},
		{"script of mapping", "j:\n  script: {a: b}\n", []string{"2:11: j.script: expected a string or a list of strings, got a mapping"}},
		{"bad variable name", "variables:\n  1X: y\nj:\n  script: x\n", []string{"2:3: variables.1X: invalid variable name"}},
		{"not a job", "stagez: [a]\n", []string{"\"stagez\" is neither a keyword nor a job (did you mean \"stages\"?)"}},
		{"several problems at once", "a:\n  scirpt: x\nb:\n  when: later\n  script: y\n", []string{"a.scirpt", "b.when"}},
		{"empty", "", []string{"the file is empty"}},
		// Found by FuzzParse: a list as a key made a job with no name.
		{"list as a key", "[]:\n  script: x\n", []string{"1:1: a key must be a non-empty string, not a list (write a name"}},
		{"empty key", "j:\n  script: x\n\"\": {script: y}\n", []string{"3:1: a key must be a non-empty string, not an empty string"}},
		{"mapping as a variable name", "variables:\n  {a: b}: c\nj:\n  script: x\n", []string{"2:3: a key must be a non-empty string, not a mapping"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, tt.yaml, tt.want...)
		})
	}
}

func TestParseServices(t *testing.T) {
	p, err := Parse("ci.yml", []byte(`
default:
  services: [redis:7]
a:
  script: [x]
b:
  services:
    - postgres:15
    - name: team/api:2
      alias: api, backend
      entrypoint: [/bin/sh, -c]
      command: [serve --port 80]
  script: [y]
`))
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Job("a").Services; len(s) != 1 || s[0].Name != "redis:7" {
		t.Errorf("a.services = %+v, want the default", s)
	}
	s := p.Job("b").Services
	if len(s) != 2 || s[0].Name != "postgres:15" || s[1].Alias != "api, backend" ||
		!slices.Equal(s[1].Entrypoint, []string{"/bin/sh", "-c"}) || !slices.Equal(s[1].Command, []string{"serve --port 80"}) {
		t.Errorf("b.services = %+v", s)
	}
	if len(p.Warnings) != 0 {
		t.Errorf("warnings: %v", p.Warnings)
	}
}

// TestParseImageOptions: image: and services: pull_policy (a word or a list) and
// image:docker:user reach the job; a policy GitLab does not know is an error.
func TestParseImageOptions(t *testing.T) {
	p, err := Parse("ci.yml", []byte(`
a:
  image:
    name: alpine:3
    pull_policy: [if-not-present, always]
    docker: {user: "1000:1000"}
  services:
    - name: redis:7
      pull_policy: never
  script: [x]
`))
	if err != nil {
		t.Fatal(err)
	}
	img := p.Job("a").Image
	if !slices.Equal(img.PullPolicy, []string{"if-not-present", "always"}) || img.User != "1000:1000" {
		t.Errorf("image = %+v", img)
	}
	if s := p.Job("a").Services; len(s) != 1 || !slices.Equal(s[0].PullPolicy, []string{"never"}) {
		t.Errorf("services = %+v", s)
	}
	wantParseError(t, "a:\n  image: {name: x, pull_policy: sometimes}\n  script: [x]\n", `unknown pull policy "sometimes"`)
	wantParseError(t, "a:\n  image: {name: x, docker: {usr: x}}\n  script: [x]\n", `unknown image:docker keyword "usr"`)
}

func TestParseCache(t *testing.T) {
	p, err := Parse("ci.yml", []byte(`
default:
  cache: {key: common, paths: [.cache/]}
a:
  script: [x]
b:
  cache:
    - key: $CI_COMMIT_REF_SLUG
      paths: [node_modules/]
      policy: pull
    - paths: [dist/]
      when: always
  script: [y]
c:
  cache: {key: k, paths: [x], policy: sometimes}
  script: [z]
`))
	if err == nil || !strings.Contains(err.Error(), `c.cache.policy: unknown cache policy "sometimes"`) {
		t.Fatalf("err = %v", err)
	}
	p, err = Parse("ci.yml", []byte("default:\n  cache: {key: common, paths: [.cache/]}\na:\n  script: [x]\nb:\n  cache:\n    - key: $CI_COMMIT_REF_SLUG\n      paths: [node_modules/]\n      policy: pull\n    - paths: [dist/]\n      when: always\n  script: [y]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c := p.Job("a").Caches; len(c) != 1 || c[0].Key != "common" || !c[0].Pulls() || !c[0].Pushes(true) || c[0].Pushes(false) {
		t.Errorf("a.cache = %+v", c)
	}
	c := p.Job("b").Caches
	if len(c) != 2 || c[0].Key != "$CI_COMMIT_REF_SLUG" || c[0].Pushes(true) || c[1].Key != "default" || !c[1].Pushes(false) {
		t.Errorf("b.cache = %+v", c)
	}
}

func TestParseTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1h 30m", 90 * time.Minute, true}, {"90 minutes", 90 * time.Minute, true}, {"2 hours and 10 minutes", 130 * time.Minute, true},
		{"3600", time.Hour, true}, {"1h30m", 90 * time.Minute, true}, {"1 day", 24 * time.Hour, true},
		{"", 0, false}, {"0", 0, false}, {"ten minutes", 0, false}, {"5 parsecs", 0, false}, {"-1h", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseTimeout(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseTimeout(%q) = %v, %v; want %v ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestYAMLAnchorsAndMergeKeys(t *testing.T) {
	p, err := Parse("ci.yml", []byte(`
.common: &common
  before_script: [echo hi]
  variables: {A: "1"}
j:
  <<: *common
  variables: {B: "2"}
  script: [*x]
x: &x echo
`))
	if err == nil {
		// *x used before its anchor is a YAML error; the point is it must not panic.
		_ = p
	}
	p, err = Parse("ci.yml", []byte(".common: &common\n  before_script: [echo hi]\nj:\n  <<: *common\n  script: [echo run]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Job("j").Script; !slices.Equal(got, []string{"echo hi", "echo run"}) {
		t.Errorf("script = %q, merge key not applied", got)
	}
}

// FuzzParse feeds arbitrary bytes to the pipeline parser and plans what parses. It
// must never panic, overflow the stack or run away: the seeds include anchors, merge
// keys, aliases that contain themselves and alias bombs.
func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte("a:\n  script: x\n  needs: [a]\n"))
	f.Add([]byte(".a: &a\n  script: [x]\nb:\n  <<: *a\n  extends: .a\n"))
	f.Add([]byte(".a: &a\n  <<: *a\n  script: [x]\nj:\n  extends: .a\n"))
	f.Add([]byte("j:\n  script: &s [echo, *s]\n"))
	f.Add([]byte(".t: &t\n  variables:\n    V: {inner: *t}\nj:\n  script: [x]\n  <<: *t\n"))
	f.Add([]byte(".s: &s [a, b]\n.m: &m {script: *s}\nj:\n  <<: [*m, *m]\n  after_script: *s\n"))
	f.Add([]byte(bomb(9, 9, false)))
	f.Add([]byte(bomb(9, 9, true)))
	f.Add([]byte(bomb(2, 3, true)))
	f.Add([]byte("stages: [a, b]\nx:\n  stage: a\n  needs: [y]\n  script: [1]\ny:\n  stage: b\n  script: [2]\n"))
	f.Add([]byte(".t0: {script: [x]}\n.t1: {extends: [.t0, .t0]}\n.t2: {extends: [.t1, .t1]}\nj: {extends: [.t2, .t1], when: manual}\nk: {script: [y], needs: [j]}\n"))
	f.Add([]byte(".a: {s: [echo a]}\n.b: {s: [!reference [.a, s], echo b]}\nj:\n  script: !reference [.b, s]\n"))
	f.Add([]byte("spec:\n  inputs:\n    n: {type: array, default: [x, y]}\n---\nj-$[[ inputs.n ]]:\n  script: $[[ inputs.n ]]\n"))
	f.Add([]byte("include: [a.yml, 'https://example.com/x.yml', {template: T.yml}]\nj: {script: [x]}\n"))
	f.Add([]byte("workflow:\n  name: $N\n  rules:\n    - if: $A == \"x\" || $B =~ /y/i\n      variables: {N: n}\n    - when: always\nj:\n  script: [x]\n  rules:\n    - if: $N\n      when: manual\n      needs: [k]\n    - changes: {paths: [\"**/*.go\"], compare_to: main}\n    - exists: [\"{a,b}/[!x]*\"]\n      allow_failure: true\nk:\n  script: [y]\n  needs: [{job: j, optional: true}]\n"))
	f.Add([]byte("j:\n  script: [x]\n  only:\n    refs: [branches, '/^v[0-9]+/', main@g/p]\n    variables: [$A]\n    changes: [a]\n  except: [tags]\nk:\n  script: [y]\n  except: {kubernetes: active}\n"))
	f.Add([]byte(".r: {rules: [{if: $X, when: never}]}\nj:\n  script: [x]\n  rules: [!reference [.r, rules], {when: on_success}]\n"))
	// Includes find no files and no network.
	o := Options{Dir: f.TempDir(), HTTPClient: &http.Client{Transport: refuseTransport{}}}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParseWith(context.Background(), "fuzz.yml", data, o)
		if err != nil {
			if p != nil {
				t.Fatal("a pipeline and an error")
			}
			return
		}
		// Whatever parses must plan or fail cleanly, and every job must have a script.
		for _, j := range p.Jobs {
			if j.Name == "" || strings.HasPrefix(j.Name, ".") {
				t.Fatalf("bad job name %q", j.Name)
			}
		}
		// Rules evaluate or fail cleanly, with and without variables and a diff.
		for _, env := range []Env{{}, {Overrides: vars("A=x", "B=Y", "X=1"), Changed: fixedChanges("a", "c/d.go")}} {
			if ev, err := p.Evaluate(env); err == nil {
				_, _ = ev.Pipeline.Plan()
			}
		}
		plan, err := p.Plan()
		if err == nil {
			seen := map[string]bool{}
			for _, j := range plan.Jobs {
				for _, d := range plan.Deps[j.Name] {
					if !seen[d] {
						t.Fatalf("%s comes before %s, which it waits for", j.Name, d)
					}
				}
				seen[j.Name] = true
			}
		}
		if len(p.Jobs) > 0 {
			_, _ = p.Plan(p.Jobs[len(p.Jobs)-1].Name)
		}
		_, _ = p.Plan("no such job")
	})
}

// TestHiddenKeysHoldAnchors: a hidden key may hold any value, as in GitLab's examples
// of anchors for script lines; it is not a job.
func TestHiddenKeysHoldAnchors(t *testing.T) {
	p, err := Parse("ci.yml", []byte(".setup: &setup\n  - echo setup\n.image: &img alpine:3\nj:\n  image: *img\n  script:\n    - *setup\n    - echo run\n"))
	if err != nil {
		t.Fatal(err)
	}
	if j := p.Job("j"); !slices.Equal(j.Script, []string{"echo setup", "echo run"}) || j.Image.Name != "alpine:3" {
		t.Errorf("j = %q, %q", j.Script, j.Image.Name)
	}
	if len(p.Jobs) != 1 {
		t.Errorf("jobs = %v", names(p.Jobs))
	}
}

// wantParseError parses yaml as .gitlab-ci.yml and fails t unless it is refused with
// an error that contains every one of want.
func wantParseError(t *testing.T, yaml string, want ...string) {
	t.Helper()
	_, err := Parse(".gitlab-ci.yml", []byte(yaml))
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}
