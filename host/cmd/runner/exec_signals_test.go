package main

import (
	"bufio"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// execRun is one `runner exec` of a pipeline in a fresh project and state directory.
type execRun struct {
	*proc
	dir, state, logs string
}

// root is the built-in pool's plugin root_dir.
func (r execRun) root() string { return filepath.Join(r.state, "flotilla", "exec-instances") }

func (r execRun) log(job string) string { return filepath.Join(r.logs, job+".log") }

func writePipeline(t *testing.T, yaml string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startExec runs `runner exec` on yaml with its own state directory (or state, if
// set), logging to a directory of the test.
func startExec(t *testing.T, bin, yaml, state string, stdout *os.File, args ...string) execRun {
	t.Helper()
	r := execRun{dir: writePipeline(t, yaml), state: state, logs: t.TempDir()}
	if r.state == "" {
		r.state = t.TempDir()
	}
	r.proc = startRunner(t, bin, r.dir, []string{"XDG_STATE_HOME=" + r.state}, stdout,
		append([]string{"exec", "--log-dir", r.logs}, args...)...)
	return r
}

// longJob runs until it is stopped; its after_script runs afterScript between two
// markers.
func longJob(afterScript string) string {
	return `long:
  script:
    - ` + echoMarker(jobStarted) + `
    - sleep 600
  after_script:
    - ` + echoMarker(afterStarted) + `
    - ` + afterScript + `
    - ` + echoMarker(afterDone) + `
`
}

func skipIfIgnored(t *testing.T, sig syscall.Signal) {
	t.Helper()
	// A signal ignored by the test process is ignored by the runner it starts, and
	// the runner keeps SIGHUP and SIGINT ignored then (nohup, background jobs).
	if (sig == syscall.SIGINT || sig == syscall.SIGHUP) && signal.Ignored(sig) {
		t.Skipf("%v is ignored in this test process (started by nohup or as a background job)", sig)
	}
}

// TestExecStopSignals: SIGTERM, SIGINT and SIGHUP, to the runner or to its whole
// process group (timeout(1), a service manager, Ctrl-C, a closed terminal), cancel the
// running job with its after_script, delete the instance, stop the plugin and exit
// 128+N. Before the signal contract, SIGHUP killed the runner with no cleanup (exit
// 129, instance left) and a group signal killed the plugin before the host could
// delete anything.
func TestExecStopSignals(t *testing.T) {
	bin := runnerBinary(t)
	tests := []struct {
		name  string
		sig   syscall.Signal
		group bool
		code  int
	}{
		{"SIGTERM", syscall.SIGTERM, false, 143},
		{"SIGINT", syscall.SIGINT, false, 130},
		{"SIGHUP", syscall.SIGHUP, false, 129},
		{"SIGTERM to the group", syscall.SIGTERM, true, 143},
		{"SIGINT to the group", syscall.SIGINT, true, 130},
		{"SIGHUP to the group", syscall.SIGHUP, true, 129},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			skipIfIgnored(t, tt.sig)
			r := startExec(t, bin, longJob("true"), "", nil)
			waitFile(t, r.proc, r.log("long"), jobStarted, 2*time.Minute)
			r.signal(tt.sig, tt.group)
			if code := r.exitCode(2 * time.Minute); code != tt.code {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tt.code, r.output())
			}
			b, _ := os.ReadFile(r.log("long"))
			for _, want := range []string{afterStarted, afterDone, "Job canceled"} {
				if !strings.Contains(string(b), want) {
					t.Errorf("job log lacks %q:\n%s", want, b)
				}
			}
			r.assertNothingLeft(r.root())
		})
	}
}

