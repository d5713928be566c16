package local

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// forwardDialTimeout bounds the server's connect to a forwarding target.
const forwardDialTimeout = 10 * time.Second

// loopbackHost reports whether host names this machine's loopback interface: a sandbox
// forwards only to itself, as a VM's sshd forwarding to its own localhost would.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// directTCPIP serves a "direct-tcpip" channel (ssh -L, connector Dial "tcp").
func (s *Server) directTCPIP(nch ssh.NewChannel) {
	var p struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if err := ssh.Unmarshal(nch.ExtraData(), &p); err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, "malformed direct-tcpip request")
		return
	}
	if !loopbackHost(p.Host) {
		_ = nch.Reject(ssh.Prohibited, fmt.Sprintf("forwarding to %s is not allowed: a local sandbox forwards only to 127.0.0.1, ::1 or localhost", p.Host))
		return
	}
	addr := net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port)))
	conn, err := net.DialTimeout("tcp", addr, forwardDialTimeout)
	if err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, fmt.Sprintf("connect to %s: %v", addr, err))
		return
	}
	s.pipe(nch, conn)
}

// directStreamLocal serves a "direct-streamlocal@openssh.com" channel: a connection to
// a unix socket. DockerSocketPath is mapped to the configured Docker socket; a relative
// path is taken from the sandbox directory.
func (s *Server) directStreamLocal(nch ssh.NewChannel) {
	var p struct {
		Path      string
		Reserved0 string
		Reserved1 uint32
	}
	if err := ssh.Unmarshal(nch.ExtraData(), &p); err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, "malformed direct-streamlocal request")
		return
	}
	path := s.socketPath(p.Path)
	conn, err := net.DialTimeout("unix", path, forwardDialTimeout)
	if err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, fmt.Sprintf("connect to unix socket %s: %v", path, err))
		return
	}
	s.pipe(nch, conn)
}

// socketPath maps the path a client asked for to the socket on this machine.
func (s *Server) socketPath(path string) string {
	if s.cfg.DockerSocket != "" && (path == DockerSocketPath || path == "/run/docker.sock") {
		return s.cfg.DockerSocket
	}
	if !filepath.IsAbs(path) {
		return filepath.Join(s.cfg.WorkDir, path)
	}
	return path
}

// pipe accepts nch and copies both ways between it and conn, passing half-closes on,
// until both directions are done or the server closes.
func (s *Server) pipe(nch ssh.NewChannel, conn net.Conn) {
	ch, reqs, err := nch.Accept()
	if err != nil {
		conn.Close()
		return
	}
	// The requests channel ends when the SSH channel is closed (by the client or with
	// the connection): then the target connection goes too.
	chClosed := make(chan struct{})
	go func() {
		ssh.DiscardRequests(reqs)
		close(chClosed)
	}()
	stop := make(chan struct{})
	go func() {
		select {
		case <-s.ctx.Done():
		case <-chClosed:
		case <-stop:
			return
		}
		ch.Close()
		conn.Close()
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(conn, ch)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			conn.Close()
		}
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(ch, conn)
		_ = ch.CloseWrite()
	}()
	wg.Wait()
	close(stop)
	ch.Close()
	conn.Close()
}
