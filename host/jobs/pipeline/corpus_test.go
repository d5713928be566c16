package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// update rewrites the corpus's golden plans: go test -run Corpus -update.
var update = flag.Bool("update", false, "rewrite the golden dry-run plans of testdata/corpus")

// corpusDir holds real public .gitlab-ci.yml files, copied verbatim; SOURCES.md says
// where each comes from, at which commit, under which licence, and what shape it has.
// A project whose file includes local files is a directory holding its .gitlab-ci.yml
// and those files at their paths in the project; a file alone is NN-name.yml.
const corpusDir = "testdata/corpus"

// corpusInclude is an include the corpus test expects to fail because runner exec
// cannot resolve it offline: it names the line of the included file's name and the
// start of the error message.
type corpusInclude struct {
	line int
	msg  string
}

func offlineTemplate(line int, name string) corpusInclude {
	return corpusInclude{line, fmt.Sprintf("include:template %q is a template of the GitLab server", name)}
}

func offlineComponent(line int, name string) corpusInclude {
	return corpusInclude{line, fmt.Sprintf("include:component %q is served by a GitLab instance", name)}
}

func offlineProject(line int, name string) corpusInclude {
	return corpusInclude{line, fmt.Sprintf("include:project %q: runner exec has no local checkout of that project", name)}
}

// corpusCases lists every pipeline of the corpus. One with no offline includes must
// load and plan; one with offline includes must fail with exactly those errors and
// no other. fragment marks a file meant only to be included (a workflow: or hidden
// jobs, no visible job): GitLab refuses it as a whole pipeline, and so must runner
// exec, with the "no jobs" error. fails marks a pipeline that runner exec refuses for
// want of a feature: it holds the first line of the error exactly (error.txt holds
// all of it), so that the test fails, and the mark is removed, when the feature lands
// or the message changes.
var corpusCases = []struct {
	file     string
	offline  []corpusInclude
	fragment bool
	fails    string
}{
	{file: "01-gitlabhq-gitlabhq-Go.yml"},
	{file: "02-gitlabhq-gitlabhq-Jobs-SAST.yml"},
	{file: "03-GNOME-gtk.yml"},
	{file: "04-gitlabhq-gitlab-shell.yml"},
	{file: "05-libvirt-libvirt.yml"},
	{file: "06-gitlabhq-gitlab-runner.yml", offline: []corpusInclude{
		offlineTemplate(2, "License-Management.gitlab-ci.yml"),
	}},
	{file: "07-gitlabhq-cli.yml", offline: []corpusInclude{
		offlineTemplate(90, "Jobs/SAST.gitlab-ci.yml"),
		offlineTemplate(91, "Jobs/Dependency-Scanning.gitlab-ci.yml"),
		offlineTemplate(92, "Jobs/Secret-Detection.gitlab-ci.yml"),
		offlineComponent(93, "${CI_SERVER_FQDN}/gitlab-org/components/danger-review/danger-review@2.1.0"),
		offlineComponent(94, "${CI_SERVER_FQDN}/components/code-intelligence/golang-code-intel@v0.4.1"),
		offlineProject(97, "gitlab-com/gl-security/security-operations/infrastructure-security-public/oidc-modules"),
	}},
	{file: "08-gitlabhq-gitlabhq-Workflows-MergeRequest-Pipelines.yml", fragment: true},
	{file: "09-gitlabhq-gitlabhq-Docker.yml"},
	{file: "10-gitlabhq-gitlabhq-Pages-Hugo.yml"},
	{file: "11-gitlabhq-gitlabhq-Python.yml"},
	{file: "12-gitlabhq-gitlabhq-Jobs-Code-Quality.yml"},
	{file: "13-gitlabhq-gitlabhq-Security-SAST.yml"},
	{file: "14-gitlabhq-gitlabhq-OpenTofu-latest.yml", offline: []corpusInclude{
		offlineTemplate(16, "OpenTofu/Base.latest.gitlab-ci.yml"),
	}},
	{file: "15-gitlabhq-gitlabhq-Terraform-Base-latest.yml", fragment: true},
	{file: "16-gitlabhq-gitlabhq-Jobs-Test.yml"},
	{file: "17-gitlabhq-gitlabhq-Kaniko.yml"},
	{file: "18-gitlabhq-gitlabhq-Android.yml"},
	{file: "19-gitlabhq-gitlabhq-Workflows-Branch-Pipelines.yml", fragment: true},
	{file: "20-gitlabhq-gitlabhq-Bash.yml"},
	{file: "21-gitlabhq-gitlabhq-Cpp.yml"},
	{file: "22-gitlabhq-gitlabhq-Pages-HTML.yml"},
	{file: "23-gitlabhq-gitlabhq-Jobs-Build.yml"},
	// A job named spec in a one-document file: a job, not a misplaced header.
	{file: "24-gitlabhq-gitlabhq-Crystal.yml"},
	{file: "25-gitlabhq-gitlabhq-Hello-World.yml"},
	// Seven local includes under .gitlab/, parallel: matrix, only/except variables.
	{file: "26-kicad"},
	{file: "27-GNOME-libadwaita.yml", offline: []corpusInclude{
		offlineProject(2, "gnome/citemplates"),
	}},
	// A multi-project trigger (trigger: project:).
	{file: "28-lanl-aea-spade.yml"},
	{file: "29-lanl-aea-waves.yml"},
	{file: "30-espressif-openocd-esp32.yml"},
	{file: "31-GNOME-pango.yml"},
	{file: "32-GNOME-gtksourceview.yml", offline: []corpusInclude{
		offlineProject(2, "gnome/citemplates"),
	}},
	{file: "33-GNOME-gitg.yml"},
	// Seven local includes; six trigger jobs whose child pipelines (trigger:
	// include: of three local files each, strategy: depend) include files in turn;
	// cross-project needs (needs:project, dropped with a warning) in the parent, and
	// needs:pipeline:job (the parent's artifacts) in the children.
	{file: "34-espressif-openocd-esp32"},
}

