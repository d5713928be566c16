package local

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// This file checks the promise that deleting an instance ends every process started
// for it, and that a crash at any point never leaves a second server behind. It looks
// at /proc, not at the plugin's files: a leak is a process, whatever any file says.

// serversOf lists the live instance-serve processes of dir.
func serversOf(dir string) []int {
	var out []int
	for _, pid := range procPIDs() {
		if info, ok := readProc(pid); ok && info.isServer(dir) {
			out = append(out, pid)
		}
	}
	return out
}

// marked lists the live processes whose environment holds FLOTILLA_TEST_MARK=mark:
// every process a test job started, however it detached, unless it cleared its
// environment.
func marked(mark string) []int {
	want := []byte("FLOTILLA_TEST_MARK=" + mark + "\x00")
	var out []int
	for _, pid := range procPIDs() {
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if err != nil || !bytes.Contains(env, want) {
			continue
		}
		if info, ok := readProc(pid); ok && info.state != 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// waitCount polls list until it returns want processes; it fails the test, naming
// what, if that does not happen within a generous deadline (a wait, not a timing
// assertion).
func waitCount(t *testing.T, what string, want int, list func() []int) {
	t.Helper()
	eventually.NoError(t, fmt.Sprintf("%s: %d processes", what, want), 15*time.Second, func() error {
		if got := list(); len(got) != want {
			return fmt.Errorf("%d processes %v", len(got), got)
		}
		return nil
	})
}

// killServer kill -9s dir's one server and waits until it is reaped (the servers of
// these tests are children of this process's groups): a killed multi-threaded process
// shows as a zombie while its last threads still exit and hold its locks.
func killServer(t *testing.T, dir string) int {
	t.Helper()
	servers := serversOf(dir)
	if len(servers) != 1 {
		t.Fatalf("instance servers %v, want one", servers)
	}
	if err := syscall.Kill(servers[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, fmt.Sprintf("killed server %d to be reaped", servers[0]), 15*time.Second, func() bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(servers[0]))
		return errors.Is(err, os.ErrNotExist)
	})
	return servers[0]
}

// assertCgroupGone fails the test if cgroup cg (of a deleted instance) still exists.
func assertCgroupGone(t *testing.T, cg string) {
	t.Helper()
	if cg == "" {
		return
	}
	if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup %s of the deleted instance is still there (stat: %v)", cg, err)
	}
}

// startUnrecordedServer starts dir's server exactly as the plugin does (this program's
// instance-serve, in its own session, in dir) and records nothing anywhere: the state a
// plugin killed right after the fork leaves behind.
func startUnrecordedServer(t *testing.T, dir string) {
	t.Helper()
	self := selfCommand(t)
	logf, err := os.OpenFile(filepath.Join(dir, serverLogFile), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(self[0], append(self[1:], serveCommand, dir)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = []string{"PATH=" + DefaultPath}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Kill()
			<-done
		}
	})
}

// TestServerStartsACrashLeftAreFound covers a plugin killed between starting an
// instance's server and recording it (here: the servers are started by hand and
// nothing is recorded), possibly more than once. The next plugin must end up with
// exactly one server for the instance, and its deletion must leave none.
func TestServerStartsACrashLeftAreFound(t *testing.T) {
	tests := []struct {
		unrecorded int
		cgroups    bool
	}{
		{unrecorded: 1},
		{unrecorded: 2},
		{unrecorded: 2, cgroups: true},
	}
	for _, tt := range tests {
		name := strconv.Itoa(tt.unrecorded) + " unrecorded, by session"
		if tt.cgroups {
			name = strconv.Itoa(tt.unrecorded) + " unrecorded, by cgroup"
		}
		t.Run(name, func(t *testing.T) {
			if tt.cgroups {
				cgroupsUsable(t)
			}
			root := newRoot(t)
			cfg := map[string]any{"root_dir": root}
			mode := func(g *InstanceGroup) { g.noCgroups = !tt.cgroups }
			g := newGroupWith(t, cfg, provider.ConnectorConfig{}, mode)
			ctx := context.Background()
			if _, err := g.Increase(ctx, 1); err != nil {
				t.Fatal(err)
			}
			id := ids(waitStates(t, g, "1 running instance", allRunning(1)))[0]
			dir := filepath.Join(root, id)
			cg := instanceCgroup(dir)
			if tt.cgroups && cg == "" {
				t.Fatal("no cgroup recorded for the instance")
			}
			t.Cleanup(func() {
				if t.Failed() {
					lg, _ := os.ReadFile(filepath.Join(dir, serverLogFile))
					t.Logf("servers %v; server log:\n%s", serversOf(dir), lg)
				}
			})
			// The server the crashed plugin had recorded is gone too (else the next
			// Update has nothing to restart); then the unrecorded starts.
			killServer(t, dir)
			_ = os.Remove(filepath.Join(dir, serverPIDFile))
			for range tt.unrecorded {
				startUnrecordedServer(t, dir)
			}

			next := newGroupWith(t, cfg, provider.ConnectorConfig{}, mode)
			waitStates(t, next, "the instance running", allRunning(1))
			waitCount(t, "servers of the instance after the next plugin's Update", 1, func() []int { return serversOf(dir) })
			if out := runOn(t, next, id, "echo ok"); out != "ok\n" {
				t.Fatalf("output %q", out)
			}
			if _, err := next.Decrease(ctx, []string{id}); err != nil {
				t.Fatal(err)
			}
			waitStates(t, next, "no instances", func(st map[string]provider.State) bool { return len(st) == 0 })
			waitCount(t, "servers of the deleted instance", 0, func() []int { return serversOf(dir) })
			assertCgroupGone(t, cg)
		})
	}
}

