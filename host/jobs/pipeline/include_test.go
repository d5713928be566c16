package pipeline

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/internal/treetest"
)

func loadTree(t *testing.T, files map[string]string, o Options) (*Pipeline, error) {
	t.Helper()
	dir := treetest.Write(t, files)
	o.Dir = dir
	return LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"), o)
}

// TestIncludeLocal: the forms of include:local, wildcards, nesting, and GitLab's
// merge rules: included files in order, later ones winning, the including file last;
// mappings merged key by key, lists replaced.
func TestIncludeLocal(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		jobs  []string
		check func(t *testing.T, p *Pipeline)
	}{
		{"string shorthand", map[string]string{
			".gitlab-ci.yml": "include: ci/build.yml\n",
			"ci/build.yml":   "build:\n  script: [make]\n",
		}, []string{"build"}, nil},
		{"list of strings and mappings, leading slash", map[string]string{
			".gitlab-ci.yml": "include:\n  - ci/build.yml\n  - local: /ci/test.yml\ndeploy:\n  stage: deploy\n  script: [./deploy]\n",
			"ci/build.yml":   "build:\n  stage: build\n  script: [make]\n",
			"ci/test.yml":    "test:\n  script: [make test]\n",
		}, []string{"build", "test", "deploy"}, nil},
		{"single wildcard stays in the directory", map[string]string{
			".gitlab-ci.yml":      "include: 'ci/*.yml'\n",
			"ci/a.yml":            "a:\n  script: [a]\n",
			"ci/b.yml":            "b:\n  script: [b]\n",
			"ci/c.yaml":           "c:\n  script: [c]\n",
			"ci/sub/d.yml":        "d:\n  script: [d]\n",
			"other/ci/e.yml":      "e:\n  script: [e]\n",
			"ci/not-included.txt": "x",
		}, []string{"a", "b"}, nil},
		{"double wildcard crosses directories", map[string]string{
			".gitlab-ci.yml": "include:\n  - local: 'ci/**.yml'\n",
			"ci/a.yml":       "a:\n  script: [a]\n",
			"ci/sub/d.yml":   "d:\n  script: [d]\n",
			"ci/sub/x/e.yml": "e:\n  script: [e]\n",
		}, []string{"a", "d", "e"}, nil},
		{"**/ is any run of directories or none", map[string]string{
			".gitlab-ci.yml":    "include: 'libs/**/ci.yml'\n",
			"libs/ci.yml":       "root:\n  script: [r]\n",
			"libs/a/ci.yml":     "a:\n  script: [a]\n",
			"libs/b/c/ci.yml":   "c:\n  script: [c]\n",
			"libs/b/c/more.yml": "no:\n  script: [n]\n",
		}, []string{"a", "c", "root"}, nil},
		{"nested includes start at the project root", map[string]string{
			".gitlab-ci.yml":      "include: ci/all.yml\n",
			"ci/all.yml":          "include:\n  - ci/parts/build.yml\n",
			"ci/parts/build.yml":  "include: ci/parts/base.yml\nbuild:\n  extends: .base\n",
			"ci/parts/base.yml":   ".base:\n  script: [make]\n",
			"ci/parts/unused.yml": "unused:\n  script: [x]\n",
		}, []string{"build"}, nil},
		{"merge rules", map[string]string{
			".gitlab-ci.yml": `include: [a.yml, b.yml]
variables:
  FROM_MAIN: main
test:
  variables:
    LEVEL: main
`,
			"a.yml": `stages: [build, test]
variables: {FROM_A: a, SHARED: a}
test:
  stage: test
  image: alpine:3
  variables: {LEVEL: a, ONLY_A: a}
  script: [from a, a again]
`,
			"b.yml": `variables: {SHARED: b}
test:
  variables: {LEVEL: b}
  script: [from b]
`,
		}, []string{"test"}, func(t *testing.T, p *Pipeline) {
			j := p.Job("test")
			if !slices.Equal(j.Script, []string{"from b"}) {
				t.Errorf("script = %q, want b's list to replace a's", j.Script)
			}
			if j.Image.Name != "alpine:3" || j.Stage != "test" {
				t.Errorf("image %q stage %q: a's keys lost", j.Image.Name, j.Stage)
			}
			for k, want := range map[string]string{"FROM_MAIN": "main", "FROM_A": "a", "SHARED": "b", "LEVEL": "main", "ONLY_A": "a"} {
				if v, _ := j.Variables.Get(k); v != want {
					t.Errorf("%s = %q, want %q", k, v, want)
				}
			}
			if !slices.Equal(p.Stages, []string{".pre", "build", "test", ".post"}) {
				t.Errorf("stages = %v", p.Stages)
			}
		}},
		{"inputs of an included file", map[string]string{
			".gitlab-ci.yml": "include:\n  - local: templates/lint.yml\n    inputs:\n      tool: golangci-lint\n      args: [run, --fix]\n",
			"templates/lint.yml": "spec:\n  inputs:\n    tool:\n    args:\n      type: array\n---\n" +
				"lint-$[[ inputs.tool ]]:\n  script:\n    - $[[ inputs.tool ]] version\n    - $[[ inputs.args ]]\n",
		}, []string{"lint-golangci-lint"}, func(t *testing.T, p *Pipeline) {
			if got := p.Jobs[0].Script; !slices.Equal(got, []string{"golangci-lint version", "run", "--fix"}) {
				t.Errorf("script = %q", got)
			}
		}},
		{"!reference into an included file", map[string]string{
			".gitlab-ci.yml": "include: shared.yml\njob:\n  script:\n    - !reference [.shared, script]\n    - echo own\n",
			"shared.yml":     ".shared:\n  script: [echo shared]\n",
		}, []string{"job"}, func(t *testing.T, p *Pipeline) {
			if got := p.Jobs[0].Script; !slices.Equal(got, []string{"echo shared", "echo own"}) {
				t.Errorf("script = %q", got)
			}
		}},
		{"the same file twice is not a cycle", map[string]string{
			".gitlab-ci.yml": "include: [a.yml, b.yml]\n",
			"a.yml":          "include: common.yml\na:\n  extends: .c\n",
			"b.yml":          "include: common.yml\nb:\n  extends: .c\n",
			"common.yml":     ".c:\n  script: [x]\n",
		}, []string{"a", "b"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := loadTree(t, tt.files, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := names(p.Jobs); !slices.Equal(got, tt.jobs) {
				t.Errorf("jobs = %v, want %v", got, tt.jobs)
			}
			if tt.check != nil {
				tt.check(t, p)
			}
		})
	}
}

