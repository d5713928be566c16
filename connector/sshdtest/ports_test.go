package sshdtest_test

import (
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/connector/sshdtest"
)

// TestReservedPorts checks on this machine what the connector's tests rely on: a
// connection to a reserved port is refused, nobody can listen on a ClosedPort, and a
// server given a ReservePort (Go's net.Listen sets SO_REUSEADDR, as sshd does) can.
func TestReservedPorts(t *testing.T) {
	tests := []struct {
		name       string
		port       func(testing.TB) int
		listenable bool
	}{
		{"ClosedPort", sshdtest.ClosedPort, false},
		{"ReservePort", sshdtest.ReservePort, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(tt.port(t)))
			c, err := net.DialTimeout("tcp", addr, 10*time.Second)
			if err == nil {
				c.Close()
				t.Fatalf("dial %s: connected, want connection refused", addr)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("dial %s: %v, want connection refused", addr, err)
			}

			ln, err := net.Listen("tcp", addr)
			if !tt.listenable {
				if err == nil {
					ln.Close()
					t.Fatalf("listen on %s succeeded; want the port held", addr)
				}
				if !errors.Is(err, syscall.EADDRINUSE) {
					t.Fatalf("listen on %s: %v, want address in use", addr, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("listen on %s: %v; want a server given the port to get it", addr, err)
			}
			defer ln.Close()
			c, err = net.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				t.Fatalf("dial %s once a server listens: %v", addr, err)
			}
			c.Close()
		})
	}
}