// cgroupsUsable skips the test unless the plugin can use cgroup v2 here.
func cgroupsUsable(t *testing.T) {
	t.Helper()
	parent, err := cgroupParentFor(t.TempDir())
	if err != nil {
		t.Skipf("cgroup v2 is not usable here: %v", err)
	}
	_ = syscall.Rmdir(parent)
}

// startJob starts command on the instance with FLOTILLA_TEST_MARK set, leaves it
// running, and returns the first line it prints.
func startJob(t *testing.T, g provider.InstanceGroup, id, mark, command string) string {
	t.Helper()
	info, err := g.ConnectInfo(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(info.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", info.InternalAddr, &ssh.ClientConfig{User: info.Username, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Setenv("FLOTILLA_TEST_MARK", mark); err != nil {
		t.Fatal(err)
	}
	out, err := s.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(command); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 0, 16)
	buf := make([]byte, 1)
	for {
		if _, err := out.Read(buf); err != nil {
			t.Fatalf("read the job's first line: %v", err)
		}
		if buf[0] == '\n' {
			return string(line)
		}
		line = append(line, buf[0])
	}
}

// TestInstanceProcessesEndWithIt starts a job that leaves processes behind in every
// way a CI script does (a background child, a nohup'ed one, with cgroups one that
// leaves its session), kills the instance's server under it or not, and checks that
// nothing of the job survives what follows: the server's death itself, the next
// Update (which restarts the server) or the deletion.
func TestInstanceProcessesEndWithIt(t *testing.T) {
	const (
		none     = ""
		update   = "update"
		decrease = "decrease"
	)
	tests := []struct {
		name       string
		cgroups    bool
		isolation  string
		setsid     bool   // the job also starts a process that leaves its session
		killServer bool   // kill -9 the instance's server under the job
		then       string // what the plugin is asked next
		// commandOnly: after that only the command itself must be gone; its background
		// processes wait for the next Update or Decrease.
		commandOnly bool
	}{
		{name: "server killed then Update, by session", killServer: true, then: update},
		{name: "server killed then Update, by cgroup", cgroups: true, killServer: true, then: update},
		{name: "server killed then Decrease, by session", killServer: true, then: decrease},
		{name: "server killed: the command dies with it", killServer: true, then: none, commandOnly: true},
		{name: "server killed: namespaces end with it", isolation: IsolationNamespaces, killServer: true, then: none},
		{name: "a process left its session, Decrease, by cgroup", cgroups: true, setsid: true, then: decrease},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cgroups {
				cgroupsUsable(t)
			}
			if tt.isolation == IsolationNamespaces {
				if err := probeNamespaces(context.Background(), selfCommand(t)); err != nil {
					t.Skipf("namespaces are not available here: %v", err)
				}
			}
			root := newRoot(t)
			cfg := map[string]any{"root_dir": root}
			if tt.isolation != "" {
				cfg["isolation"] = tt.isolation
			}
			g := newGroupWith(t, cfg, provider.ConnectorConfig{}, func(g *InstanceGroup) { g.noCgroups = !tt.cgroups })
			ctx := context.Background()
			if _, err := g.Increase(ctx, 1); err != nil {
				t.Fatal(err)
			}
			id := ids(waitStates(t, g, "1 running instance", allRunning(1)))[0]
			dir := filepath.Join(root, id)
			cg := instanceCgroup(dir)
			if tt.cgroups && cg == "" {
				t.Fatal("no cgroup recorded for the instance")
			}
			mark := strings.ToLower(rand.Text())
			t.Cleanup(func() { // a failed check must not leak the job's processes
				for _, pid := range marked(mark) {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			})
			script := `sleep 1000 & nohup sleep 1000 >/dev/null 2>&1 & `
			started := 3
			if tt.setsid {
				script += `setsid sleep 1000 >/dev/null 2>&1 & `
				started++
			}
			if tt.isolation == IsolationNamespaces {
				started++ // ns-init, PID 1 of the command's namespaces
			}
			script += `echo $$; exec sleep 1000`
			line := startJob(t, g, id, mark, script)
			waitCount(t, "the job's processes", started, func() []int { return marked(mark) })
			command, _ := strconv.Atoi(line)
			if tt.cgroups {
				// CheckGone finds them by their cgroup, with no record (pid 0).
				if err := CheckGone(root, id, 0); err == nil || !strings.Contains(err.Error(), "of its cgroup are still running") {
					t.Errorf("CheckGone of a running instance = %v, want its cgroup's processes named", err)
				}
			}

			if tt.killServer {
				killServer(t, dir)
			}
			switch tt.then {
			case update:
				waitStates(t, g, "the instance running again", allRunning(1))
			case decrease:
				if _, err := g.Decrease(ctx, []string{id}); err != nil {
					t.Fatal(err)
				}
				waitStates(t, g, "no instances", func(st map[string]provider.State) bool { return len(st) == 0 })
			}
			if tt.commandOnly {
				if !processGone(command) {
					t.Fatalf("the job's command (pid %d) outlives its killed server", command)
				}
			} else {
				waitCount(t, "the job's processes after "+tt.name, 0, func() []int { return marked(mark) })
			}

			if tt.then != decrease {
				if _, err := g.Decrease(ctx, []string{id}); err != nil {
					t.Fatal(err)
				}
				waitStates(t, g, "no instances", func(st map[string]provider.State) bool { return len(st) == 0 })
			}
			waitCount(t, "the job's processes after the deletion", 0, func() []int { return marked(mark) })
			waitCount(t, "servers of the deleted instance", 0, func() []int { return serversOf(dir) })
			assertCgroupGone(t, cg)
		})
	}
}

