package executors

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// localEnv runs scripts with a real shell on this machine, in a temporary directory:
// the runtime's behaviour is then tested against real processes and exit codes.
type localEnv struct {
	dir        string
	shell      string
	prepareErr error
	execErr    error  // returned instead of running, as a lost connection would
	path       string // PATH of the environment's commands; "" = this machine's
	mu         sync.Mutex
	cleaned    int
	started    chan struct{}
}

func (e *localEnv) Prepare(context.Context, io.Writer) error { return e.prepareErr }

func (e *localEnv) Exec(ctx context.Context, s Script, out io.Writer) (int, error) {
	if e.execErr != nil {
		return -1, e.execErr
	}
	s.Shell = e.shell
	cmd := exec.CommandContext(ctx, e.shell, "-s")
	cmd.Env = e.environ()
	cmd.Stdin = strings.NewReader(s.String())
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return -1, err
	}
	if e.started != nil {
		close(e.started)
		e.started = nil
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, err
}

func (e *localEnv) Cleanup(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.cleaned++
	return nil
}

func (e *localEnv) Pack(ctx context.Context, spec PackSpec, archive, messages io.Writer) error {
	script, err := PackScript(e.dir, spec)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "sh", "-c", script)
	cmd.Env = e.environ()
	cmd.Stdout, cmd.Stderr = archive, messages
	return cmd.Run()
}

func (e *localEnv) Unpack(ctx context.Context, r io.Reader) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", UnpackScript(e.dir))
	cmd.Env = e.environ()
	cmd.Stdin = r
	return cmd.Run()
}

// environ is the environment's variables: this process's, with PATH replaced when set.
func (e *localEnv) environ() []string {
	if e.path == "" {
		return nil
	}
	return append(os.Environ(), "PATH="+e.path)
}

func (e *localEnv) Paths() Paths {
	return Paths{BuildsDir: e.dir, ProjectDir: e.dir, TmpDir: e.dir + "/tmp"}
}

func TestRun(t *testing.T) {
	tests := []struct {
		name       string
		job        jobs.Job
		prepareErr error
		execErr    error
		wantStatus Status
		wantReason FailureReason
		wantExit   int
		wantAllow  bool
		wantLog    []string
		notInLog   []string
	}{
		{name: "success", job: jobs.Job{Name: "ok", Script: []string{"echo hello from $CI_JOB_NAME"}},
			wantStatus: StatusSuccess, wantLog: []string{"$ echo hello from $CI_JOB_NAME", "hello from ok", "Job succeeded", "section_start:", "section_end:", " 00O "}},
		{name: "first failing command stops the script", job: jobs.Job{Script: []string{"false", "echo not reached"}},
			wantStatus: StatusFailed, wantReason: ScriptFailure, wantExit: 1, wantLog: []string{"Job failed: exit code 1"}, notInLog: []string{"not reached\n"}},
		{name: "before_script state carries into script", job: jobs.Job{Script: []string{"cd /", "export X=1", "test \"$PWD\" = / && test $X = 1"}},
			wantStatus: StatusSuccess},
		{name: "after_script always runs with the status", job: jobs.Job{Script: []string{"exit 3"}, AfterScript: []string{"echo after status=$CI_JOB_STATUS"}},
			wantStatus: StatusFailed, wantReason: ScriptFailure, wantExit: 3, wantLog: []string{"after status=failed"}},
		{name: "after_script failure does not fail the job", job: jobs.Job{Script: []string{"true"}, AfterScript: []string{"exit 9"}},
			wantStatus: StatusSuccess, wantLog: []string{"after_script failed with exit code 9"}},
		{name: "masked variable redacted", job: jobs.Job{Script: []string{"echo token=$TOKEN"}, Variables: jobs.Variables{{Key: "TOKEN", Value: "s3cr3t-v4lue", Masked: true}}},
			wantStatus: StatusSuccess, wantLog: []string{"token=[MASKED]"}, notInLog: []string{"s3cr3t-v4lue"}},
		{name: "file variable", job: jobs.Job{Script: []string{"cat \"$CFG\""}, Variables: jobs.Variables{{Key: "CFG", Value: "file-content", File: true}}},
			wantStatus: StatusSuccess, wantLog: []string{"file-content"}},
		{name: "timeout", job: jobs.Job{Script: []string{"sleep 30"}, Timeout: 300 * time.Millisecond, AfterScript: []string{"echo after-timeout"}},
			wantStatus: StatusFailed, wantReason: JobExecutionTimeout, wantExit: -1, wantLog: []string{"execution took longer than 300ms", "after-timeout"}},
		{name: "system failure", job: jobs.Job{Script: []string{"true"}}, execErr: errors.New("ssh tunnel: EOF"),
			wantStatus: StatusFailed, wantReason: RunnerSystemFailure, wantExit: -1, wantLog: []string{"Job failed (system failure): ssh tunnel: EOF"}},
		{name: "image pull failure", job: jobs.Job{Script: []string{"true"}}, prepareErr: errors.Join(ErrImagePull, errors.New("image x not allowed")),
			wantStatus: StatusFailed, wantReason: ImagePullFailure, wantExit: -1},
		{name: "allowed failure by exit code", job: jobs.Job{Script: []string{"exit 4"}, AllowFailure: true, AllowFailureExitCodes: []int{3, 4}},
			wantStatus: StatusFailed, wantReason: ScriptFailure, wantExit: 4, wantAllow: true, wantLog: []string{"allowed to fail"}},
		{name: "other exit code not allowed", job: jobs.Job{Script: []string{"exit 5"}, AllowFailure: true, AllowFailureExitCodes: []int{3, 4}},
			wantStatus: StatusFailed, wantReason: ScriptFailure, wantExit: 5},
	}
	for _, shell := range []string{ShellBash, ShellSh} {
		for _, tt := range tests {
			t.Run(shell+"/"+tt.name, func(t *testing.T) {
				env := localEnv{dir: t.TempDir(), shell: shell, prepareErr: tt.prepareErr, execErr: tt.execErr}
				var log bytes.Buffer
				res := Run(context.Background(), &tt.job, &env, &log, RunOptions{Executor: "test"})
				if res.Status != tt.wantStatus || res.FailureReason != tt.wantReason || res.ExitCode != tt.wantExit || res.AllowedFailure != tt.wantAllow {
					t.Errorf("result = %+v, want status %s reason %q exit %d allow %v\n%s", res, tt.wantStatus, tt.wantReason, tt.wantExit, tt.wantAllow, log.String())
				}
				for _, w := range tt.wantLog {
					if !strings.Contains(log.String(), w) {
						t.Errorf("log lacks %q:\n%s", w, log.String())
					}
				}
				for _, w := range tt.notInLog {
					if strings.Contains(log.String(), w) {
						t.Errorf("log contains %q:\n%s", w, log.String())
					}
				}
				if env.cleaned != 1 {
					t.Errorf("cleanup ran %d times, want 1", env.cleaned)
				}
			})
		}
	}
}

