package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
)

// TestRunSingle runs the built runner as `run-single` from GitLab's environment
// variables, without a config file: --max-builds 1 takes one job, runs it to success
// and exits 0 (the pool deleted); --wait-timeout ends a run that gets no job.
func TestRunSingle(t *testing.T) {
	if _, err := os.Stat(gitlabtest.GitHTTPBackend); err != nil {
		t.Skipf("git http-backend not available (%s): install Debian's git", gitlabtest.GitHTTPBackend)
	}
	bin := runnerBinary(t)
	srv := gitlabtest.New(t, gitlabtest.Options{LongPoll: 300 * time.Millisecond})
	srv.AddRunner("glrt-single")
	repo, sha := srv.AddRepo("group/single", map[string]string{"hello.txt": "hello\n"})
	id := srv.Enqueue(gitlabtest.JobPayload("job", repo, sha, []string{"cat hello.txt"}, nil))
	run := func(args ...string) (int, string) {
		cmd := exec.Command(bin, append([]string{"run-single"}, args...)...)
		cmd.Dir = t.TempDir()
		sockets, _ := os.MkdirTemp("", "sock")
		defer os.RemoveAll(sockets)
		cmd.Env = append(os.Environ(), "CI_SERVER_URL="+srv.URL, "CI_SERVER_TOKEN=glrt-single", "RUNNER_NAME=single",
			"XDG_STATE_HOME="+filepath.Join(cmd.Dir, "state"), "PLUGIN_UNIX_SOCKET_DIR="+sockets)
		done := make(chan struct{})
		var out []byte
		go func() { out, _ = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Minute):
			cmd.Process.Kill()
			<-done
			t.Fatalf("run-single %v did not exit:\n%s", args, out)
		}
		return cmd.ProcessState.ExitCode(), string(out)
	}
	code, out := run("--max-builds", "1")
	if code != 0 || !strings.Contains(out, "max-builds reached") {
		t.Fatalf("--max-builds 1: exit %d\n%s", code, out)
	}
	if j := srv.Job(id); j.State != gitlabtest.Success || !strings.Contains(string(j.Trace), "hello") {
		t.Errorf("job %s: %s", j.State, j.Trace)
	}
	code, out = run("--wait-timeout", "1")
	if code != 0 || !strings.Contains(out, "no job within --wait-timeout") {
		t.Fatalf("--wait-timeout 1: exit %d\n%s", code, out)
	}
}
