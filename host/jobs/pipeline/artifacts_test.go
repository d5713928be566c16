package pipeline

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestArtifactsParsed: the archive and each report become one artifact each, with
// exclude, untracked, expire_in and the reports' when; default: artifacts apply.
func TestArtifactsParsed(t *testing.T) {
	p, err := Parse(".gitlab-ci.yml", []byte(`
default:
  artifacts: {paths: [d/]}
build:
  script: make
  artifacts:
    name: bin-$CI_JOB_NAME
    paths: [out/]
    exclude: ["out/**/*.o"]
    untracked: true
    when: always
    expire_in: 3 mos 2 days
    public: false
    access: developer
    expose_as: binaries
    reports:
      junit: [a.xml, b.xml]
      dotenv: build.env
      coverage_report: {coverage_format: cobertura, path: cov.xml}
      new_kind: x.json
other:
  script: make
`))
	if err != nil {
		t.Fatal(err)
	}
	a := p.Job("build").Artifacts
	if len(a) != 5 {
		t.Fatalf("artifacts %+v", a)
	}
	if a[0].Type != "archive" || a[0].Name != "bin-$CI_JOB_NAME" || !a[0].Untracked || a[0].When != "always" || a[0].ExpireIn != "3 mos 2 days" || !slices.Equal(a[0].Exclude, []string{"out/**/*.o"}) {
		t.Errorf("archive %+v", a[0])
	}
	if a[1].Type != "junit" || !slices.Equal(a[1].Paths, []string{"a.xml", "b.xml"}) || a[1].When != "always" || a[1].ExpireIn != "3 mos 2 days" {
		t.Errorf("junit %+v", a[1])
	}
	if a[3].Type != "coverage_report" || a[3].Format != "cobertura" || a[3].Paths[0] != "cov.xml" {
		t.Errorf("coverage %+v", a[3])
	}
	if d := p.Job("other").Artifacts; len(d) != 1 || d[0].Paths[0] != "d/" {
		t.Errorf("default artifacts %+v", d)
	}
	var warned bool
	for _, w := range p.Warnings {
		warned = warned || strings.Contains(w.Error(), `unknown report type "new_kind"`)
		if strings.Contains(w.Error(), "dependencies") {
			t.Errorf("warning about dependencies: %v", w)
		}
	}
	if !warned {
		t.Errorf("no warning for an unknown report type: %v", p.Warnings)
	}
}

// TestArtifactSources: which jobs' artifacts a job gets, as GitLab decides.
func TestArtifactSources(t *testing.T) {
	p, err := Parse(".gitlab-ci.yml", []byte(`
stages: [build, test, deploy]
a: {stage: build, script: x}
b: {stage: build, script: x}
m: {stage: build, script: x, parallel: 2}
t1: {stage: test, script: x}
t2: {stage: test, script: x, dependencies: [a, m]}
t3: {stage: test, script: x, dependencies: []}
t4: {stage: test, script: x, needs: [a, {job: b, artifacts: false}]}
t5: {stage: deploy, script: x, needs: [{job: m, artifacts: false}, a], dependencies: [a]}
`))
	if err != nil {
		t.Fatal(err)
	}
	pl, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]string{
		"t1": {"a", "b", "m 1/2", "m 2/2"},
		"t2": {"a", "m 1/2", "m 2/2"},
		"t3": {},
		"t4": {"a"},
		"t5": {"a"},
	} {
		if got := pl.ArtifactSources(p.Job(name)); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("%s gets the artifacts of %v, want %v", name, got, want)
		}
	}
}