// offlineTransport fails every request: the corpus test must not use the network,
// and include:remote must then fail with an error that names the URL.
type offlineTransport struct{}

func (offlineTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("network disabled in the corpus test")
}

// corpusEntry is one pipeline of the corpus: the file to load, the project
// directory its include:local paths start from, and where its golden files live
// (prefix+"plan.json" or prefix+"error.txt").
type corpusEntry struct {
	file, dir, golden string
}

func newCorpusEntry(name string) corpusEntry {
	p := filepath.Join(corpusDir, name)
	if strings.HasSuffix(name, ".yml") {
		return corpusEntry{file: p, dir: corpusDir, golden: strings.TrimSuffix(p, ".yml") + "."}
	}
	return corpusEntry{file: filepath.Join(p, ".gitlab-ci.yml"), dir: p, golden: p + string(filepath.Separator)}
}

// corpusNames lists the corpus as it is on disk: NN-name.yml files and NN-name
// directories holding a .gitlab-ci.yml.
func corpusNames(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.yml"))
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := filepath.Glob(filepath.Join(corpusDir, "*", ".gitlab-ci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	for _, f := range dirs {
		names = append(names, filepath.Base(filepath.Dir(f)))
	}
	return names
}

// TestCorpus loads every real pipeline of the corpus as runner exec does, offline:
// each plans without error, or fails only on the includes that need the network,
// another project, a GitLab template or a CI/CD component, each named with its line.
func TestCorpus(t *testing.T) {
	var listed []string
	for _, c := range corpusCases {
		listed = append(listed, c.file)
	}
	names := corpusNames(t)
	for _, n := range names {
		if !slices.Contains(listed, n) {
			t.Errorf("%s is not in corpusCases: add it with the includes it cannot resolve offline", n)
		}
	}
	if len(names) < 34 {
		t.Errorf("the corpus holds %d pipelines, want at least 34", len(names))
	}

	for _, c := range corpusCases {
		t.Run(strings.TrimSuffix(c.file, ".yml"), func(t *testing.T) {
			e := newCorpusEntry(c.file)
			o := Options{Dir: e.dir, HTTPClient: &http.Client{Transport: offlineTransport{}}}
			p, err := LoadWith(context.Background(), e.file, o)
			if err == nil {
				_, err = p.Plan()
			}
			if c.fails != "" {
				switch {
				case err == nil:
					t.Errorf("loads and plans now: remove the fails mark and run go test -run Corpus -update")
				case strings.SplitN(err.Error(), "\n", 2)[0] != c.fails:
					t.Errorf("got the error\n%v\nwant\n%s", err, c.fails)
				}
				return
			}
			if c.fragment {
				var d Diagnostic
				if !errors.As(err, &d) || !strings.HasPrefix(d.Msg, "the pipeline has no jobs") || strings.Contains(err.Error(), "\n") {
					t.Fatalf("got %v, want only the error that the pipeline has no jobs", err)
				}
				return
			}
			if len(c.offline) == 0 {
				if err != nil {
					t.Fatalf("load and plan: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("loaded, want errors for the includes %v", c.offline)
			}
			checkOffline(t, filepath.Base(e.file), err, c.offline)
		})
	}
}

// corpusSHA is the commit every golden plan pretends to run on.
const corpusSHA = "0123456789abcdef0123456789abcdef01234567"

// corpusEnv is the run every golden plan shows: a branch pipeline of a push to main,
// the default branch, with fixed IDs and commit, in a project directory that holds
// only the files of existsDir (rules:exists looks there). No diff is known, so every
// changes: condition holds, as GitLab does when it has nothing to compare with.
func corpusEnv(project, existsDir string) Env {
	return Env{Dir: existsDir, Predefined: jobs.Variables{
		{Key: "CI", Value: "true"}, {Key: "GITLAB_CI", Value: "true"},
		{Key: "CI_PIPELINE_SOURCE", Value: "push"},
		{Key: "CI_PROJECT_DIR", Value: "/builds/corpus/" + project}, {Key: "CI_PROJECT_NAME", Value: project},
		{Key: "CI_PIPELINE_ID", Value: "1000"}, {Key: "CI_PIPELINE_IID", Value: "10"},
		{Key: "CI_DEFAULT_BRANCH", Value: "main"},
		{Key: "CI_COMMIT_SHA", Value: corpusSHA}, {Key: "CI_COMMIT_SHORT_SHA", Value: corpusSHA[:8]},
		{Key: "CI_COMMIT_MESSAGE", Value: "Update the pipeline\n"}, {Key: "CI_COMMIT_TITLE", Value: "Update the pipeline"},
		{Key: "CI_COMMIT_BRANCH", Value: "main"},
		{Key: "CI_COMMIT_REF_NAME", Value: "main"}, {Key: "CI_COMMIT_REF_SLUG", Value: "main"},
	}}
}

// corpusDryRun is what `runner exec --dry-run --json` prints for the entry under
// corpusEnv (the same NewDryRun or NoPipeline and the same encoding), or, when the
// pipeline is refused, the error it prints; ok is false for an error.
func corpusDryRun(t *testing.T, name string, e corpusEntry) (out []byte, ok bool) {
	t.Helper()
	o := Options{Dir: e.dir, HTTPClient: &http.Client{Transport: offlineTransport{}}}
	p, err := LoadWith(context.Background(), e.file, o)
	if err != nil {
		return []byte(err.Error() + "\n"), false
	}
	existsDir := e.dir
	if existsDir == corpusDir {
		// A file alone: the rest of its project is not in the corpus.
		existsDir = t.TempDir()
	}
	project := strings.TrimSuffix(name, ".yml")
	if i := strings.IndexByte(project, '-'); i >= 0 {
		project = project[i+1:]
	}
	env := corpusEnv(project, existsDir)
	var dr *DryRun
	ev, err := p.Evaluate(env)
	var none *NoPipelineError
	switch {
	case errors.As(err, &none):
		dr = NoPipeline(p, none, env.Predefined)
	case err != nil:
		return []byte(err.Error() + "\n"), false
	default:
		plan, err := ev.Pipeline.Plan()
		if err != nil {
			return []byte(err.Error() + "\n"), false
		}
		dr = NewDryRun(p, ev, plan, env.Predefined, nil)
		// The child pipelines of trigger jobs, as runner exec --dry-run shows them.
		dr.AddChildren(context.Background(), ev, ChildOptions{Load: o, Env: env})
	}
	dr.File = filepath.ToSlash(strings.TrimPrefix(e.file, corpusDir+string(filepath.Separator)))
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(dr); err != nil {
		t.Fatal(err)
	}
	// Child pipelines are named by their files' paths, which start with the project
	// directory in testdata: show them from the project's root, as runner exec does
	// when run there.
	return bytes.ReplaceAll(b.Bytes(), []byte(filepath.ToSlash(e.dir)+"/"), nil), true
}

// TestCorpusGolden compares each corpus pipeline's dry run with its golden plan
// (plan.json), or its refusal with its golden error (error.txt). CHECKED.md says
// what was checked by hand in each against GitLab's documentation. After a change
// of behaviour, regenerate with go test -run Corpus -update and review the diff.
func TestCorpusGolden(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range corpusCases {
		t.Run(strings.TrimSuffix(c.file, ".yml"), func(t *testing.T) {
			e := newCorpusEntry(c.file)
			got, ok := corpusDryRun(t, c.file, e)
			if bytes.Contains(got, []byte(wd)) {
				t.Errorf("the output names the machine path %s:\n%s", wd, got)
			}
			want, other := e.golden+"plan.json", e.golden+"error.txt"
			if !ok {
				want, other = other, want
			}
			if *update {
				if err := os.WriteFile(want, got, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Remove(other); err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Fatal(err)
				}
				return
			}
			if _, err := os.Stat(other); err == nil {
				t.Errorf("%s exists, but the pipeline now gives %s: run go test -run Corpus -update and review the diff", other, filepath.Base(want))
			}
			golden, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v: run go test -run Corpus -update and review the diff", err)
			}
			if !bytes.Equal(got, golden) {
				t.Errorf("%s differs from the dry run: run go test -run Corpus -update and review the diff; got:\n%s", want, got)
			}
		})
	}
}

// checkOffline asserts that err joins exactly one diagnostic per expected include,
// in the file itself, at the include's line.
func checkOffline(t *testing.T, file string, err error, want []corpusInclude) {
	t.Helper()
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	found := make([]bool, len(want))
	for _, e := range errs {
		var d Diagnostic
		if !errors.As(e, &d) {
			t.Errorf("not a Diagnostic: %v", e)
			continue
		}
		i := slices.IndexFunc(want, func(w corpusInclude) bool {
			return strings.HasPrefix(d.Msg, w.msg) && d.Line == w.line
		})
		if i < 0 || found[i] || filepath.Base(d.File) != file {
			t.Errorf("unexpected error: %v", e)
			continue
		}
		found[i] = true
	}
	for i, w := range want {
		if !found[i] {
			t.Errorf("no error at line %d: %s", w.line, w.msg)
		}
	}
}