// TestExecSecondSignalStopsWaitingForJobs: a second SIGTERM cuts the running job's
// after_script short, and the instance is still deleted. Before, the runner waited for
// the after_script (up to its 5-minute timeout).
func TestExecSecondSignalStopsWaitingForJobs(t *testing.T) {
	bin := runnerBinary(t)
	r := startExec(t, bin, longJob("sleep 600"), "", nil)
	waitFile(t, r.proc, r.log("long"), jobStarted, 2*time.Minute)
	r.signal(syscall.SIGTERM, true)
	waitFile(t, r.proc, r.log("long"), afterStarted, time.Minute)
	r.signal(syscall.SIGTERM, true)
	if code := r.exitCode(time.Minute); code != 143 {
		t.Errorf("exit code %d, want 143; output:\n%s", code, r.output())
	}
	if b, _ := os.ReadFile(r.log("long")); strings.Contains(string(b), afterDone) {
		t.Errorf("the after_script ran to its end:\n%s", b)
	}
	if out := r.output(); !strings.Contains(out, "not waiting for the jobs") {
		t.Errorf("output does not say the jobs are no longer waited for:\n%s", out)
	}
	r.assertNothingLeft(r.root())
}

// TestExecThirdSignalExitsAtOnce: with the plugin hung (stopped) while the runner
// deletes its instances, a third SIGTERM exits at once, and the next `runner exec` on
// the same pool deletes what was left. Before, the runner sat out its 2-minute
// deletion bound.
func TestExecThirdSignalExitsAtOnce(t *testing.T) {
	bin := runnerBinary(t)
	state := t.TempDir()
	r := startExec(t, bin, longJob("true"), state, nil)
	waitFile(t, r.proc, r.log("long"), jobStarted, 2*time.Minute)
	plugin := pluginPID(t, r.proc)
	if err := syscall.Kill(plugin, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	r.signal(syscall.SIGTERM, false)
	waitFile(t, r.proc, r.out, "Deleting the pool's instances", time.Minute)
	// One signal at a time: the kernel merges a signal sent while the same one is
	// still pending.
	r.signal(syscall.SIGTERM, false)
	waitFile(t, r.proc, r.out, "send it again to exit at once", time.Minute)
	r.signal(syscall.SIGTERM, false)
	if code := r.exitCode(time.Minute); code != 143 {
		t.Errorf("exit code %d, want 143; output:\n%s", code, r.output())
	}
	if out := r.output(); !strings.Contains(out, "exiting at once") {
		t.Errorf("output does not say it exits at once:\n%s", out)
	}
	syscall.Kill(plugin, syscall.SIGKILL)

	next := startExec(t, bin, "quick:\n  script: [echo quick]\n", state, nil)
	if code := next.exitCode(2 * time.Minute); code != 0 {
		t.Fatalf("next run: exit code %d; output:\n%s", code, next.output())
	}
	next.assertNothingLeft(next.root())
	r.assertNothingLeft(r.root()) // the first run's instance server too
}

// pluginPID finds the runner's plugin process.
func pluginPID(t *testing.T, p *proc) int {
	t.Helper()
	for _, pid := range p.marked() {
		if c := cmdline(pid); strings.Contains(c, "plugin-local") && !strings.Contains(c, "instance-serve") {
			return pid
		}
	}
	t.Fatalf("no plugin process; output:\n%s", p.output())
	return 0
}

// TestExecSIGQUITFinishesRunningJobs: SIGQUIT (Ctrl-\ in a terminal) lets the running
// job finish, starts no new one, deletes the instance, and exits 1 since the pipeline
// did not complete. Before, Go's default SIGQUIT handler dumped the goroutines and
// exited 2 with no cleanup.
func TestExecSIGQUITFinishesRunningJobs(t *testing.T) {
	bin := runnerBinary(t)
	r := startExec(t, bin, `first:
  script:
    - `+echoMarker(jobStarted)+`
    - sleep 8
    - echo first-$((1+1))-done
second:
  needs: [first]
  script: [echo second ran]
`, "", nil)
	waitFile(t, r.proc, r.log("first"), jobStarted, 2*time.Minute)
	r.signal(syscall.SIGQUIT, true)
	if code := r.exitCode(2 * time.Minute); code != 1 {
		t.Errorf("exit code %d, want 1; output:\n%s", code, r.output())
	}
	if b, _ := os.ReadFile(r.log("first")); !strings.Contains(string(b), "first-2-done") {
		t.Errorf("the running job did not finish:\n%s", b)
	}
	if _, err := os.Stat(r.log("second")); err == nil {
		t.Errorf("the second job started after SIGQUIT; output:\n%s", r.output())
	}
	if out := r.output(); !strings.Contains(out, "second canceled (not started)") {
		t.Errorf("the verdict does not say the second job was not started:\n%s", out)
	}
	r.assertNothingLeft(r.root())
}

// TestExecClosedStdout: `runner exec -F | head` — the reader goes away while the
// runner still writes the job's log. Before, the runner died of SIGPIPE at its next
// write and left its instance.
func TestExecClosedStdout(t *testing.T) {
	bin := runnerBinary(t)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r := startExec(t, bin, `ticks:
  script:
    - `+echoMarker(jobStarted)+`
    - for i in $(seq 20); do echo tick $i; sleep 0.1; done
`, "", pw, "--follow")
	pw.Close()
	sc := bufio.NewScanner(pr)
	for sc.Scan() && !strings.Contains(sc.Text(), jobStarted) {
	}
	pr.Close()
	if code := r.exitCode(2 * time.Minute); code != 0 {
		t.Errorf("exit code %d, want 0; output:\n%s", code, r.output())
	}
	r.assertNothingLeft(r.root())
}

// TestExecPluginLost: the plugin is killed for good (SIGKILL, and its binary removed
// so that it cannot be relaunched) while a job runs. The job that had started still
// passes on its instance, but the instance cannot be deleted: the run exits 1 and
// says which instance is left and why. A job that could then get no slot fails as a
// runner_system_failure, and the verdict names it with that reason. Before, a
// pipeline whose jobs had all passed exited 0 with a warning, and the verdict said
// only "Pipeline FAILED".
func TestExecPluginLost(t *testing.T) {
	bin := runnerBinary(t)
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"the started job passes", `a:
  script:
    - ` + echoMarker(jobStarted) + `
    - sleep 2
`, []string{"Pipeline PASSED", "could not be deleted"}},
		{"the next job gets no slot", `a:
  script:
    - ` + echoMarker(jobStarted) + `
    - sleep 2
b:
  needs: [a]
  script: [echo b]
`, []string{"--- b failed: runner_system_failure: unable to acquire instance", "Pipeline FAILED", "b failed (runner_system_failure)", "could not be deleted"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := copyBinary(t, bin)
			root := filepath.Join(t.TempDir(), "instances")
			cfg := filepath.Join(t.TempDir(), "config.toml")
			os.WriteFile(cfg, []byte(`concurrent = 1
[[runners]]
  name = "lost"
  executor = "instance"
  shell = "bash"
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 1
    max_instances = 1
    instance_acquire_timeout = "2s"
    update_interval = "500ms"
    update_interval_when_expecting = "100ms"
    shutdown_deletion_interval = "200ms"
    shutdown_deletion_retries = 2
    [runners.autoscaler.plugin_config]
      root_dir = "`+root+`"
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "5m"
`), 0o600)
			r := startExec(t, cp, tt.yaml, "", nil, "--config", cfg)
			waitFile(t, r.proc, r.log("a"), jobStarted, 2*time.Minute)
			killPluginForGood(t, r.proc, cp)
			if code := r.exitCode(3 * time.Minute); code != 1 {
				t.Errorf("exit code %d, want 1; output:\n%s", code, r.output())
			}
			out := r.output()
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			left := instances(t, root)
			if len(left) != 1 || !strings.Contains(out, left[0]+": ") {
				t.Errorf("instances left %v; the output must name the one left:\n%s", left, out)
			}
		})
	}
}

// TestLocalDemoSignals: `runner local demo` stopped by SIGHUP or SIGQUIT still deletes
// its instances and exits 128+N; before, either signal killed it at once, leaving
// the instance and its server behind.
func TestLocalDemoSignals(t *testing.T) {
	bin := runnerBinary(t)
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGTERM} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			skipIfIgnored(t, sig)
			root := filepath.Join(t.TempDir(), "root")
			p := startRunner(t, bin, t.TempDir(), nil, nil, "local", "demo", "-n", "1", "--command", "sleep 600", "--root-dir", root)
			waitFile(t, p, p.out, "instances running", 2*time.Minute)
			p.signal(sig, true)
			if code := p.exitCode(2 * time.Minute); code != 128+int(sig) {
				t.Errorf("exit code %d, want %d; output:\n%s", code, 128+int(sig), p.output())
			}
			p.assertNothingLeft(root)
		})
	}
}
