package pipelinerun

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// TestArtifactsBetweenJobs runs a build → test pipeline on real instances (sshd): the
// build's archive (exclude and untracked honoured) and reports are saved in the run's
// directory; a job of a later stage gets the archive and the dotenv variables; a job
// with dependencies: [] and one whose need says artifacts: false get nothing; an
// on_failure archive is saved only for the job that failed.
func TestArtifactsBetweenJobs(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	h := newHarness(t, nil)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "tracked.txt"), []byte("t\n"), 0o644)
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-q", "-m", "x"}} {
		if out, err := exec.Command("git", append([]string{"-C", src}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	pl := mustPlan(t, `
stages: [build, test]
build:
  stage: build
  script:
    - mkdir -p out/obj && echo built > out/bin && echo o > out/obj/a.o
    - echo '<testsuite name="t"/>' > junit.xml
    - echo VERSION=1.2.3 > build.env
    - echo scratch > scratch.txt
  artifacts:
    paths: [out/]
    exclude: ["out/**/*.o"]
    untracked: true
    expire_in: 1 week
    reports:
      junit: junit.xml
      dotenv: build.env
failing:
  stage: build
  allow_failure: true
  script: [echo f > f.txt, exit 1]
  artifacts: {when: on_failure, paths: [f.txt]}
passing:
  stage: build
  script: [echo p > p.txt]
  artifacts: {when: on_failure, paths: [p.txt]}
test:
  stage: test
  script: [cat out/bin scratch.txt f.txt, test ! -e out/obj/a.o, test ! -e p.txt, 'test "$VERSION" = 1.2.3']
none:
  stage: test
  dependencies: []
  script: [test ! -e out/bin, 'test -z "$VERSION"']
no-artifacts-need:
  stage: test
  needs: [{job: build, artifacts: false}]
  script: [test ! -e out/bin]
only-build:
  stage: test
  dependencies: [build]
  script: [cat out/bin, test ! -e f.txt]
`)
	for _, j := range pl.Jobs {
		j.Source = jobs.Source{Kind: jobs.SourceLocal, Dir: src}
	}
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]JobResult{}
	for _, j := range sum.Jobs {
		byName[j.Name] = j
	}
	var out bytes.Buffer
	PrintSummary(&out, sum)
	if !sum.Passed || byName["failing"].State != StateAllowed {
		t.Fatalf("pipeline:\n%s", out.String())
	}
	dir := filepath.Join(h.runner.LogDir, ArtifactsDir)
	if got := byName["build"].Artifacts; got != filepath.Join(dir, "build.tar.gz") {
		t.Errorf("build artifacts = %q", got)
	}
	if byName["failing"].Artifacts == "" || byName["passing"].Artifacts != "" {
		t.Errorf("on_failure artifacts: failing %q, passing %q", byName["failing"].Artifacts, byName["passing"].Artifacts)
	}
	junit, err := os.ReadFile(filepath.Join(dir, "build", "reports", "junit", "junit.xml"))
	if err != nil || !strings.Contains(string(junit), "testsuite") {
		t.Errorf("junit report: %v %q", err, junit)
	}
	for _, w := range []string{"Artifacts:", "build: report " + filepath.Join(dir, "build", "reports", "junit", "junit.xml")} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("summary lacks %q:\n%s", w, out.String())
		}
	}
	buildLog, _ := os.ReadFile(byName["build"].LogPath)
	testLog, _ := os.ReadFile(byName["test"].LogPath)
	for _, w := range []string{"out/**/*.o: 1 excluded", "Saved artifacts to " + filepath.Join(dir, "build.tar.gz"), "dotenv report: 1 variables"} {
		if !strings.Contains(string(buildLog), w) {
			t.Errorf("build log lacks %q:\n%s", w, buildLog)
		}
	}
	if !strings.Contains(string(testLog), "Downloading artifacts for build (1)...") {
		t.Errorf("test log:\n%s", testLog)
	}
}
