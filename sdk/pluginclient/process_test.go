package pluginclient_test

import (
	"bufio"
	"context"
	"encoding/json"
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

	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// testPluginBinary is the SDK's test plugin (sdk/conformance/testdata/testplugin),
// built once for the package by TestMain.
var testPluginBinary string

func TestMain(m *testing.M) {
	if sock := os.Getenv(echoSocketEnv); sock != "" {
		os.Exit(serveEcho(sock)) // re-executed by the B5 benchmark as its ping-pong peer
	}
	if sock := os.Getenv(grpcHealthSocketEnv); sock != "" {
		os.Exit(serveGRPCHealth(sock)) // re-executed by B5 as its raw gRPC peer
	}
	if plugin := os.Getenv(testHostEnv); plugin != "" {
		os.Exit(serveTestHost(plugin)) // re-executed as a host by TestGroupSignal…
	}
	dir, err := os.MkdirTemp("", "pluginclient-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if goBin, err := exec.LookPath("go"); err == nil {
		out := filepath.Join(dir, "testplugin")
		cmd := exec.Command(goBin, "build", "-o", out, "github.com/flotilla-ci/flotilla/sdk/conformance/testdata/testplugin")
		if msg, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build test plugin: %v\n%s", err, msg)
			os.Exit(1)
		}
		testPluginBinary = out
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// launched is a running test plugin, initialised, with the file its Init and
// Shutdown write to.
type launched struct {
	*pluginclient.Plugin
	marker string
}

// pid is the plugin process's ID, as its Init recorded it.
func (l launched) pid(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile(l.marker)
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), "init pid=")
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(after, "\n", 2)[0]))
	if !ok || err != nil {
		t.Fatalf("no pid in marker file: %q", data)
	}
	return pid
}

func launchTestPlugin(t *testing.T, opts pluginclient.Options) launched {
	t.Helper()
	if testPluginBinary == "" {
		t.Skip("the test plugin needs the go command to build it")
	}
	dir := t.TempDir()
	marker := filepath.Join(dir, "marker")
	opts.Env = append(opts.Env, "TESTPLUGIN_MARKER="+marker)
	config := fmt.Sprintf(`{"dir": %q, "address": "127.0.0.1:22"}`, filepath.Join(dir, "instances"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := pluginclient.Launch(ctx, testPluginBinary, []byte(config), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return launched{p, marker}
}

func TestPanicBecomesAnErrorAndThePluginKeepsServing(t *testing.T) {
	p := launchTestPlugin(t, pluginclient.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := p.Heartbeat(ctx, "panic")
	if err == nil || errors.Is(err, pluginclient.ErrPluginExited) || !strings.Contains(err.Error(), "panic requested") {
		t.Fatalf("Heartbeat(panic) = %v; want the panic as an error, the plugin alive", err)
	}
	if err := p.Heartbeat(ctx, "missing"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("after the panic, Heartbeat(missing) = %v; want ErrNotFound from a plugin still serving", err)
	}
	if p.Exited() {
		t.Fatal("the plugin process exited after a panic")
	}
}

func TestPluginLogsAreReemittedAtTheirLevels(t *testing.T) {
	var out syncbuf.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: &out, JSONFormat: true})
	p := launchTestPlugin(t, pluginclient.Options{Logger: logger, Env: []string{plugin.LogLevelEnv + "=trace"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Heartbeat(ctx, "log"); err != nil {
		t.Fatal(err)
	}
	// The plugin's stderr is read asynchronously; wait for its last line. A timeout
	// falls through to the checks below, which name the lines missing.
	eventually.Poll(30*time.Second, func() bool { return strings.Contains(out.String(), "testplugin log at error") })
	got := map[string]map[string]any{}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var entry map[string]any
		if json.Unmarshal(sc.Bytes(), &entry) == nil {
			if msg, _ := entry["@message"].(string); strings.HasPrefix(msg, "testplugin log at ") {
				got[strings.TrimPrefix(msg, "testplugin log at ")] = entry
			}
		}
	}
	for _, level := range []string{"trace", "debug", "info", "warn", "error"} {
		entry, ok := got[level]
		if !ok {
			t.Errorf("the %s line was not re-emitted; host log:\n%s", level, out.String())
			continue
		}
		if entry["@level"] != level {
			t.Errorf("the %s line was re-emitted at level %v", level, entry["@level"])
		}
	}
	if got["info"]["key"] != "value" {
		t.Errorf("the info line lost its fields: %v", got["info"])
	}
}

func TestDyingPluginIsReportedAsExited(t *testing.T) {
	tests := []struct {
		name string
		kill func(t *testing.T, p launched) // how the plugin dies while Heartbeat(call) runs
		call string
	}{
		{"os.Exit in the middle of a call", nil, "exit"},
		{"SIGKILL while a call waits", func(t *testing.T, p launched) {
			if err := syscall.Kill(p.pid(t), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, "block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := launchTestPlugin(t, pluginclient.Options{})
			// A generous deadline: the point is that the call ends with
			// ErrPluginExited, not by running into it.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- p.Heartbeat(ctx, tt.call) }()
			if tt.kill != nil {
				tt.kill(t, p)
			}
			err := <-done
			if !errors.Is(err, pluginclient.ErrPluginExited) || ctx.Err() != nil {
				t.Fatalf("Heartbeat(%s) = %v (context: %v); want ErrPluginExited before the deadline", tt.call, err, ctx.Err())
			}
			if err := p.Heartbeat(ctx, "missing"); !errors.Is(err, pluginclient.ErrPluginExited) {
				t.Fatalf("a call after the exit = %v; want ErrPluginExited", err)
			}
			if !p.Exited() {
				t.Fatal("Exited() is false after the plugin died")
			}
		})
	}
}

func TestEveryCallIsBoundedByItsContext(t *testing.T) {
	p := launchTestPlugin(t, pluginclient.Options{})
	tests := []struct {
		name string
		call string // "block" honours cancellation, "hang" ignores it
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"deadline, plugin honours it", "block", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
		{"deadline, plugin ignores it", "hang", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, context.DeadlineExceeded},
		{"cancelled, plugin ignores it", "hang", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			if err := p.Heartbeat(ctx, tt.call); !errors.Is(err, tt.want) {
				t.Fatalf("Heartbeat(%s) = %v; want %v", tt.call, err, tt.want)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Heartbeat(ctx, "missing"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("after the abandoned calls, Heartbeat(missing) = %v; want ErrNotFound", err)
	}
}