// TestVanishedInstancesProcessesEnd removes an instance's directory behind the
// plugin's back while a job runs on it: the next plugin on that root_dir kills what
// ran in the instance's cgroup, and removes the cgroup.
func TestVanishedInstancesProcessesEnd(t *testing.T) {
	cgroupsUsable(t)
	root := newRoot(t)
	cfg := map[string]any{"root_dir": root}
	g := newGroup(t, cfg, provider.ConnectorConfig{})
	if _, err := g.Increase(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	id := ids(waitStates(t, g, "1 running instance", allRunning(1)))[0]
	dir := filepath.Join(root, id)
	cg := instanceCgroup(dir)
	if cg == "" {
		t.Fatal("no cgroup recorded for the instance")
	}
	mark := strings.ToLower(rand.Text())
	t.Cleanup(func() {
		for _, pid := range append(marked(mark), serversOf(dir)...) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	startJob(t, g, id, mark, `setsid sleep 1000 >/dev/null 2>&1 & echo started; exec sleep 1000`)
	waitCount(t, "the job's processes", 2, func() []int { return marked(mark) })
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}

	newGroup(t, cfg, provider.ConnectorConfig{})
	waitCount(t, "the vanished instance's job processes", 0, func() []int { return marked(mark) })
	waitCount(t, "the vanished instance's servers", 0, func() []int { return serversOf(dir) })
	assertCgroupGone(t, cg)
}

// TestAbandonedCgroupsAreSwept: a root_dir removed while its instances lived leaves the
// empty cgroups of those instances, and no plugin for that root_dir comes back to
// remove them. A plugin starting beside them removes the groups that are empty and
// old; it leaves a fresh one (a plugin may be about to move a server in) and one that
// holds a process.
func TestAbandonedCgroupsAreSwept(t *testing.T) {
	cgroupsUsable(t)
	mine, err := cgroupParentFor(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer removeCgroup(mine)
	old := time.Now().Add(-2 * abandonedCgroupAge)
	group := func(t *testing.T, age time.Time) string {
		cg, err := cgroupParentFor(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { killCgroup(cg); removeCgroup(cg) })
		inst := filepath.Join(cg, "local-"+strings.ToLower(rand.Text()[:12]))
		if err := ensureCgroup(inst); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{inst, cg} {
			if err := os.Chtimes(d, age, age); err != nil {
				t.Skipf("cannot age a cgroup here: %v", err)
			}
		}
		return inst
	}
	abandoned := group(t, old)
	fresh := group(t, time.Now())
	busy := group(t, old)
	sleeper := exec.Command("sleep", "1000")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	if err := os.WriteFile(filepath.Join(busy, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(busy, old, old); err != nil {
		t.Fatal(err)
	}

	removed := sweepAbandonedCgroups(mine, time.Now())
	if !slices.Contains(removed, filepath.Base(filepath.Dir(abandoned))) {
		t.Errorf("removed %v; want the abandoned group %s among them", removed, filepath.Dir(abandoned))
	}
	if _, err := os.Stat(filepath.Dir(abandoned)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the abandoned group is still there: %v", err)
	}
	for _, kept := range []string{fresh, busy, mine} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("%s was removed: %v", kept, err)
		}
	}
}
