package instance

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// dial starts a real OpenSSH sshd and connects to it as the instance would be reached.
func dial(t *testing.T) *connector.Client {
	t.Helper()
	if ok, why := sshdtest.Available(); !ok {
		t.Skip(why)
	}
	srv := sshdtest.Start(t, sshdtest.Options{})
	c, err := connector.Dial(context.Background(), srv.ConnectInfo("i-test"), connector.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestLocalSourceJobOverSSH(t *testing.T) {
	conn := dial(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello.sh"), []byte("#!/bin/sh\necho \"hello $1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("hello.sh", filepath.Join(src, "link.sh")); err != nil {
		t.Fatal(err)
	}
	builds := t.TempDir()
	tests := []struct {
		name     string
		shell    string
		script   []string
		status   executors.Status
		exit     int
		wantLogs []string
	}{
		{"bash success", "bash", []string{"./link.sh world", "echo dir=$CI_PROJECT_DIR"}, executors.StatusSuccess, 0, []string{"hello world", "dir=" + filepath.Join(builds, "3")}},
		{"sh failure", "sh", []string{"./hello.sh x", "exit 7"}, executors.StatusFailed, 7, []string{"hello x", "exit code 7"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := &jobs.Job{ID: "1", Name: "t", Script: tt.script, Source: jobs.Source{Kind: jobs.SourceLocal, Dir: src}}
			env, err := New(conn, job, Options{Shell: tt.shell, BuildsDir: builds, Slot: 3})
			if err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			res := executors.Run(context.Background(), job, env, &log, executors.RunOptions{Executor: "instance"})
			if res.Status != tt.status || res.ExitCode != tt.exit {
				t.Fatalf("result %+v\n%s", res, log.String())
			}
			for _, w := range tt.wantLogs {
				if !strings.Contains(log.String(), w) {
					t.Errorf("log lacks %q:\n%s", w, log.String())
				}
			}
			if _, err := os.Stat(env.Paths().ProjectDir); !os.IsNotExist(err) {
				t.Errorf("project dir %s left behind after the job: %v", env.Paths().ProjectDir, err)
			}
		})
	}
}

func TestGitSourceJobOverSSH(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	conn := dial(t)
	repo := t.TempDir()
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"}, {"config", "user.email", "t@example.invalid"}, {"config", "user.name", "t"},
	} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	os.WriteFile(filepath.Join(repo, "VERSION"), []byte("1.2.3\n"), 0o644)
	for _, args := range [][]string{{"add", "."}, {"commit", "-q", "-m", "v"}} {
		if out, err := exec.Command("git", append([]string{"-C", repo}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	sha, _ := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	job := &jobs.Job{ID: "2", Name: "g", Script: []string{"cat VERSION", "git rev-parse HEAD"},
		Source: jobs.Source{Kind: jobs.SourceGit, RepoURL: "file://" + repo, Ref: "main", SHA: strings.TrimSpace(string(sha)), Depth: 1}}
	env, err := New(conn, job, Options{BuildsDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	res := executors.Run(context.Background(), job, env, &log, executors.RunOptions{Executor: "instance"})
	if res.Status != executors.StatusSuccess || !strings.Contains(log.String(), "1.2.3") || !strings.Contains(log.String(), strings.TrimSpace(string(sha))) {
		t.Fatalf("result %+v\n%s", res, log.String())
	}
}

func TestScriptFileShellsRejected(t *testing.T) {
	if _, err := New(nil, &jobs.Job{}, Options{Shell: "pwsh"}); err == nil || !strings.Contains(err.Error(), "script file") {
		t.Fatalf("New(pwsh) = %v", err)
	}
}

// TestDebugTrace: CI_DEBUG_TRACE=true runs the job script with `set -x` (and says that
// secrets may show); debug_trace_disabled turns that off.
func TestDebugTrace(t *testing.T) {
	conn := dial(t)
	for _, disabled := range []bool{false, true} {
		job := &jobs.Job{ID: "3", Name: "d", Script: []string{"X=$((40+2))", "echo x=$X"},
			Source:    jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()},
			Variables: jobs.Variables{{Key: "CI_DEBUG_TRACE", Value: "true"}}}
		env, err := New(conn, job, Options{Shell: "sh", BuildsDir: t.TempDir(), DebugTraceDisabled: disabled})
		if err != nil {
			t.Fatal(err)
		}
		var log bytes.Buffer
		if res := executors.Run(context.Background(), job, env, &log, executors.RunOptions{Executor: "instance"}); res.Status != executors.StatusSuccess {
			t.Fatalf("result %+v\n%s", res, log.String())
		}
		traced := strings.Contains(log.String(), "+ X=42") && strings.Contains(log.String(), "CI_DEBUG_TRACE is enabled")
		if traced == disabled || !strings.Contains(log.String(), "x=42") {
			t.Errorf("debug_trace_disabled=%v: traced %v:\n%s", disabled, traced, log.String())
		}
	}
}

// TestProjectName: Git checkouts live under the repository's path, which can never
// lead out of the slot's directory.
func TestProjectName(t *testing.T) {
	for url, want := range map[string]string{
		"https://gitlab.example/group/sub/project.git": "group/sub/project",
		"https://gitlab.example/../../etc/x.git":       "etc/x",
		"https://gitlab.example/a/%2e%2e/%2e%2e/b.git": "b",
		"https://gitlab.example/":                      "project",
		"file:///srv/repos/tool":                       "srv/repos/tool",
	} {
		if got := projectName(&jobs.Job{Source: jobs.Source{Kind: jobs.SourceGit, RepoURL: url}}); got != want {
			t.Errorf("projectName(%s) = %q, want %q", url, got, want)
		}
	}
}