// TestDependencyErrors: GitLab's checks of dependencies and artifacts, each at its
// file, line and key.
func TestDependencyErrors(t *testing.T) {
	const head = "stages: [build, test]\nb:\n  stage: build\n  script: x\n"
	for _, tt := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown", head + "t:\n  stage: test\n  script: x\n  dependencies: [bb]\n",
			[]string{`.gitlab-ci.yml:8:18: t.dependencies[0]: job "t" depends on the undefined job "bb"`, `did you mean "b"`}},
		{"same stage", head + "t:\n  stage: build\n  script: x\n  dependencies: [b]\n",
			[]string{`.gitlab-ci.yml:8:18: t.dependencies[0]`, "a dependency must be of an earlier stage", "move \"b\" to a stage before build"}},
		{"later stage", head + "t:\n  stage: build\n  script: x\n  dependencies: [u]\nu:\n  stage: test\n  script: x\n",
			[]string{`8:18: t.dependencies[0]`, `depends on "u" of stage test`}},
		{"not in needs", head + "c:\n  stage: build\n  script: x\nt:\n  stage: test\n  script: x\n  needs: [b]\n  dependencies: [c]\n",
			[]string{`12:18: t.dependencies[0]`, `the dependency "c" should be part of needs`}},
		{"bad expire_in", "j:\n  script: x\n  artifacts:\n    paths: [a]\n    expire_in: 3 fortnights\n",
			[]string{`5:16: j.artifacts.expire_in`, `unknown unit "fortnights"`}},
		{"bad exclude", "j:\n  script: x\n  artifacts:\n    paths: [a]\n    exclude: [\"out/[\"]\n",
			[]string{`5:14: j.artifacts.exclude[0]`, "malformed pattern"}},
		{"bad when", "j:\n  script: x\n  artifacts:\n    when: later\n    paths: [a]\n", []string{`4:11: j.artifacts.when: unknown artifacts when "later"`}},
		{"path out of the project", "j:\n  script: x\n  artifacts:\n    paths: [../x]\n", []string{`j.artifacts.paths[0]: artifact path "../x" leaves the project directory`}},
		{"unknown keyword", "j:\n  script: x\n  artifacts:\n    pathz: [a]\n", []string{`4:5: j.artifacts.pathz: unknown artifacts keyword "pathz"`, `did you mean "paths"`}},
	} {
		t.Run(tt.name, func(t *testing.T) { wantParseError(t, tt.yaml, tt.want...) })
	}
}

func TestParseExpireIn(t *testing.T) {
	for s, want := range map[string]time.Duration{
		"never": 0, "42": 42 * time.Second, "30 mins": 30 * time.Minute, "1 week": 7 * 24 * time.Hour,
		"3 weeks and 2 days": 23 * 24 * time.Hour, "6 mos 1 day": 181 * 24 * time.Hour, "1 yr": 365 * 24 * time.Hour,
		"2h20min": 140 * time.Minute, "1 Day": 24 * time.Hour,
	} {
		if got, err := ParseExpireIn(s); err != nil || got != want {
			t.Errorf("ParseExpireIn(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "soon", "0", "3 fortnights", "-1 day"} {
		if _, err := ParseExpireIn(bad); err == nil {
			t.Errorf("ParseExpireIn(%q) accepted", bad)
		}
	}
}

// TestDryRunShowsArtifacts: --dry-run shows each job's artifacts with expire_in, and
// its dependencies when written.
func TestDryRunShowsArtifacts(t *testing.T) {
	dr := dryRunOf(t, `
stages: [build, test]
build:
  stage: build
  script: x
  artifacts: {paths: [out/], exclude: ["out/*.o"], expire_in: 1 week, reports: {junit: r.xml}}
test:
  stage: test
  script: x
  dependencies: []
`)
	data, _ := json.Marshal(dr)
	for _, w := range []string{`"artifacts":[{"type":"archive","paths":["out/"],"exclude":["out/*.o"],"when":"on_success","expire_in":"1 week"},{"type":"junit","paths":["r.xml"],"when":"always","expire_in":"1 week"}]`,
		`"dependencies":[]`} {
		if !bytes.Contains(data, []byte(w)) {
			t.Errorf("JSON lacks %s:\n%s", w, data)
		}
	}
	var text bytes.Buffer
	dr.WriteText(&text)
	for _, w := range []string{"artifacts: archive out/ exclude out/*.o (when on_success, expire_in 1 week); junit r.xml", "artifacts: dependencies: []"} {
		if !strings.Contains(text.String(), w) {
			t.Errorf("text lacks %q:\n%s", w, text.String())
		}
	}
}
