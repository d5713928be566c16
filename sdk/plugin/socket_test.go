package plugin_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// socketDirEnv is go-plugin's variable for the directory of the plugin's unix socket.
const socketDirEnv = "PLUGIN_UNIX_SOCKET_DIR"

// shortTempDir makes a directory for a plugin's socket: a unix socket's path is at
// most 107 bytes, which t.TempDir's paths, named after the test, may exceed.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// sockets lists the go-plugin sockets (plugin*) in dir.
func sockets(t *testing.T, dir string) []string {
	t.Helper()
	found, err := filepath.Glob(filepath.Join(dir, "plugin*"))
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestEveryExitRemovesTheSocket ends a plugin, served on a unix socket in a directory of
// the test's own, on each exit path the plugin controls, and checks that no socket file
// is left once the process is gone. A plugin that called os.Exit while serving left it:
// go-plugin removes the file only when its listener is closed.
func TestEveryExitRemovesTheSocket(t *testing.T) {
	bin := conformancetest.Build(t, testPlugin)
	tests := []struct {
		name string
		// run starts the plugin with env, makes it exit and returns once it is gone;
		// the plugin serves in socketDir.
		run func(t *testing.T, ctx context.Context, env []string, socketDir string)
	}{
		{"SIGTERM without a host", func(t *testing.T, ctx context.Context, env []string, socketDir string) {
			runUnhosted(t, ctx, bin, env, syscall.SIGTERM)
		}},
		{"SIGINT without a host", func(t *testing.T, ctx context.Context, env []string, socketDir string) {
			runUnhosted(t, ctx, bin, env, syscall.SIGINT)
		}},
		{"SIGTERM, then the host's Shutdown", func(t *testing.T, ctx context.Context, env []string, socketDir string) {
			runHosted(t, ctx, bin, env, func(p *pluginclient.Plugin) {
				if err := p.Shutdown(ctx); err != nil {
					t.Fatalf("the host's Shutdown: %v", err)
				}
			})
		}},
		{"SIGTERM, then the grace period ends", func(t *testing.T, ctx context.Context, env []string, socketDir string) {
			runHosted(t, ctx, bin, append(env, plugin.SignalGraceEnv+"=1s"), nil)
		}},
		{"the host is gone", func(t *testing.T, ctx context.Context, env []string, socketDir string) {
			runOrphaned(t, ctx, bin, env, socketDir)
		}},
		{"the host's Kill", func(t *testing.T, ctx context.Context, env []string, socketDir string) {
			p := launch(t, ctx, bin, env, nil)
			p.Kill()
			if !p.Exited() {
				t.Fatal("the plugin runs on after Kill")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			socketDir := shortTempDir(t)
			marker := filepath.Join(dir, "marker")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			env := []string{socketDirEnv + "=" + socketDir, "TESTPLUGIN_MARKER=" + marker}
			tt.run(t, ctx, env, socketDir)
			if left := sockets(t, socketDir); len(left) != 0 {
				t.Fatalf("the plugin exited and left its socket: %v", left)
			}
			if data, _ := os.ReadFile(marker); strings.Count(string(data), "shutdown") != 1 {
				t.Fatalf("marker file %q: want Shutdown called exactly once", data)
			}
		})
	}
}

// runUnhosted starts the plugin as a person would, with the handshake's variables but
// no host, sends it sig once it serves and waits for it to exit 0.
func runUnhosted(t *testing.T, ctx context.Context, bin string, env []string, sig syscall.Signal) {
	t.Helper()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = pluginEnv("", env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || !strings.Contains(line, "|unix|") {
		t.Fatalf("handshake line %q, %v; want a unix socket", line, err)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("after %v the plugin ended with %v (context: %v); want exit status 0", sig, err, ctx.Err())
	}
}

// launch launches and initialises the plugin, logging to log if it is not nil.
func launch(t *testing.T, ctx context.Context, bin string, env []string, log *syncbuf.Buffer) *pluginclient.Plugin {
	t.Helper()
	opts := pluginclient.Options{Env: env}
	if log != nil {
		opts.Logger = hclog.New(&hclog.LoggerOptions{Output: log, Level: hclog.Info})
	}
	config := fmt.Sprintf(`{"dir": %q}`, filepath.Join(t.TempDir(), "instances"))
	p, err := pluginclient.Launch(ctx, bin, []byte(config), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// runHosted launches and initialises the plugin, sends it SIGTERM (which it defers to
// its live host), lets the host end it with end (nil: the host does nothing) and waits
// for the plugin to exit by itself.
func runHosted(t *testing.T, ctx context.Context, bin string, env []string, end func(p *pluginclient.Plugin)) {
	t.Helper()
	var log syncbuf.Buffer
	p := launch(t, ctx, bin, env, &log)
	if err := syscall.Kill(p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	eventually.True(t, "the plugin to defer SIGTERM to its host", 30*time.Second, func() bool {
		return strings.Contains(log.String(), "received SIGTERM while the host")
	})
	if end != nil {
		end(p)
	}
	eventually.True(t, "the plugin to exit by itself", 30*time.Second, p.Exited)
}

// runOrphaned starts the plugin through a shell that stays until the plugin serves and
// then exits: the plugin's host is gone, and it must exit within a second or so.
func runOrphaned(t *testing.T, ctx context.Context, bin string, env []string, socketDir string) {
	t.Helper()
	// The shell starts the plugin in the background, prints its PID and waits for a
	// line on its stdin; the plugin's stdout (the handshake) is discarded.
	cmd := exec.CommandContext(ctx, "sh", "-c", `"$0" >/dev/null & echo $!; read x || :`, bin)
	cmd.Env = pluginEnv("", env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		t.Fatalf("the shell printed %q, %v: want the plugin's PID", line, err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	eventually.True(t, "the plugin to serve on its socket", 30*time.Second, func() bool { return len(sockets(t, socketDir)) == 1 })
	stdin.Close() // the shell, the plugin's host, exits
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the shell: %v", err)
	}
	eventually.True(t, "the orphaned plugin to exit", 30*time.Second, func() bool { return processGone(pid) })
}

// processGone reports whether pid has exited: it no longer exists, or is a zombie that
// its new parent has not reaped yet.
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// The state follows the command name, which is in parentheses.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(fields) > 0 && fields[0] == "Z"
}
