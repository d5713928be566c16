package pluginclient_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
)

// TestKillRemovesTheSocketOfADeadPlugin lets a launched plugin die in ways that leave
// its unix socket behind (the plugin cannot remove it), and checks that the host's
// Kill removes it, in a socket directory of the test's own (go-plugin's
// PLUGIN_UNIX_SOCKET_DIR). Without that, a host relaunching a crashing plugin fills the
// temporary directory with dead sockets.
func TestKillRemovesTheSocketOfADeadPlugin(t *testing.T) {
	tests := []struct {
		name string
		die  func(t *testing.T, ctx context.Context, p launched)
	}{
		{"SIGKILL", func(t *testing.T, _ context.Context, p launched) {
			if err := syscall.Kill(p.pid(t), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}},
		{"os.Exit in a call", func(t *testing.T, ctx context.Context, p launched) {
			_ = p.Heartbeat(ctx, "exit")
		}},
		{"a crash in a call", func(t *testing.T, ctx context.Context, p launched) {
			_ = p.Heartbeat(ctx, "crash")
		}},
		{"none: the host stops it", func(*testing.T, context.Context, launched) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Not t.TempDir: a unix socket's path is at most 107 bytes, and its paths
			// are named after the test.
			dir, err := os.MkdirTemp("", "sock")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			p := launchTestPlugin(t, pluginclient.Options{Env: []string{"PLUGIN_UNIX_SOCKET_DIR=" + dir}})
			if n := len(socketsIn(t, dir)); n != 1 {
				t.Fatalf("%d sockets in the plugin's socket directory, want the one it serves on", n)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tt.die(t, ctx, p)
			p.Kill()
			if left := socketsIn(t, dir); len(left) != 0 {
				t.Fatalf("after Kill, sockets are left: %v", left)
			}
		})
	}
}

// socketsIn lists go-plugin's sockets (plugin*) in dir.
func socketsIn(t *testing.T, dir string) []string {
	t.Helper()
	found, err := filepath.Glob(filepath.Join(dir, "plugin*"))
	if err != nil {
		t.Fatal(err)
	}
	return found
}
