package instance

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/internal/gittest"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// dial starts a real OpenSSH sshd and connects to it as the instance would be reached.
func dial(t testing.TB) *connector.Client {
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
			// The project directory stays for the slot's next job (GIT_STRATEGY none);
			// the temporary one goes.
			if _, err := os.Stat(env.Paths().ProjectDir); err != nil {
				t.Errorf("project dir %s gone after the job: %v", env.Paths().ProjectDir, err)
			}
			if _, err := os.Stat(env.Paths().TmpDir); !os.IsNotExist(err) {
				t.Errorf("temporary dir %s left behind after the job: %v", env.Paths().TmpDir, err)
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

// archiveStore keeps the archives the runtime collects, by artifact name.
type archiveStore map[string][]byte

func (s archiveStore) Store(_ context.Context, a jobs.Artifact, archive io.Reader, _ io.Writer) error {
	b, err := io.ReadAll(archive)
	s[a.Name] = b
	return err
}

// TestArtifactsOverSSH: artifacts are packed on the instance with exclude and
// untracked (git on the instance lists the untracked files of the copied working
// tree), and a later job gets them back as a dependency.
func TestArtifactsOverSSH(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	conn := dial(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "tracked.txt"), []byte("t\n"), 0o644)
	for _, args := range [][]string{{"init", "-q"}, {"add", "."}, {"-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-q", "-m", "x"}} {
		if out, err := exec.Command("git", append([]string{"-C", src}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	store := archiveStore{}
	run := func(job jobs.Job) string {
		job.Source = jobs.Source{Kind: jobs.SourceLocal, Dir: src}
		env, err := New(conn, &job, Options{Shell: "sh", BuildsDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		var log bytes.Buffer
		if res := executors.Run(context.Background(), &job, env, &log, executors.RunOptions{Artifacts: store}); res.Status != executors.StatusSuccess {
			t.Fatalf("job %s: %+v\n%s", job.ID, res, log.String())
		}
		return log.String()
	}
	log := run(jobs.Job{ID: "a1", Script: []string{"mkdir -p out/obj", "echo built > out/bin", "echo o > out/obj/x.o", "echo n > notes.txt"},
		Artifacts: []jobs.Artifact{{Name: "build", Paths: []string{"out/bin"}, Exclude: []string{"out/**/*.o"}, Untracked: true, When: "on_success"}}})
	if !strings.Contains(log, "out/**/*.o: 1 excluded") || store["build"] == nil {
		t.Fatalf("log:\n%s", log)
	}
	dep := jobs.Dependency{ID: "a1", Name: "build", Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(store["build"])), nil
	}}
	// A fresh copy of the tree: only the dependency brings out/ and notes.txt.
	run(jobs.Job{ID: "a2", Dependencies: []jobs.Dependency{dep},
		Script: []string{"cat out/bin notes.txt", "test ! -e out/obj/x.o"}})
}

// gitRepo makes a repository with the given commits (each a file name and content)
// and returns its path.
func gitRepo(t *testing.T, commits ...[2]string) string {
	t.Helper()
	repo := t.TempDir()
	gittest.Run(t, repo, "init", "-q", "-b", "main")
	for _, c := range commits {
		if err := os.WriteFile(filepath.Join(repo, c[0]), []byte(c[1]), 0o644); err != nil {
			t.Fatal(err)
		}
		gittest.Run(t, repo, "add", ".")
		gittest.Run(t, repo, "commit", "-q", "-m", c[0])
	}
	return repo
}

func runJob(t *testing.T, conn Conn, job *jobs.Job, opts Options) (executors.Result, string) {
	t.Helper()
	env, err := New(conn, job, opts)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	res := executors.Run(context.Background(), job, env, &log, executors.RunOptions{Executor: "instance"})
	return res, log.String()
}

// TestLocalSourceGitStrategy: a copied working tree honours GIT_STRATEGY none (the
// project directory as the previous job on the slot left it, empty on a fresh slot)
// and empty.
func TestLocalSourceGitStrategy(t *testing.T) {
	conn := dial(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "tracked.txt"), []byte("from the tree\n"), 0o644)
	builds := t.TempDir()
	steps := []struct {
		name     string
		slot     int
		strategy string
		script   []string
	}{
		{"copy, and leave a file", 1, "", []string{"cat tracked.txt", "echo left by job 1 > left.txt"}},
		{"none keeps what the previous job left", 1, "none", []string{"cat left.txt", "cat tracked.txt"}},
		{"empty empties", 1, "empty", []string{`test -z "$(ls -A)"`}},
		{"none on a fresh slot starts empty", 2, "none", []string{`test -z "$(ls -A)"`}},
	}
	for i, s := range steps {
		job := &jobs.Job{ID: strconv.Itoa(i), Name: "s", Script: s.script, Source: jobs.Source{Kind: jobs.SourceLocal, Dir: src}}
		if s.strategy != "" {
			job.Variables = jobs.Variables{{Key: "GIT_STRATEGY", Value: s.strategy}}
		}
		if res, log := runJob(t, conn, job, Options{BuildsDir: builds, Slot: s.slot}); res.Status != executors.StatusSuccess {
			t.Fatalf("%s: %+v\n%s", s.name, res, log)
		}
	}
}

// TestGetSourcesFailuresAreTheJobs: a bad Git variable and a commit that is not in the
// repository fail the job with script_failure, which is not retried on a new slot,
// with a message that says what is wrong.
func TestGetSourcesFailuresAreTheJobs(t *testing.T) {
	conn := dial(t)
	repo := gitRepo(t, [2]string{"VERSION", "1\n"})
	git := jobs.Source{Kind: jobs.SourceGit, RepoURL: "file://" + repo, Ref: "main", SHA: gittest.Run(t, repo, "rev-parse", "HEAD")}
	gone := git
	gone.Ref, gone.SHA = "gone", "0123456789012345678901234567890123456789"
	tests := []struct {
		name string
		src  jobs.Source
		vars jobs.Variables
		want []string
	}{
		{"bad strategy, copied tree", jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}, jobs.Variables{{Key: "GIT_STRATEGY", Value: "bogus"}},
			[]string{`GIT_STRATEGY="bogus"`, "clone, fetch, none or empty"}},
		{"bad depth, Git", git, jobs.Variables{{Key: "GIT_DEPTH", Value: "abc"}}, []string{`GIT_DEPTH="abc"`, "whole number"}},
		{"ref that is not there", gone, nil, []string{"couldn't find remote ref", "get sources"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := &jobs.Job{ID: "bad", Name: "b", Script: []string{"echo script ran"}, Source: tt.src, Variables: tt.vars}
			res, log := runJob(t, conn, job, Options{BuildsDir: t.TempDir()})
			if res.Status != executors.StatusFailed || res.FailureReason != executors.ScriptFailure || res.SystemFailure() {
				t.Fatalf("result %+v, want script_failure\n%s", res, log)
			}
			for _, w := range tt.want {
				if !strings.Contains(log, w) {
					t.Errorf("log lacks %q:\n%s", w, log)
				}
			}
			if strings.Contains(log, "script ran") || strings.Contains(log, "system failure") {
				t.Errorf("the script ran, or the failure is called a system one:\n%s", log)
			}
		})
	}
}

// TestShippedRepository: a repository on the runner host (`runner exec --git`) is
// shipped to the instance and fetched there, so the Git variables apply: a shallow
// clone of the commit, its submodule, and none of the working tree's uncommitted files.
// The source's URL leads nowhere on the instance: only the shipped copy can serve it.
func TestShippedRepository(t *testing.T) {
	conn := dial(t)
	sub := gitRepo(t, [2]string{"SUBFILE", "in the submodule\n"})
	repo := gitRepo(t, [2]string{"a.txt", "1\n"}, [2]string{"b.txt", "2\n"})
	gittest.Run(t, repo, "submodule", "add", "-q", sub, "sub")
	gittest.Run(t, repo, "commit", "-q", "-m", "sub")
	os.WriteFile(filepath.Join(repo, "dirty.txt"), []byte("not committed\n"), 0o644)
	sha := gittest.Run(t, repo, "rev-parse", "HEAD")
	job := &jobs.Job{ID: "ship", Name: "s", Source: jobs.Source{Kind: jobs.SourceGit, Dir: repo, RepoURL: "file:///nonexistent/elsewhere.git",
		HostGitDir: filepath.Join(repo, ".git"), Ref: "main", SHA: sha, Refspecs: []string{"+" + sha + ":refs/pipelines/7"}},
		Variables: jobs.Variables{{Key: "GIT_DEPTH", Value: "1"}, {Key: "GIT_SUBMODULE_STRATEGY", Value: "normal"},
			// Git refuses file:// submodules unless told otherwise.
			{Key: "GIT_CONFIG_COUNT", Value: "1"}, {Key: "GIT_CONFIG_KEY_0", Value: "protocol.file.allow"}, {Key: "GIT_CONFIG_VALUE_0", Value: "always"}},
		Script: []string{`echo "commits=$(git rev-list --count HEAD)"`, "cat sub/SUBFILE", "test ! -e dirty.txt", "git rev-parse HEAD"}}
	builds := t.TempDir()
	res, log := runJob(t, conn, job, Options{BuildsDir: builds, Slot: 1})
	if res.Status != executors.StatusSuccess {
		t.Fatalf("result %+v\n%s", res, log)
	}
	for _, w := range []string{"commits=1", "in the submodule", sha, "Shipping the Git repository"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	if _, err := os.Stat(filepath.Join(builds, "1", filepath.Base(repo), "sub", "SUBFILE")); err != nil {
		t.Errorf("checkout not in the project directory named after the working tree: %v", err)
	}
}
