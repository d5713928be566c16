package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

const serviceToken = "glrt-signals-token"

// service is a `runner run` against a fake GitLab, on the built-in local plugin.
type service struct {
	*proc
	srv        *gitlabtest.Server
	root       string
	repo, sha  string
	configPath string
}

// startService runs bin as `runner run` with a config that deletes the instances on
// shutdown; global is added to the config's global settings.
func startService(t *testing.T, bin, global string) *service {
	t.Helper()
	if _, err := os.Stat(gitlabtest.GitHTTPBackend); err != nil {
		t.Skipf("git http-backend not available (%s): install Debian's git", gitlabtest.GitHTTPBackend)
	}
	s := &service{srv: gitlabtest.New(t, gitlabtest.Options{LongPoll: 300 * time.Millisecond}), root: filepath.Join(t.TempDir(), "instances")}
	s.srv.AddRunner(serviceToken)
	s.repo, s.sha = s.srv.AddRepo("group/project", map[string]string{"hello.txt": "hello\n"})
	dir := t.TempDir()
	s.configPath = filepath.Join(dir, "config.toml")
	cfg := fmt.Sprintf(`concurrent = 2
check_interval = 1
%s
[[runners]]
  name = "signals"
  url = %q
  token = %q
  executor = "instance"
  shell = "bash"
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 2
    max_instances = 1
    update_interval = "500ms"
    update_interval_when_expecting = "100ms"
    shutdown_deletion_interval = "200ms"
    delete_instances_on_shutdown = true
    [runners.autoscaler.plugin_config]
      root_dir = %q
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "5m"
`, global, s.srv.URL, serviceToken, s.root)
	if err := os.WriteFile(s.configPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.proc = startRunner(t, bin, dir, []string{"XDG_STATE_HOME=" + filepath.Join(dir, "state")}, nil, "run", "--config", s.configPath)
	return s
}

// enqueue queues a job running script, with after_script given an hour's timeout
// (so that only the runner can cut it short).
func (s *service) enqueue(script, after []string) int64 {
	p := gitlabtest.JobPayload("job", s.repo, s.sha, script, after)
	for i := range p.Steps {
		if p.Steps[i].Name == "after_script" {
			p.Steps[i].Timeout = 3600
		}
	}
	return s.srv.Enqueue(p)
}

// waitTrace waits until job id's log on the fake GitLab contains m.
func (s *service) waitTrace(t *testing.T, id int64, m string) {
	t.Helper()
	eventually.NoError(t, fmt.Sprintf("the job's log to show %q", m), 2*time.Minute, func() error {
		if strings.Contains(string(s.srv.Job(id).Trace), m) {
			return nil
		}
		select {
		case <-s.done:
			t.Fatalf("the runner ended before the job's log showed %q:\n%s\noutput:\n%s", m, s.srv.Job(id).Trace, s.output())
		default:
		}
		return fmt.Errorf("log:\n%s\noutput:\n%s", s.srv.Job(id).Trace, s.output())
	})
}

// TestRunStopSignals: `runner run` stopped by SIGTERM or SIGINT, to itself or to its
// process group, cancels the running job with its after_script, reports it to GitLab
// as a runner_system_failure, deletes the instance (delete_instances_on_shutdown),
// stops the plugin and exits 0. A second signal cuts the after_script short and still
// deletes the instance; before, the runner waited for the after_script.
func TestRunStopSignals(t *testing.T) {
	bin := runnerBinary(t)
	tests := []struct {
		name   string
		sig    syscall.Signal
		group  bool
		twice  bool   // a second signal once the after_script runs
		after  string // the after_script between the markers
		report bool   // the final state must reach GitLab
	}{
		{"SIGTERM", syscall.SIGTERM, false, false, "true", true},
		{"SIGTERM to the group", syscall.SIGTERM, true, false, "true", true},
		{"SIGINT to the group", syscall.SIGINT, true, false, "true", true},
		{"second SIGTERM", syscall.SIGTERM, true, true, "sleep 3600", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			skipIfIgnored(t, tt.sig)
			s := startService(t, bin, "")
			id := s.enqueue([]string{echoMarker(jobStarted), "sleep 600"}, []string{echoMarker(afterStarted), tt.after, echoMarker(afterDone)})
			s.waitTrace(t, id, jobStarted)
			s.signal(tt.sig, tt.group)
			if tt.twice {
				s.waitTrace(t, id, afterStarted)
				s.signal(tt.sig, tt.group)
			}
			if code := s.exitCode(time.Minute); code != 0 {
				t.Errorf("exit code %d, want 0; output:\n%s", code, s.output())
			}
			j := s.srv.Job(id)
			if tt.report && (j.State != gitlabtest.Failed || j.FailureReason != "runner_system_failure" || !strings.Contains(string(j.Trace), afterDone)) {
				t.Errorf("job: state %s, reason %q, want failed runner_system_failure with its after_script; log:\n%s", j.State, j.FailureReason, j.Trace)
			}
			if tt.twice && strings.Contains(string(j.Trace), afterDone) {
				t.Errorf("the after_script ran to its end after the second signal:\n%s", j.Trace)
			}
			s.assertNothingLeft(s.root)
		})
	}
}

