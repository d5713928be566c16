// Package storetest starts real object stores on 127.0.0.1 for the tests of the shared
// job cache: an S3-compatible gateway (versitygw), and emulators of Google Cloud Storage
// and Azure Blob Storage. Each store gives the [runners.cache] configuration that
// points at it, and a way to read what a test stored, to check object names and bytes.
//
// The stores are programs that `make test-tools` installs into .tools/bin, which make
// puts on PATH; to run the tests by hand, put it on PATH yourself
// (PATH=$PWD/.tools/bin:$PATH). A missing program skips the test, unless RequireEnv is
// set.
package storetest

import (
	"context"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// RequireEnv, set to 1 (as CI does), turns a missing store program into a test failure
// instead of a skip, so that CI cannot pass without running the store tests.
const RequireEnv = "FLOTILLA_REQUIRE_STORES"

// startTimeout bounds how long a store may take to listen.
const startTimeout = 30 * time.Second

// LookPath returns the path of the program name on PATH. When there is none it skips
// the test, or fails it under RequireEnv; install says how to get it.
func LookPath(t testing.TB, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s required (%s=1) but not on PATH: %s", name, RequireEnv, install)
	}
	t.Skipf("%s not on PATH (%s; by hand: PATH=$PWD/.tools/bin:$PATH): %v", name, install, err)
	return ""
}

// FreeAddr returns a 127.0.0.1:port that nothing listens on right now, for a store to
// bind. (Another process could take it before the store does; on a test machine that
// is rare, and the store then fails to start with a clear error.)
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// Process is a store program started by Start.
type Process struct {
	Name string
	// Logs is what the program printed, for failure messages.
	Logs *syncbuf.Buffer
	done chan struct{}
	err  error // of Wait, once done is closed
}

// Start runs bin with args until the test ends: then it is sent SIGTERM, and killed if
// it has not exited 10s later. Its output is logged when the test has failed.
func Start(t testing.TB, bin string, args ...string) *Process {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	p := &Process{Name: bin, Logs: &syncbuf.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Logs, p.Logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		cancel()
		<-p.done
		if t.Failed() {
			t.Logf("%s output:\n%s", bin, p.Logs.String())
		}
	})
	return p
}

// WaitListening returns once addr accepts TCP connections; it fails the test when the
// program exits first or does not listen within 30s.
func (p *Process) WaitListening(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before listening on %s (%v):\n%s", p.Name, addr, p.err, p.Logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s after %s: %v\n%s", p.Name, addr, startTimeout, err, p.Logs.String())
		}
		// Polling an external process coming up: the only wait here.
		time.Sleep(20 * time.Millisecond)
	}
}
