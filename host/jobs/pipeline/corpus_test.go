package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// corpusDir holds real public .gitlab-ci.yml files, copied verbatim; SOURCES.md says
// where each comes from, at which commit, under which licence, and what shape it has.
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

// corpusCases lists every file of the corpus. A file with no offline includes must
// load and plan; one with offline includes must fail with exactly those errors and
// no other. fragment marks a file meant only to be included (a workflow: or hidden
// jobs, no visible job): GitLab refuses it as a whole pipeline, and so must runner
// exec, with the "no jobs" error. known marks a file that fails for another reason, a bug or a missing
// feature of the parser, so that the test stays green until it is fixed: the test
// then skips it and logs the error.
var corpusCases = []struct {
	file     string
	offline  []corpusInclude
	fragment bool
	known    string
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
}

// offlineTransport fails every request: the corpus test must not use the network,
// and include:remote must then fail with an error that names the URL.
type offlineTransport struct{}

func (offlineTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return nil, errors.New("network disabled in the corpus test")
}

// TestCorpus loads every real pipeline of the corpus as runner exec does, offline:
// each plans without error, or fails only on the includes that need the network,
// another project, a GitLab template or a CI/CD component, each named with its line.
func TestCorpus(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(corpusDir, "*.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, c := range corpusCases {
		listed = append(listed, c.file)
	}
	for _, f := range files {
		if !slices.Contains(listed, filepath.Base(f)) {
			t.Errorf("%s is not in corpusCases: add it with the includes it cannot resolve offline", f)
		}
	}
	if len(files) < 25 {
		t.Errorf("the corpus holds %d files, want at least 25", len(files))
	}

	for _, c := range corpusCases {
		t.Run(strings.TrimSuffix(c.file, ".yml"), func(t *testing.T) {
			path := filepath.Join(corpusDir, c.file)
			// A file's local includes live in a directory named after it, as its
			// project's root.
			dir := strings.TrimSuffix(path, ".yml")
			if _, err := os.Stat(dir); err != nil {
				dir = corpusDir
			}
			o := Options{Dir: dir, HTTPClient: &http.Client{Transport: offlineTransport{}}}
			p, err := LoadWith(context.Background(), path, o)
			if err == nil {
				_, err = p.Plan()
			}
			if c.known != "" {
				if err != nil {
					t.Skipf("%s\n%v", c.known, err)
				}
				t.Logf("%s: loads and plans now; remove the known mark", c.known)
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
			checkOffline(t, c.file, err, c.offline)
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
