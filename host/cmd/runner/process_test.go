package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// These helpers run the built runner binary as a real process in its own process
// group, send it real signals and look for what it leaves behind: instance
// directories and processes.

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// runnerBinary builds this command once per test binary.
func runnerBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			built.err = err
			return
		}
		if built.dir, built.err = os.MkdirTemp("", "runner-test-bin-"); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "runner")
		if out, err := exec.Command(goBin, "build", "-o", built.path, ".").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatalf("building the runner: %v", built.err)
	}
	return built.path
}

// markEnv is the variable that marks every process of one test run: the runner, its
// plugin, the instance servers and the jobs inherit it.
const markEnv = "FLOTILLA_PROCESS_TEST"

// proc is the runner binary running in its own process group.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	out   string // file with stdout and stderr
	mark  string
	scope string // the test's temporary directory: what the run creates is under it
	done  chan struct{}
}

// startRunner starts bin with args in dir; env is added to the test's environment.
// stdout, if set, receives the standard output (else it goes to the output file).
func startRunner(t *testing.T, bin, dir string, env []string, stdout *os.File, args ...string) *proc {
	t.Helper()
	tmp := t.TempDir()
	p := &proc{t: t, out: filepath.Join(tmp, "output"), mark: fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano()),
		scope: filepath.Dir(tmp), done: make(chan struct{})}
	f, err := os.Create(p.out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	// The plugins' go-plugin sockets go into a directory of the test's own: a plugin
	// the test kills with SIGKILL cannot remove its socket. (A short path: a unix
	// socket's path may not exceed 107 bytes, and t.TempDir's names the test.)
	sockets, err := os.MkdirTemp("", "sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockets) })
	p.cmd.Env = append(append(os.Environ(), env...), markEnv+"="+p.mark, "PLUGIN_UNIX_SOCKET_DIR="+sockets)
	// Files, not pipes: a process left behind holding a pipe would keep Wait waiting.
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if stdout != nil {
		p.cmd.Stdout = stdout
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		// Whatever a failed test left running goes too.
		for _, pid := range p.marked() {
			syscall.Kill(pid, syscall.SIGCONT)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return p
}

// output is what the runner printed so far.
func (p *proc) output() string {
	b, _ := os.ReadFile(p.out)
	return string(b)
}

// signal sends sig to the runner, or to its whole process group as a terminal,
// timeout(1) or a service manager does.
func (p *proc) signal(sig syscall.Signal, group bool) {
	p.t.Helper()
	pid := p.cmd.Process.Pid
	if group {
		pid = -pid
	}
	if err := syscall.Kill(pid, sig); err != nil {
		p.t.Fatalf("kill(%d, %v): %v", pid, sig, err)
	}
}

// exitCode waits for the runner to end and returns its exit code; a death by signal
// fails the test, and so does a runner still running after within (a hang).
func (p *proc) exitCode(within time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		p.t.Fatalf("the runner did not exit within %s; output:\n%s", within, p.output())
	}
	st := p.cmd.ProcessState
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		p.t.Fatalf("the runner was killed by %v, with no cleanup; output:\n%s", ws.Signal(), p.output())
	}
	return st.ExitCode()
}

// marked lists the live processes of this run, except the runner itself: those that
// carry its mark in their environment (its plugin), or the test's directory on their
// command line or as their working directory (instance servers, which get a clean
// environment, and jobs).
func (p *proc) marked() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	want := []byte(markEnv + "=" + p.mark + "\x00")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == p.cmd.Process.Pid || pid == os.Getpid() {
			continue
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if !bytes.Contains(env, want) && !strings.Contains(cmdline(pid), p.scope) && !strings.HasPrefix(cwd, p.scope) {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 && bytes.HasPrefix(st[i+1:], []byte(" Z")) {
				continue // a zombie has ended
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
}

// assertNothingLeft fails the test if an instance directory is left under root or a
// process of the run outlives the runner (a process gets a moment to notice that its
// parent is gone).
func (p *proc) assertNothingLeft(root string) {
	p.t.Helper()
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		p.t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "local-") {
			p.t.Errorf("instance %s left in %s", e.Name(), root)
		}
	}
	var pids []int
	if !eventually.Poll(20*time.Second, func() bool { pids = p.marked(); return len(pids) == 0 }) {
		for _, pid := range pids {
			p.t.Errorf("process %d outlived the runner: %s", pid, cmdline(pid))
		}
	}
}

// waitFile waits until the file at path contains s.
func waitFile(t *testing.T, p *proc, path, s string, within time.Duration) {
	t.Helper()
	eventually.NoError(t, fmt.Sprintf("%s to show %q", path, s), within, func() error {
		b, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(b), s) {
			return nil
		}
		select {
		case <-p.done:
			t.Fatalf("the runner ended before %s showed %q:\n%s\noutput:\n%s", path, s, b, p.output())
		default:
		}
		return fmt.Errorf("%s:\n%s\noutput:\n%s", path, b, p.output())
	})
}

// markers: a job prints them with shell arithmetic, so that the log line echoing the
// command never matches.
const (
	jobStarted   = "job-2-started"
	afterStarted = "after-2-started"
	afterDone    = "after-2-done"
)

func echoMarker(m string) string {
	return "echo " + strings.Replace(m, "-2-", "-$((1+1))-", 1)
}
