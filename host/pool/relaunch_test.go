package pool

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/local"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// pluginPids lists the embedded local plugin processes this test binary started: its
// children running EmbeddedCommand.
func pluginPids(t *testing.T) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces, so parse after the last ')'.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 1 && args[1] == local.EmbeddedCommand {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestDeadPluginIsRelaunched kills a pool's plugin with SIGKILL: the pool relaunches it
// in a process group of its own, says so, and its group answers again.
func TestDeadPluginIsRelaunched(t *testing.T) {
	root := t.TempDir()
	cfg := load(t, fmt.Sprintf("      root_dir = %q\n", root))
	var logs syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := Start(ctx, cfg, &cfg.Runners[0], Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(ctx)
	pids := pluginPids(t)
	if len(pids) != 1 {
		t.Fatalf("plugin processes %v; want one", pids)
	}
	old := pids[0]
	if pgid, err := syscall.Getpgid(old); err != nil || pgid != old {
		t.Errorf("the plugin (pid %d) is in process group %d (%v); want a group of its own", old, pgid, err)
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !eventually.Poll(time.Minute, func() bool { err = m.plugin.Update(ctx, func(string, provider.State) {}); return err == nil }) {
		t.Fatalf("the plugin still fails after its kill: %v\nlog:\n%s", err, logs.String())
	}
	pids = pluginPids(t)
	if len(pids) != 1 || pids[0] == old {
		t.Fatalf("plugin processes %v after relaunch; want one new one (the killed one was %d)", pids, old)
	}
	if pgid, err := syscall.Getpgid(pids[0]); err != nil || pgid != pids[0] {
		t.Errorf("the relaunched plugin (pid %d) is in process group %d (%v); want a group of its own", pids[0], pgid, err)
	}
	for _, want := range []string{"plugin local exited (signal: killed); relaunching in", "plugin local relaunched (attempt 1)"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log does not say %q:\n%s", want, logs.String())
		}
	}
}
