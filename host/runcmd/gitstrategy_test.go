package runcmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/gittest"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
)

// startOneSlot is start with one instance of one slot and builds_dir in a temporary
// directory, so that consecutive jobs share a project directory the test can inspect.
func startOneSlot(t *testing.T) (*env, string) {
	t.Helper()
	builds := t.TempDir()
	e := startWith(t, func(url, root string) string {
		c := configText(url, root, 1, "  builds_dir = \""+builds+"\"\n"+
			"  pre_get_sources_script = \"echo pre-sources in $PWD; git --version >/dev/null\"\n"+
			"  pre_build_script = \"echo pre-build sees $FROM_RUNNER\"\n  post_build_script = \"echo post-build\"\n")
		c = strings.Replace(c, "capacity_per_instance = 2", "capacity_per_instance = 1", 1)
		return strings.Replace(c, "max_instances = 2", "max_instances = 1", 1)
	})
	// The project directory is named after the repository's path (/repos/group/project.git).
	return e, filepath.Join(builds, "0", "repos", "group", "project")
}

func (e *env) runOK(t *testing.T, name string, script []string, vars ...gitlab.JobVariable) string {
	t.Helper()
	j := e.wait(t, e.enqueue(name, script, nil, vars...))
	if j.State != gitlabtest.Success {
		t.Fatalf("job %s: state %s reason %q\n%s", name, j.State, j.FailureReason, j.Trace)
	}
	return string(j.Trace)
}

// indexLine is the index of s in log; an s starting with a newline must start a
// line's text, after the trace's timestamp and stream prefix ("… 00O text").
func indexLine(log, s string) int {
	if rest, ok := strings.CutPrefix(s, "\n"); ok {
		return strings.Index(log, " 00O "+rest)
	}
	return strings.Index(log, s)
}

func variable(k, v string) gitlab.JobVariable {
	return gitlab.JobVariable{Key: k, Value: v, Public: true}
}

// TestGitStrategies runs GitLab jobs on one instance slot with GIT_STRATEGY fetch (the
// second job reuses the first one's checkout), none (no Git at all: the project
// directory is used as the last job left it) and GIT_DEPTH 1 (a shallow checkout),
// each asserted from the job log and the project directory.
func TestGitStrategies(t *testing.T) {
	e, project := startOneSlot(t)

	// fetch: the first job starts a repository and marks it; the second finds the mark.
	fetch := variable("GIT_STRATEGY", "fetch")
	log := e.runOK(t, "fetch-1", []string{"cat hello.txt", "touch .git/flotilla-marker"}, fetch)
	if !strings.Contains(log, "Created fresh repository.") || !strings.Contains(log, "hello from the repository") {
		t.Fatalf("first fetch job log:\n%s", log)
	}
	// The config.toml scripts: pre_get_sources_script before Git in the project
	// directory, pre_build_script and post_build_script around the job's script, with
	// the job's variables (environment = … included).
	order := []string{"\npre-sources in " + project, "Created fresh repository.", "\npre-build sees yes", "\nhello from the repository", "\npost-build"}
	for i := 1; i < len(order); i++ {
		if a, b := indexLine(log, order[i-1]), indexLine(log, order[i]); a < 0 || b < 0 || a > b {
			t.Fatalf("log lacks %q before %q:\n%s", order[i-1], order[i], log)
		}
	}
	log = e.runOK(t, "fetch-2", []string{"test -f .git/flotilla-marker && echo found the marker"}, fetch)
	if !strings.Contains(log, "Reusing the existing Git repository in "+project) || !strings.Contains(log, "found the marker") {
		t.Fatalf("second fetch job did not reuse the checkout:\n%s", log)
	}

	// none: no request reaches the repository, and a file left in the project
	// directory is still there for the job and after it.
	if err := os.WriteFile(filepath.Join(project, "left-behind.txt"), []byte("from before\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gitRequests := e.srv.Requests("git")
	log = e.runOK(t, "none", []string{"cat left-behind.txt", "git status --porcelain"}, variable("GIT_STRATEGY", "none"))
	if !strings.Contains(log, "Skipping Git repository setup") || !strings.Contains(log, "from before") || strings.Contains(log, "Fetching changes") {
		t.Fatalf("GIT_STRATEGY none job log:\n%s", log)
	}
	if n := e.srv.Requests("git"); n != gitRequests {
		t.Errorf("GIT_STRATEGY none made %d requests to the repository", n-gitRequests)
	}
	if _, err := os.Stat(filepath.Join(project, "left-behind.txt")); err != nil {
		t.Errorf("GIT_STRATEGY none: the project directory was changed: %v", err)
	}

	// GIT_DEPTH 1 on a repository of two commits: one commit fetched.
	e.sha = e.srv.AddCommit("group/project", map[string]string{"hello.txt": "hello again\n"})
	log = e.runOK(t, "depth", []string{"echo commits=$(git rev-list --count HEAD)"},
		variable("GIT_STRATEGY", "clone"), variable("GIT_DEPTH", "1"))
	if !strings.Contains(log, "Fetching changes with git depth set to 1...") || !strings.Contains(log, "commits=1") {
		t.Fatalf("GIT_DEPTH 1 job log:\n%s", log)
	}
	if n := gittest.Run(t, project, "rev-list", "--count", "HEAD"); n != "1" {
		t.Errorf("git rev-list --count HEAD in the project directory = %s, want 1", n)
	}
	if head := gittest.Run(t, project, "rev-parse", "HEAD"); head != e.sha {
		t.Errorf("HEAD = %s, want %s", head, e.sha)
	}
	if strings.Contains(log, "glcbt-") || strings.Contains(gittest.Run(t, project, "config", "--list", "--local"), "gitlab-ci-token") {
		t.Errorf("the job token shows in the log or in .git/config:\n%s", log)
	}
}

// TestDockerAutoscalerGitStrategies: on docker-autoscaler the sources are fetched on
// the runner host, and the job's Git variables apply there too: GIT_DEPTH 1 gives a
// shallow checkout in the container, GIT_STRATEGY none and empty an empty project
// directory without a request to the repository.
func TestDockerAutoscalerGitStrategies(t *testing.T) {
	e := startDocker(t)
	e.sha = e.srv.AddCommit("group/project", map[string]string{"hello.txt": "hello again\n"})
	log := e.runOK(t, "depth", []string{"cat hello.txt", "test -f .git/shallow && echo shallow checkout"}, variable("GIT_DEPTH", "1"))
	if !strings.Contains(log, "hello again") || !strings.Contains(log, "shallow checkout") || !strings.Contains(log, "git depth set to 1") {
		t.Errorf("GIT_DEPTH 1 job log:\n%s", log)
	}
	for _, strategy := range []string{"none", "empty"} {
		gitRequests := e.srv.Requests("git")
		log := e.runOK(t, strategy, []string{`echo "entries: $(ls -A | wc -l)"`}, variable("GIT_STRATEGY", strategy))
		if !strings.Contains(log, "Skipping Git repository setup") || !strings.Contains(log, "entries: 0") {
			t.Errorf("GIT_STRATEGY %s job log:\n%s", strategy, log)
		}
		if n := e.srv.Requests("git"); n != gitRequests {
			t.Errorf("GIT_STRATEGY %s made %d requests to the repository", strategy, n-gitRequests)
		}
	}
}
