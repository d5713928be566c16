package execcmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/executors/dockertest"
	"github.com/flotilla-ci/flotilla/host/internal/gittest"
)

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readLog(t *testing.T, dir, job string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, job+".log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestExecCopiedTreeGitStrategy: without --git, GIT_STRATEGY none keeps what the
// previous job on the slot (the pool's only one) left, empty empties the project
// directory, and the Git variables a copy ignores are named in one warning for the run.
func TestExecCopiedTreeGitStrategy(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "tracked.txt"), "from the tree\n")
	writeFile(t, filepath.Join(dir, ".gitlab-ci.yml"), `
stages: [one, two, three]
write:
  stage: one
  variables: {GIT_DEPTH: "1"}
  script: [cat tracked.txt, echo left by write > left.txt]
keep:
  stage: two
  variables: {GIT_STRATEGY: none, GIT_SUBMODULE_STRATEGY: normal}
  script: [cat left.txt]
empty:
  stage: three
  variables: {GIT_STRATEGY: empty, GIT_DEPTH: "3"}
  script: ['test -z "$(ls -A)"']
`)
	logs := t.TempDir()
	code, out, errOut := run(t, dir, Options{MaxInstances: 1, Capacity: 1, LogDir: logs})
	if code != 0 {
		t.Fatalf("exit code %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(readLog(t, logs, "keep"), "left by write") {
		t.Errorf("keep did not see what write left:\n%s", readLog(t, logs, "keep"))
	}
	if n := strings.Count(errOut, "--git"); n != 1 || !strings.Contains(errOut, "GIT_DEPTH, GIT_SUBMODULE_STRATEGY set by write, keep, empty: ignored") {
		t.Errorf("want one warning naming GIT_DEPTH and GIT_SUBMODULE_STRATEGY, got %d:\n%s", n, errOut)
	}
}

// TestExecGit: with --git every job fetches HEAD's commit with Git from the local
// repository, so GIT_DEPTH and submodules apply and uncommitted files are not there
// (a warning says so); GIT_STRATEGY=bogus fails its job once, as its own failure.
func TestExecGit(t *testing.T) {
	sub := t.TempDir()
	gittest.Run(t, sub, "init", "-q", "-b", "main")
	writeFile(t, filepath.Join(sub, "SUBFILE"), "in the submodule\n")
	gittest.Run(t, sub, "add", ".")
	gittest.Run(t, sub, "commit", "-q", "-m", "sub")

	dir := t.TempDir()
	gittest.Run(t, dir, "init", "-q", "-b", "main")
	writeFile(t, filepath.Join(dir, "a.txt"), "1\n")
	gittest.Run(t, dir, "add", ".")
	gittest.Run(t, dir, "commit", "-q", "-m", "a")
	gittest.Run(t, dir, "submodule", "add", "-q", sub, "sub")
	writeFile(t, filepath.Join(dir, ".gitlab-ci.yml"), `
shallow:
  variables:
    GIT_DEPTH: "1"
    GIT_SUBMODULE_STRATEGY: normal
    # Git refuses file:// submodules unless told otherwise.
    GIT_CONFIG_COUNT: "1"
    GIT_CONFIG_KEY_0: protocol.file.allow
    GIT_CONFIG_VALUE_0: always
  script:
    - echo "commits=$(git rev-list --count HEAD)"
    - test ! -e dirty.txt
    - cat sub/SUBFILE
    - git rev-parse HEAD
`)
	gittest.Run(t, dir, "add", ".")
	gittest.Run(t, dir, "commit", "-q", "-m", "ci")
	sha := gittest.Run(t, dir, "rev-parse", "HEAD")
	writeFile(t, filepath.Join(dir, "dirty.txt"), "not committed\n")

	logs := t.TempDir()
	code, out, errOut := run(t, dir, Options{Git: true, LogDir: logs})
	if code != 0 {
		t.Fatalf("exit code %d\n%s\n%s\n%s", code, out, errOut, readLog(t, logs, "shallow"))
	}
	log := readLog(t, logs, "shallow")
	for _, w := range []string{"commits=1", "in the submodule", sha} {
		if !strings.Contains(log, w) {
			t.Errorf("job log lacks %q:\n%s", w, log)
		}
	}
	if !strings.Contains(errOut, "the working tree has uncommitted changes (1 paths): the jobs do not get them, they fetch commit "+sha[:8]) {
		t.Errorf("no dirty-tree warning:\n%s", errOut)
	}

	writeFile(t, filepath.Join(dir, ".gitlab-ci.yml"), "bad:\n  variables: {GIT_STRATEGY: bogus}\n  script: [echo never]\n")
	gittest.Run(t, dir, "commit", "-q", "-a", "-m", "bad")
	code, out, errOut = run(t, dir, Options{Git: true, LogDir: logs})
	log = readLog(t, logs, "bad")
	if code != ExitPipelineFailed || !strings.Contains(out, "script_failure") || !strings.Contains(log, `GIT_STRATEGY="bogus": want clone, fetch, none or empty`) {
		t.Fatalf("exit code %d, want 1 with script_failure naming GIT_STRATEGY\n%s\n%s\n%s", code, out, errOut, log)
	}
	if strings.Contains(log, "attempt 2") || strings.Contains(log, "never") {
		t.Errorf("the job was retried or its script ran:\n%s", log)
	}
}

// TestExecGitDockerAutoscaler: with --git, docker-autoscaler fetches HEAD's commit on
// this machine over file:// (the job image has no git) with the job's GIT_DEPTH.
func TestExecGitDockerAutoscaler(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.EnsureImage(t, cli)
	dir := t.TempDir()
	gittest.Run(t, dir, "init", "-q", "-b", "main")
	writeFile(t, filepath.Join(dir, "a.txt"), "first\n")
	gittest.Run(t, dir, "add", ".")
	gittest.Run(t, dir, "commit", "-q", "-m", "a")
	writeFile(t, filepath.Join(dir, "a.txt"), "committed\n")
	writeFile(t, filepath.Join(dir, ".gitlab-ci.yml"), `
shallow:
  variables: {GIT_DEPTH: "1"}
  script:
    - cat a.txt
    - test ! -e dirty.txt
    - cat .git/shallow
`)
	gittest.Run(t, dir, "add", ".")
	gittest.Run(t, dir, "commit", "-q", "-m", "ci")
	sha := gittest.Run(t, dir, "rev-parse", "HEAD")
	writeFile(t, filepath.Join(dir, "dirty.txt"), "not committed\n")
	logs := t.TempDir()
	code, out, errOut := run(t, dir, Options{Git: true, Executor: "docker-autoscaler", Image: dockertest.Image, LogDir: logs})
	log := readLog(t, logs, "shallow")
	if code != 0 || !strings.Contains(log, "committed") || !strings.Contains(log, sha) {
		t.Fatalf("exit code %d, want 0 with a shallow checkout of %s\n%s\n%s\n%s", code, sha, out, errOut, log)
	}
}
