package sshdtest

import (
	"os"
	"syscall"
	"testing"
)

// A port number found by listening on port 0 and closing the listener is free only for
// a moment: under load another test, or the kernel choosing an outgoing connection's
// port, takes it before it is used, and a test that wanted "nothing listens here" dials
// a live server, or a server cannot bind its port. The helpers below instead keep the
// port bound, without listening, until the test ends. On Linux a connection to a port
// bound by a socket that does not listen is refused, exactly as if the port were free,
// and the kernel never hands out a bound port for another port-0 bind or an outgoing
// connection; TestReservedPorts checks both on the machine it runs on.

// ClosedPort returns a TCP port on 127.0.0.1 on which nothing listens, nor can, until
// the test ends: a connection to it is refused. Use it for "nothing listens here".
func ClosedPort(t testing.TB) int {
	t.Helper()
	return boundPort(t, false)
}

// ReservePort returns a TCP port on 127.0.0.1 on which nothing listens until a server
// given the number listens on it: the port is held with SO_REUSEADDR, which Linux lets
// a second socket (sshd's, Go's net.Listen, both set SO_REUSEADDR) bind and listen on
// while the holder does not listen. Nothing else gets the port meanwhile. Use it for a
// server started later on a port the test knows in advance.
func ReservePort(t testing.TB) int {
	t.Helper()
	return boundPort(t, true)
}

// boundPort binds a TCP socket to 127.0.0.1:0 without listening on it and closes it at
// the end of the test.
func boundPort(t testing.TB, reuseAddr bool) int {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("sshdtest: reserve a port: %v", os.NewSyscallError("socket", err))
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if reuseAddr {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
			t.Fatalf("sshdtest: reserve a port: %v", os.NewSyscallError("setsockopt SO_REUSEADDR", err))
		}
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("sshdtest: reserve a port: %v", os.NewSyscallError("bind 127.0.0.1:0", err))
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("sshdtest: reserve a port: %v", os.NewSyscallError("getsockname", err))
	}
	return sa.(*syscall.SockaddrInet4).Port
}
