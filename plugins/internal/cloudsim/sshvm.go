package cloudsim

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// vmServer is one VM's SSH server: exec and shell sessions, env, signals, keepalive and
// direct-tcpip to loopback. It is deliberately small; the local plugin has the full one.
type vmServer struct {
	ln  net.Listener
	cfg *ssh.ServerConfig
	dir string

	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

func (s *vmServer) serve() {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[nc] = true
		s.mu.Unlock()
		go s.handle(nc)
	}
}

// close stops accepting and drops every connection; sessions then kill their commands.
// It does not wait for them.
func (s *vmServer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
}

func (s *vmServer) handle(nc net.Conn) {
	defer func() {
		nc.Close()
		s.mu.Lock()
		delete(s.conns, nc)
		s.mu.Unlock()
	}()
	conn, chans, reqs, err := ssh.NewServerConn(nc, s.cfg)
	if err != nil {
		return
	}
	defer conn.Close()
	go func() {
		for r := range reqs {
			_ = r.Reply(r.Type == "keepalive@openssh.com", nil)
		}
	}()
	for nch := range chans {
		switch nch.ChannelType() {
		case "session":
			go s.session(nch)
		case "direct-tcpip":
			go directTCPIP(nch)
		default:
			_ = nch.Reject(ssh.UnknownChannelType, "not supported by cloudsim")
		}
	}
}

func directTCPIP(nch ssh.NewChannel) {
	var p struct {
		Host       string
		Port       uint32
		OriginHost string
		OriginPort uint32
	}
	if err := ssh.Unmarshal(nch.ExtraData(), &p); err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, "bad direct-tcpip payload")
		return
	}
	if ip := net.ParseIP(p.Host); p.Host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		_ = nch.Reject(ssh.Prohibited, "cloudsim forwards to loopback only")
		return
	}
	target, err := net.Dial("tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))))
	if err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nch.Accept()
	if err != nil {
		target.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	go func() { _, _ = io.Copy(target, ch); target.(*net.TCPConn).CloseWrite() }()
	_, _ = io.Copy(ch, target)
	ch.Close()
	target.Close()
}

var signals = map[string]syscall.Signal{
	"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
}

func (s *vmServer) session(nch ssh.NewChannel) {
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	var env []string
	var cmd *exec.Cmd
	done := make(chan struct{})
	for req := range reqs {
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			ok := ssh.Unmarshal(req.Payload, &kv) == nil
			if ok {
				env = append(env, kv.Name+"="+kv.Value)
			}
			_ = req.Reply(ok, nil)
		case "exec", "shell":
			argv := []string{"/bin/sh"}
			if req.Type == "exec" {
				var p struct{ Command string }
				if ssh.Unmarshal(req.Payload, &p) != nil || cmd != nil {
					_ = req.Reply(false, nil)
					continue
				}
				argv = append(argv, "-c", p.Command)
			}
			if cmd != nil {
				_ = req.Reply(false, nil)
				continue
			}
			cmd = exec.Command(argv[0], argv[1:]...)
			cmd.Dir = s.dir
			cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=" + s.dir,
				"TMPDIR=" + os.TempDir(), "SHELL=/bin/sh"}, env...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
			cmd.WaitDelay = 2 * time.Second // a background child holding stdout must not hang the session
			stdin, err := cmd.StdinPipe()
			if err == nil {
				err = cmd.Start()
			}
			if err != nil {
				fmt.Fprintf(ch.Stderr(), "cloudsim: %v\n", err)
				_ = req.Reply(false, nil)
				cmd = nil
				continue
			}
			_ = req.Reply(true, nil)
			// Not waited for: a client that never closes stdin must not keep the session.
			go func() { _, _ = io.Copy(stdin, ch); stdin.Close() }()
			go func(c *exec.Cmd) {
				err := c.Wait()
				code := 0
				if c.ProcessState != nil {
					code = c.ProcessState.ExitCode()
					if ws, ok := c.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
						code = 128 + int(ws.Signal())
					}
				} else if err != nil {
					code = 255
				}
				_ = ch.CloseWrite()
				b := make([]byte, 4)
				binary.BigEndian.PutUint32(b, uint32(code))
				_, _ = ch.SendRequest("exit-status", false, b)
				_ = ch.Close()
				close(done)
			}(cmd)
		case "signal":
			var p struct{ Signal string }
			if ssh.Unmarshal(req.Payload, &p) == nil && cmd != nil && cmd.Process != nil {
				if sig, ok := signals[p.Signal]; ok {
					_ = syscall.Kill(-cmd.Process.Pid, sig)
				}
			}
			if req.WantReply {
				_ = req.Reply(true, nil)
			}
		default:
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
	// The channel or connection is gone: nothing may outlive it.
	if cmd != nil && cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}
