package runcmd

import (
	"bytes"
	"compress/gzip"
	"io"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
)

// TestDependenciesAndReports runs a build job whose archive (exclude honoured) and
// junit report are uploaded with their types and formats, then a job that lists build
// as a dependency and gets its files from GitLab with build's token, and one whose
// dependency has no archive on the server: it fails with missing_dependency_failure.
func TestDependenciesAndReports(t *testing.T) {
	e := start(t, 2, "")
	p := gitlabtest.JobPayload("build", e.repo, e.sha, []string{"mkdir -p out/obj", "echo built > out/bin", "echo o > out/obj/x.o",
		"echo '<testsuite/>' > junit.xml"}, nil)
	p.Artifacts = []gitlab.Artifact{
		{Name: "out", Paths: []string{"out/"}, Exclude: []string{"out/**/*.o"}, When: "on_success", ArtifactType: "archive", ArtifactFormat: "zip", ExpireIn: "1 week"},
		{Paths: []string{"junit.xml"}, When: "always", ArtifactType: "junit", ArtifactFormat: "gzip"},
	}
	build := e.wait(t, e.srv.Enqueue(p))
	if build.State != gitlabtest.Success || len(build.Uploads) != 2 {
		t.Fatalf("build: %s, %d uploads\n%s", build.State, len(build.Uploads), build.Trace)
	}
	if u := build.Uploads[0]; u.Type != "archive" || u.Format != "zip" || u.ExpireIn != "1 week" {
		t.Errorf("archive upload %+v", u)
	}
	junit := build.Uploads[1]
	zr, err := gzip.NewReader(bytes.NewReader(junit.Data))
	if err != nil || junit.Type != "junit" || junit.Format != "gzip" {
		t.Fatalf("junit upload %s/%s: %v", junit.Type, junit.Format, err)
	}
	content, _ := io.ReadAll(zr)
	if zr.Name != "junit.xml" || !strings.Contains(string(content), "<testsuite/>") {
		t.Errorf("junit gzip member %q: %q", zr.Name, content)
	}

	p = gitlabtest.JobPayload("test", e.repo, e.sha, []string{"cat out/bin", "test ! -e out/obj/x.o"}, nil)
	p.Dependencies = []gitlab.Dependency{e.srv.DependencyOn(build.Payload.ID)}
	if test := e.wait(t, e.srv.Enqueue(p)); test.State != gitlabtest.Success || !strings.Contains(string(test.Trace), "Downloading artifacts for build") ||
		!strings.Contains(string(test.Trace), "built") {
		t.Errorf("test: %s (%s)\n%s", test.State, test.FailureReason, test.Trace)
	}

	// A dependency GitLab lists with a file the server no longer has.
	gone := e.srv.DependencyOn(e.srv.Enqueue(gitlabtest.JobPayload("other", e.repo, e.sha, []string{"true"}, nil)))
	gone.ArtifactsFile = gitlab.ArtifactsFile{Filename: "artifacts.zip", Size: 10}
	p = gitlabtest.JobPayload("late", e.repo, e.sha, []string{"echo script ran"}, nil)
	p.Dependencies = []gitlab.Dependency{gone}
	late := e.wait(t, e.srv.Enqueue(p))
	if late.State != gitlabtest.Failed || late.FailureReason != "missing_dependency_failure" || strings.Contains(string(late.Trace), "script ran") {
		t.Errorf("late: %s (%s)\n%s", late.State, late.FailureReason, late.Trace)
	}
}