// TestRunReportsStages: OnStage hears each build stage as its log section starts, in
// order, so that gitlab_runner_jobs follows the job without reading its log.
func TestRunReportsStages(t *testing.T) {
	env := localEnv{dir: t.TempDir(), shell: ShellSh}
	var stages []string
	job := jobs.Job{Script: []string{"true"}, AfterScript: []string{"true"}}
	res := Run(context.Background(), &job, &env, io.Discard, RunOptions{OnStage: func(s string) { stages = append(stages, s) }})
	if res.Status != StatusSuccess {
		t.Fatalf("result %+v", res)
	}
	i := slices.Index(stages, "step_script")
	if i < 0 || !slices.Contains(stages[i+1:], "after_script") {
		t.Errorf("stages %v: want step_script, then after_script", stages)
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{})
	env := &localEnv{dir: t.TempDir(), shell: ShellSh, started: started}
	go func() { <-started; cancel() }()
	var log bytes.Buffer
	job := &jobs.Job{Script: []string{"sleep 30"}, AfterScript: []string{"echo after=$CI_JOB_STATUS"}}
	res := Run(ctx, job, env, &log, RunOptions{})
	if res.Status != StatusCanceled {
		t.Fatalf("status = %s, want canceled\n%s", res.Status, log.String())
	}
	if !strings.Contains(log.String(), "after=canceled") || env.cleaned != 1 {
		t.Errorf("after_script or cleanup missing after cancel (cleaned=%d):\n%s", env.cleaned, log.String())
	}
}

func TestValidShell(t *testing.T) {
	for shell, ok := range map[string]bool{"bash": true, "sh": true, "pwsh": false, "zsh": false} {
		if err := ValidShell(shell); (err == nil) != ok {
			t.Errorf("ValidShell(%q) = %v", shell, err)
		}
	}
	if err := ValidShell("pwsh"); !strings.Contains(err.Error(), "require a script file") {
		t.Errorf("pwsh error = %v", err)
	}
}

// TestFileVariablesArePrivate: a file variable is written readable by the job's user
// only, also over a file left from before, and the job's own umask is unchanged.
func TestFileVariablesArePrivate(t *testing.T) {
	for _, shell := range []string{ShellBash, ShellSh} {
		t.Run(shell, func(t *testing.T) {
			dir := t.TempDir()
			varDir := filepath.Join(dir, "tmp")
			if err := os.MkdirAll(varDir, 0o755); err != nil {
				t.Fatal(err)
			}
			// A file from an earlier job, world-readable.
			if err := os.WriteFile(filepath.Join(varDir, "OLD"), []byte("stale"), 0o644); err != nil {
				t.Fatal(err)
			}
			s := Script{Shell: shell, Dir: dir, FileVarDir: varDir, Commands: []string{"touch job-file"},
				Variables: jobs.Variables{{Key: "KEY", Value: "-----BEGIN KEY-----", File: true}, {Key: "OLD", Value: "fresh", File: true}}}
			cmd := exec.Command(shell, "-s")
			cmd.Stdin = strings.NewReader("umask 022\n" + s.String())
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for name, content := range map[string]string{"KEY": "-----BEGIN KEY-----", "OLD": "fresh"} {
				p := filepath.Join(varDir, name)
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %v, want 0600", name, fi.Mode().Perm())
				}
				if b, _ := os.ReadFile(p); string(b) != content {
					t.Errorf("%s = %q, want %q", name, b, content)
				}
			}
			if fi, err := os.Stat(filepath.Join(dir, "job-file")); err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("a file the job creates: %v, %v; the job's umask must stay 022", fi.Mode(), err)
			}
		})
	}
}
