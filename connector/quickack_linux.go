package connector

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// quickAck returns conn with TCP_QUICKACK set before every read, if it is a TCP
// connection. OpenSSH's sshd leaves Nagle's algorithm on for non-interactive channels,
// so its reply to a channel open (a Docker API stream, a job's session) can wait for
// the ACK of its previous small segment, and Linux delays that ACK by up to 40 ms.
// Acknowledging at once removes that stall from every new channel; the kernel clears
// the flag after it acts, hence once per read.
func quickAck(conn net.Conn) net.Conn {
	tcp, ok := conn.(*net.TCPConn)
	if !ok {
		return conn
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return conn
	}
	return &quickAckConn{TCPConn: tcp, raw: raw}
}

type quickAckConn struct {
	*net.TCPConn
	raw syscall.RawConn
}

func (c *quickAckConn) Read(p []byte) (int, error) {
	_ = c.raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1)
	})
	return c.TCPConn.Read(p)
}
