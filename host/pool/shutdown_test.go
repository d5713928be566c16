package pool

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// onLog is a slog.Handler that runs hook on every record before passing it on: a test
// acts at the moment the pool says it does something.
type onLog struct {
	slog.Handler
	hook func(slog.Record)
}

func (h onLog) Handle(ctx context.Context, r slog.Record) error {
	h.hook(r)
	return h.Handler.Handle(ctx, r)
}

func (h onLog) WithAttrs(as []slog.Attr) slog.Handler {
	return onLog{h.Handler.WithAttrs(as), h.hook}
}

func (h onLog) WithGroup(name string) slog.Handler { return onLog{h.Handler.WithGroup(name), h.hook} }

// idlePool is a pool of the local plugin that keeps one idle instance, deletes its
// instances quickly at shutdown, and the root directory of its instances.
func idlePool(t *testing.T) (*config.Config, string) {
	t.Helper()
	root := t.TempDir()
	cfg := load(t, fmt.Sprintf("      root_dir = %q", root),
		`    update_interval = "100ms"`, `    shutdown_deletion_interval = "100ms"`,
		"    [[runners.autoscaler.policy]]\n      idle_count = 1\n      idle_time = \"1h\"")
	return cfg, root
}

// waitInstance waits for the pool to hold an instance and returns its ID.
func waitInstance(t *testing.T, m *Pool) string {
	t.Helper()
	var id string
	eventually.NoError(t, "one running instance in the pool", time.Minute, func() error {
		l := m.Status().InstanceList
		if len(l) != 1 || l[0].State != "running" {
			return fmt.Errorf("instances %+v", l)
		}
		id = l[0].ID
		return nil
	})
	return id
}

// leftInstances lists the instance directories left in root.
func leftInstances(root string) []string {
	var left []string
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "local-") {
			left = append(left, e.Name())
		}
	}
	return left
}

// TestPluginKilledDuringShutdownDeletionIsRelaunched kills the plugin with SIGKILL the
// moment the pool, shutting down, begins deleting its instance: the plugin must be
// relaunched for the deletion to finish, and Shutdown must succeed with nothing left,
// neither the instance nor a plugin process.
func TestPluginKilledDuringShutdownDeletionIsRelaunched(t *testing.T) {
	cfg, root := idlePool(t)
	var logs syncbuf.Buffer
	var m atomic.Pointer[Pool]
	var killed atomic.Int64
	hook := func(r slog.Record) {
		if r.Message != "removing instance" || m.Load() == nil {
			return
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "reason" && a.Value.String() == "delete_instances_on_shutdown" && killed.Load() == 0 {
				if p := m.Load().plugin.Current(); p != nil && syscall.Kill(p.Pid(), syscall.SIGKILL) == nil {
					killed.Store(int64(p.Pid()))
				}
			}
			return true
		})
	}
	log := slog.New(onLog{slog.NewTextHandler(&logs, nil), hook})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool, err := Start(ctx, cfg, &cfg.Runners[0], Options{Logger: log, StateDir: t.TempDir(), DeleteOnShutdown: true})
	if err != nil {
		t.Fatal(err)
	}
	id := waitInstance(t, pool)
	m.Store(pool) // from now on the shutdown deletion kills the plugin
	if err := pool.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown = %v; want the instance deleted by the relaunched plugin\nlog:\n%s", err, logs.String())
	}
	if killed.Load() == 0 {
		t.Fatalf("the plugin was not killed: the pool did not log the removal of %s at shutdown\nlog:\n%s", id, logs.String())
	}
	if left := leftInstances(root); len(left) != 0 {
		t.Errorf("instances left: %v", left)
	}
	if pids := pluginPids(t); len(pids) != 0 {
		t.Errorf("plugin processes %v left after Shutdown", pids)
	}
	for _, want := range []string{"plugin local exited (signal: killed); relaunching in", "plugin local relaunched (attempt 1)"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log does not say %q:\n%s", want, logs.String())
		}
	}
}

// TestHungPluginIsKilledAtShutdown stops the plugin with SIGSTOP for good, then shuts
// the pool down: the hung plugin is killed and relaunched, the instance deleted, and no
// plugin process, hung or not, is left behind.
func TestHungPluginIsKilledAtShutdown(t *testing.T) {
	cfg, root := idlePool(t)
	var logs syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m, err := Start(ctx, cfg, &cfg.Runners[0], Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), StateDir: t.TempDir(),
		DeleteOnShutdown: true, PluginHangTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	waitInstance(t, m)
	pid := m.plugin.Current().Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	if err := m.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown = %v; want the instance deleted by the relaunched plugin\nlog:\n%s", err, logs.String())
	}
	if ctx.Err() != nil {
		t.Fatalf("Shutdown ran into its deadline\nlog:\n%s", logs.String())
	}
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("the hung plugin (pid %d) is still there after Shutdown", pid)
	}
	if pids := pluginPids(t); len(pids) != 0 {
		t.Errorf("plugin processes %v left after Shutdown", pids)
	}
	if left := leftInstances(root); len(left) != 0 {
		t.Errorf("instances left: %v", left)
	}
	want := fmt.Sprintf("(pid %d, state: stopped); killed it; relaunching in", pid)
	if !strings.Contains(logs.String(), want) {
		t.Errorf("the log does not say %q:\n%s", want, logs.String())
	}
}