// TestIncludeErrors: what cannot be included is an error naming the including file
// and line, and what to do.
func TestIncludeErrors(t *testing.T) {
	chain := map[string]string{".gitlab-ci.yml": "include: f0.yml\n"}
	for i := 0; i <= MaxIncludeDepth; i++ {
		chain[fmt.Sprintf("f%d.yml", i)] = fmt.Sprintf("include: f%d.yml\n", i+1)
	}
	chain[fmt.Sprintf("f%d.yml", MaxIncludeDepth+1)] = "j:\n  script: [x]\n"
	many := map[string]string{"leaf.yml": ".x: 1\n"}
	var list strings.Builder
	list.WriteString("include:\n")
	for range MaxIncludes + 1 {
		list.WriteString("  - leaf.yml\n")
	}
	many[".gitlab-ci.yml"] = list.String() + "j:\n  script: [x]\n"

	tests := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{"missing file", map[string]string{".gitlab-ci.yml": "stages: [test]\ninclude:\n  - local: ci/missing.yml\n"},
			[]string{".gitlab-ci.yml:3:12: include[0].local: include:local \"ci/missing.yml\": no such file in"}},
		{"missing file of a nested include names the including file", map[string]string{".gitlab-ci.yml": "include: ci/a.yml\n", "ci/a.yml": "j:\n  script: [x]\ninclude:\n  - local: ci/b.yml\n"},
			[]string{filepath.Join("ci", "a.yml") + `:4:12: include[0].local: include:local "ci/b.yml": no such file`}},
		{"error inside an included file names it", map[string]string{".gitlab-ci.yml": "include: ci/a.yml\n", "ci/a.yml": "job:\n  scirpt: [x]\n"},
			[]string{filepath.Join("ci", "a.yml") + ":2:3: job.scirpt: unknown job keyword"}},
		{"invalid YAML in an included file", map[string]string{".gitlab-ci.yml": "include: a.yml\n", "a.yml": "job: [\n"},
			[]string{"a.yml:", "invalid YAML"}},
		{"cycle", map[string]string{".gitlab-ci.yml": "include: a.yml\n", "a.yml": "include: b.yml\n", "b.yml": "include: /a.yml\nj:\n  script: [x]\n"},
			[]string{"b.yml:1:10: include: include cycle: ", "a.yml -> ", "b.yml -> ", "a.yml (remove one of the includes"}},
		{"including itself", map[string]string{".gitlab-ci.yml": "include: .gitlab-ci.yml\nj:\n  script: [x]\n"},
			[]string{".gitlab-ci.yml:1:10: include: include cycle"}},
		{"too deep", chain, []string{"includes nest deeper than 100 levels"}},
		{"too many", many, []string{"more than 150 files are included in all"}},
		{"not YAML", map[string]string{".gitlab-ci.yml": "include: README.md\n", "README.md": "# hi\n"},
			[]string{"1:10: include: include:local \"README.md\" is not a YAML file"}},
		{"wildcard matching nothing", map[string]string{".gitlab-ci.yml": "include: 'ci/*.yml'\n"},
			[]string{"1:10: include: include:local \"ci/*.yml\" matches no file"}},
		{"template", map[string]string{".gitlab-ci.yml": "include:\n  - template: Jobs/SAST.gitlab-ci.yml\n"},
			[]string{"2:15: include[0].template: include:template \"Jobs/SAST.gitlab-ci.yml\" is a template of the GitLab server",
				"vendor it: copy lib/gitlab/ci/templates/Jobs/SAST.gitlab-ci.yml from the gitlab-org/gitlab repository"}},
		{"component", map[string]string{".gitlab-ci.yml": "include:\n  - component: $CI_SERVER_FQDN/my-org/security/secret-detection@1.0\n"},
			[]string{"2:16: include[0].component:", "vendor it: check out the component's project"}},
		{"project without a checkout", map[string]string{".gitlab-ci.yml": "include:\n  - project: my-group/ci-templates\n    file: /build.yml\n"},
			[]string{"2:14: include[0].project: include:project \"my-group/ci-templates\": runner exec has no local checkout",
				"pass --include-project my-group/ci-templates=PATH"}},
		{"two sources in one entry", map[string]string{".gitlab-ci.yml": "include:\n  - local: a.yml\n    remote: https://example.com/a.yml\n"},
			[]string{"2:5: include[0]: an include entry needs one source, this one has 2"}},
		{"unknown include keyword", map[string]string{".gitlab-ci.yml": "include:\n  - locl: a.yml\n"},
			[]string{"2:5: include[0].locl: unknown include keyword"}},
		{"inputs for a file without a header", map[string]string{".gitlab-ci.yml": "include:\n  - local: a.yml\n    inputs: {x: 1}\n", "a.yml": "j:\n  script: [x]\n"},
			[]string{".gitlab-ci.yml:3:17: inputs.x:", "has no spec: inputs header"}},
		{"required input of an included file", map[string]string{".gitlab-ci.yml": "include: a.yml\n", "a.yml": "spec:\n  inputs:\n    x:\n---\nj:\n  script:\n    - $[[ inputs.x ]]\n"},
			[]string{"a.yml:3:5: spec.inputs.x:", `requires input "x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadTree(t, tt.files, Options{})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestIncludeProject: include:project reads the file from the checkout given for
// the project: the working tree, or the ref through git; the included file's own
// local includes are of that project.
func TestIncludeProject(t *testing.T) {
	proj := treetest.Write(t, map[string]string{
		"templates/build.yml": "include: templates/base.yml\nbuild:\n  extends: .base\n  script: [make working-tree]\n",
		"templates/base.yml":  ".base:\n  stage: build\n",
	})
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", proj, "-c", "user.name=t", "-c", "user.email=t@example.com"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q")
	git("add", ".")
	git("commit", "-q", "-m", "v1")
	git("tag", "v1")
	if err := os.WriteFile(filepath.Join(proj, "templates", "build.yml"), []byte("include: templates/base.yml\nbuild:\n  extends: .base\n  script: [make v2]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ ref, want string }{{"", "make v2"}, {"\n    ref: v1", "make working-tree"}} {
		p, err := loadTree(t, map[string]string{".gitlab-ci.yml": "include:\n  - project: my-group/ci\n    file: [/templates/build.yml]" + tt.ref + "\n"},
			Options{Projects: map[string]string{"my-group/ci": proj}})
		if err != nil {
			t.Fatal(err)
		}
		if j := p.Job("build"); j == nil || !slices.Equal(j.Script, []string{tt.want}) || j.Stage != "build" {
			t.Errorf("ref %q: jobs = %+v", tt.ref, p.Jobs)
		}
	}
	_, err := loadTree(t, map[string]string{".gitlab-ci.yml": "include:\n  - project: my-group/ci\n    ref: v9\n    file: templates/build.yml\n"},
		Options{Projects: map[string]string{"my-group/ci": proj}})
	if err == nil || !strings.Contains(err.Error(), "4:11: include[0].file: include:project my-group/ci:templates/build.yml@v9: git show v9:templates/build.yml") {
		t.Errorf("missing ref: err = %v", err)
	}
}

// TestIncludeRemote: include:remote fetches over HTTP, also nested and in the
// shorthand form; a failed fetch names the URL, the status and the including line;
// a server that does not answer is given up after the client's timeout.
func TestIncludeRemote(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ci/build.yml":
			fmt.Fprintf(w, "include: %s/ci/base.yml\nbuild:\n  extends: .base\n", "http://"+r.Host)
		case "/ci/base.yml":
			fmt.Fprint(w, ".base:\n  script: [make remote]\n")
		case "/slow.yml":
			select {
			case <-r.Context().Done():
			case <-block:
			}
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	p, err := loadTree(t, map[string]string{".gitlab-ci.yml": "include:\n  - remote: " + srv.URL + "/ci/build.yml\n"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if j := p.Job("build"); j == nil || !slices.Equal(j.Script, []string{"make remote"}) {
		t.Fatalf("jobs = %+v", p.Jobs)
	}
	_, err = loadTree(t, map[string]string{".gitlab-ci.yml": "stages: [test]\ninclude: " + srv.URL + "/nope.yml\n"}, Options{})
	if err == nil || !strings.Contains(err.Error(), ".gitlab-ci.yml:2:10: include: include:remote: GET "+srv.URL+"/nope.yml: 404 Not Found") {
		t.Errorf("404: err = %v", err)
	}
	_, err = loadTree(t, map[string]string{".gitlab-ci.yml": "include:\n  - remote: " + srv.URL + "/slow.yml\n"},
		Options{HTTPClient: &http.Client{Timeout: 200 * time.Millisecond}})
	if err == nil || !strings.Contains(err.Error(), "2:13: include[0].remote: include:remote:") || !strings.Contains(err.Error(), "Timeout") {
		t.Errorf("timeout: err = %v", err)
	}
}

// FuzzInclude feeds arbitrary main and included files to the include resolver: it
// must never panic or run away, whatever includes, inputs and references they hold.
func FuzzInclude(f *testing.F) {
	f.Add([]byte("include: a.yml\nj:\n  script: [x]\n"), []byte(".t:\n  script: [y]\n"))
	f.Add([]byte("include: a.yml\n"), []byte("include: a.yml\n"))
	f.Add([]byte("include: [a.yml, a.yml, '*.yml', '**.yml']\n"), []byte("include: .gitlab-ci.yml\n"))
	f.Add([]byte("include:\n  - local: a.yml\n    inputs: {n: [1, 2], s: x}\nj:\n  script: !reference [k, script]\n"),
		[]byte("spec:\n  inputs:\n    n: {type: array}\n    s: {options: [x]}\n---\nk:\n  script: $[[ inputs.n ]]\n  variables: {V: $[[ inputs.s | truncate(0,1) ]]}\n"))
	f.Add([]byte(".a: &a {script: [!reference [.b, script]]}\n.b: {script: [!reference [.a, script]]}\nj: {<<: *a}\n"), []byte(""))
	f.Add([]byte("include: {project: g/p, file: a.yml}\n"), []byte("spec:\n---\nj: {script: [x]}\n"))
	f.Fuzz(func(t *testing.T, main, inc []byte) {
		dir := treetest.Write(t, map[string]string{".gitlab-ci.yml": string(main), "a.yml": string(inc)})
		p, err := LoadWith(context.Background(), filepath.Join(dir, ".gitlab-ci.yml"),
			Options{Dir: dir, Projects: map[string]string{"g/p": dir}, Inputs: map[string]string{"s": "x"},
				HTTPClient: &http.Client{Transport: refuseTransport{}}})
		if err != nil {
			if p != nil {
				t.Fatal("a pipeline and an error")
			}
			return
		}
		for _, j := range p.Jobs {
			if j.Name == "" || strings.HasPrefix(j.Name, ".") {
				t.Fatalf("bad job name %q", j.Name)
			}
		}
		_, _ = p.Plan()
	})
}

// refuseTransport keeps the fuzzer off the network.
type refuseTransport struct{}

func (refuseTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, fmt.Errorf("no network in tests")
}
