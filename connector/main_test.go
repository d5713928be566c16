package connector_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// dialStdioEnv makes the test binary act as `docker system dial-stdio` for the socket it
// names: it bridges its stdin/stdout to the socket, which is what the fallback needs
// from the instance. Tests run it on the "instance" (this machine) through sshd.
const dialStdioEnv = "FLOTILLA_TEST_DIAL_STDIO_SOCKET"

func TestMain(m *testing.M) {
	if path := os.Getenv(dialStdioEnv); path != "" {
		os.Exit(dialStdio(path))
	}
	os.Exit(m.Run())
}

func dialStdio(path string) int {
	c, err := net.Dial("unix", path)
	if err != nil {
		os.Stderr.WriteString("dial-stdio: " + err.Error() + "\n")
		return 1
	}
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(c, os.Stdin)
		_ = c.(*net.UnixConn).CloseWrite()
	}()
	go func() { _, _ = io.Copy(os.Stdout, c); close(done) }()
	<-done
	return 0
}

var quiet = slog.New(slog.DiscardHandler)

// opts returns DialOptions with a private host key store and fast retries.
func opts() connector.DialOptions {
	return connector.DialOptions{HostKeys: connector.NewMemoryHostKeyStore(), Logger: quiet,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(t testing.TB, info provider.ConnectInfo, o connector.DialOptions) *connector.Client {
	t.Helper()
	c, err := connector.Dial(ctxT(t), info, o)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func runOut(t testing.TB, c *connector.Client, cmd string) string {
	t.Helper()
	var out, errOut strings.Builder
	if err := c.Run(ctxT(t), connector.RunOptions{Command: cmd, Stdout: &out, Stderr: &errOut}); err != nil {
		t.Fatalf("run %q: %v (stderr %q)", cmd, err, errOut.String())
	}
	return out.String()
}

func asError(t testing.TB, err error) *connector.Error {
	t.Helper()
	var e *connector.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *connector.Error", err, err)
	}
	return e
}

// echoServer listens on network/addr and echoes every connection; it returns the
// address it listens on.
func echoServer(t testing.TB, network, addr string) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// unixSocketPath returns a socket path short enough for sun_path (108 bytes), which
// t.TempDir paths can exceed.
func unixSocketPath(t testing.TB) string {
	dir, err := os.MkdirTemp("", "flc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s.sock")
}
