package plugin_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// TestSignalWhileTheHostIsAliveKeepsServing sends a plugin, launched and initialised by
// a live host, the signals a service manager sends every process of a service it stops
// (systemd's cgroup stop): the plugin must keep serving, so that the host can still
// delete its instances, and end only when the host is done with it, or after the grace
// period.
func TestSignalWhileTheHostIsAliveKeepsServing(t *testing.T) {
	bin := conformancetest.Build(t, testPlugin)
	tests := []struct {
		name   string
		signal syscall.Signal
		env    []string
		// end is how the host finishes; nil means it does nothing and the grace ends it.
		end func(ctx context.Context, p *pluginclient.Plugin) error
	}{
		{"SIGTERM, then the host's Shutdown", syscall.SIGTERM, nil, func(ctx context.Context, p *pluginclient.Plugin) error {
			return p.Shutdown(ctx)
		}},
		{"SIGINT, then the host's Shutdown", syscall.SIGINT, nil, func(ctx context.Context, p *pluginclient.Plugin) error {
			return p.Shutdown(ctx)
		}},
		{"SIGTERM, then the grace period ends", syscall.SIGTERM, []string{plugin.SignalGraceEnv + "=1s"}, nil},
		{"SIGHUP is the host's", syscall.SIGHUP, nil, func(ctx context.Context, p *pluginclient.Plugin) error {
			p.Kill()
			return nil
		}},
		{"SIGQUIT is the host's", syscall.SIGQUIT, nil, func(ctx context.Context, p *pluginclient.Plugin) error {
			p.Kill()
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			marker := filepath.Join(dir, "marker")
			var log syncbuf.Buffer
			logger := hclog.New(&hclog.LoggerOptions{Output: &log, Level: hclog.Info})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			config := fmt.Sprintf(`{"dir": %q}`, filepath.Join(dir, "instances"))
			p, err := pluginclient.Launch(ctx, bin, []byte(config), pluginclient.Options{Logger: logger,
				Env: append([]string{"TESTPLUGIN_MARKER=" + marker}, tt.env...)})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Kill()
			if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
				t.Fatal(err)
			}
			if n, err := p.Increase(ctx, 2); n != 2 || err != nil {
				t.Fatalf("Increase(2) = %d, %v", n, err)
			}

			if err := syscall.Kill(p.Pid(), tt.signal); err != nil {
				t.Fatal(err)
			}
			name := map[syscall.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGINT: "SIGINT",
				syscall.SIGHUP: "SIGHUP", syscall.SIGQUIT: "SIGQUIT"}[tt.signal]
			eventually.True(t, "the plugin to log the signal", 30*time.Second, func() bool {
				return strings.Contains(log.String(), "received "+name) || p.Exited()
			})

			// The host, stopping too, deletes its instances.
			var ids []string
			if err := p.Update(ctx, func(id string, _ provider.State) { ids = append(ids, id) }); err != nil || len(ids) != 2 {
				t.Fatalf("after %s, Update = %v (listed %v); want the plugin serving its 2 instances", name, err, ids)
			}
			if done, err := p.Decrease(ctx, ids); len(done) != 2 || err != nil {
				t.Fatalf("after %s, Decrease = %v, %v; want both deleted", name, done, err)
			}
			if data, _ := os.ReadFile(marker); strings.Contains(string(data), "shutdown") {
				t.Fatalf("the plugin ran its Shutdown before the host asked: %q", data)
			}

			if tt.end != nil {
				if err := tt.end(ctx, p); err != nil {
					t.Fatalf("the host's Shutdown: %v", err)
				}
			}
			// Without the host's Kill, the plugin ends by itself (after its Shutdown).
			eventually.True(t, "the plugin to exit", 30*time.Second, p.Exited)
			if data, _ := os.ReadFile(marker); strings.Count(string(data), "shutdown") != 1 {
				t.Fatalf("marker file %q: want Shutdown called exactly once", data)
			}
		})
	}
}

// TestSignalWithoutAHostShutsDown sends each signal to a plugin no host has
// initialised (a person ran it by hand): it runs Shutdown and exits 0.
func TestSignalWithoutAHostShutsDown(t *testing.T) {
	bin := conformancetest.Build(t, testPlugin)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT} {
		t.Run(sig.String(), func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "marker")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin)
			cmd.Env = pluginEnv(marker)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || !strings.Contains(line, "|grpc") {
				t.Fatalf("handshake line %q, %v", line, err)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) || ctx.Err() != nil {
					t.Fatalf("after %v the plugin ended with %v (context: %v); want exit status 0", sig, err, ctx.Err())
				}
				t.Fatal(err)
			}
			if data, _ := os.ReadFile(marker); strings.Count(string(data), "shutdown") != 1 {
				t.Fatalf("marker file %q: want Shutdown called exactly once", data)
			}
		})
	}
}