// TestRunPoolNotStoppedCleanlyExits1: when the plugin is gone for good (killed, its
// binary removed, so it cannot be relaunched), `runner run` stopped by SIGTERM cannot
// delete its instance: it exits 1 and names the instance and the cause. Before, it
// logged a warning and exited 0.
func TestRunPoolNotStoppedCleanlyExits1(t *testing.T) {
	bin := copyBinary(t, runnerBinary(t))
	s := startService(t, bin, "")
	id := s.enqueue([]string{echoMarker(jobStarted), "sleep 600"}, nil)
	s.waitTrace(t, id, jobStarted)
	killPluginForGood(t, s.proc, bin)
	s.signal(syscall.SIGTERM, false)
	if code := s.exitCode(2 * time.Minute); code != 1 {
		t.Errorf("exit code %d, want 1; output:\n%s", code, s.output())
	}
	left := instances(t, s.root)
	if len(left) != 1 {
		t.Fatalf("instances in root_dir: %v, want the one the dead plugin could not delete", left)
	}
	out := s.output()
	if !strings.Contains(out, `runner: runner "signals": stopping its pool (instances left: `+left[0]+`)`) || !strings.Contains(out, "plugin") {
		t.Errorf("the final error does not name the instance left and the plugin:\n%s", out)
	}
}

// TestRunThirdSignalExitsAtOnce: with the plugin hung (stopped) while the runner
// stops its pool, a second SIGTERM does not help (the pool still waits for the plugin,
// up to shutdown_timeout), and a third exits at once with exit code 1. Before, the
// runner waited for shutdown_timeout and then exited 0.
func TestRunThirdSignalExitsAtOnce(t *testing.T) {
	bin := runnerBinary(t)
	s := startService(t, bin, "shutdown_timeout = 600\n")
	id := s.enqueue([]string{echoMarker(jobStarted), "sleep 600"}, nil)
	s.waitTrace(t, id, jobStarted)
	if err := syscall.Kill(pluginPID(t, s.proc), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	s.signal(syscall.SIGTERM, false)
	if j, ok := s.srv.Wait(id, 2*time.Minute); !ok || j.State != gitlabtest.Failed {
		t.Fatalf("job not reported failed after SIGTERM: %s\noutput:\n%s", j.State, s.output())
	}
	s.signal(syscall.SIGTERM, false)
	waitFile(t, s.proc, s.out, "SIGTERM again", time.Minute)
	s.signal(syscall.SIGTERM, false)
	if code := s.exitCode(time.Minute); code != 1 {
		t.Errorf("exit code %d, want 1; output:\n%s", code, s.output())
	}
	if out := s.output(); !strings.Contains(out, "runner: SIGTERM a third time: stopped at once") {
		t.Errorf("output does not say it stopped at once:\n%s", out)
	}
}

// copyBinary copies the runner binary to a directory of the test, so that the test
// may delete it.
func copyBinary(t *testing.T, bin string) string {
	t.Helper()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "runner")
	if err := os.WriteFile(cp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return cp
}

// killPluginForGood kills the runner's plugin with SIGKILL and removes the binary it
// was started from, so that no relaunch can bring it back.
func killPluginForGood(t *testing.T, p *proc, bin string) {
	t.Helper()
	plugin := pluginPID(t, p)
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(plugin, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// instances lists the instance directories under root.
func instances(t *testing.T, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "local-") {
			ids = append(ids, e.Name())
		}
	}
	return ids
}
