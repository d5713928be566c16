package sshdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// GoOptions configure StartGo.
type GoOptions struct {
	// KeyType and KeyFormat choose the client key the server accepts.
	KeyType   KeyType
	KeyFormat KeyFormat
	// HostKeyType chooses the server's host key.
	HostKeyType KeyType
	// Password, if set, is accepted for User by password authentication.
	Password string
	// NoPublicKey turns public key authentication off (password only).
	NoPublicKey bool
	// MaxSessions limits concurrent session channels per connection, rejecting extra
	// ones as OpenSSH does ("administratively prohibited"); 0 means no limit.
	MaxSessions int
	// Port to listen on; 0 picks a free one.
	Port int
}

// StartGo runs an in-process SSH server built on golang.org/x/crypto/ssh: exec
// sessions run `/bin/sh -c` as the current user, with signals, exit status and
// keepalive replies; direct-tcpip and direct-streamlocal@openssh.com forwarding work.
// It stands in where OpenSSH cannot be used, e.g. password logins, and as a second
// implementation in benchmarks.
func StartGo(t testing.TB, opts GoOptions) *Server {
	t.Helper()
	keyPEM, signer := GenerateKey(t, opts.KeyType, opts.KeyFormat)
	_, hostSigner := GenerateKey(t, opts.HostKeyType, OpenSSH)
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshdtest: current user: %v", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.Port)))
	if err != nil {
		t.Fatalf("sshdtest: listen: %v", err)
	}
	cfg := &ssh.ServerConfig{}
	cfg.AddHostKey(hostSigner)
	clientKey := signer.PublicKey().Marshal()
	if !opts.NoPublicKey {
		cfg.PublicKeyCallback = func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if md.User() == u.Username && bytes.Equal(key.Marshal(), clientKey) {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("key not authorized")
		}
	}
	if opts.Password != "" {
		cfg.PasswordCallback = func(md ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if md.User() == u.Username && string(pw) == opts.Password {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("wrong password")
		}
	}
	port := ln.Addr().(*net.TCPAddr).Port
	g := &goServer{ln: ln, cfg: cfg, maxSessions: opts.MaxSessions, log: &syncbuf.Buffer{}, conns: map[net.Conn]bool{}}
	s := &Server{
		Addr: ln.Addr().String(), Port: port, User: u.Username, Key: keyPEM, Signer: signer,
		HostKey: ssh.MarshalAuthorizedKey(hostSigner.PublicKey()), HostSigner: hostSigner, log: g.log,
	}
	if opts.NoPublicKey {
		s.Key = nil
	}
	s.stopFn = g.stop
	go g.serve()
	t.Cleanup(s.Stop)
	return s
}

type goServer struct {
	ln          net.Listener
	cfg         *ssh.ServerConfig
	maxSessions int
	log         *syncbuf.Buffer
	wg          sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]bool
	done  bool
}

func (g *goServer) logf(format string, args ...any) { fmt.Fprintf(g.log, format+"\n", args...) }

func (g *goServer) serve() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		if g.done {
			g.mu.Unlock()
			c.Close()
			return
		}
		g.conns[c] = true
		g.wg.Add(1)
		g.mu.Unlock()
		go func() {
			defer g.wg.Done()
			g.handleConn(c)
			g.mu.Lock()
			delete(g.conns, c)
			g.mu.Unlock()
		}()
	}
}

func (g *goServer) stop() {
	g.ln.Close()
	g.mu.Lock()
	g.done = true
	for c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

func (g *goServer) handleConn(c net.Conn) {
	defer c.Close()
	sc, chans, reqs, err := ssh.NewServerConn(c, g.cfg)
	if err != nil {
		g.logf("handshake from %s: %v", c.RemoteAddr(), err)
		return
	}
	defer sc.Close()
	go func() {
		for r := range reqs {
			// Like OpenSSH: unknown global requests (keepalive@openssh.com) get a
			// failure reply, which proves the connection is alive.
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
	}()
	var sessions sync.WaitGroup
	var mu sync.Mutex
	open := 0
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			mu.Lock()
			if g.maxSessions > 0 && open >= g.maxSessions {
				mu.Unlock()
				_ = nc.Reject(ssh.Prohibited, "open failed")
				continue
			}
			open++
			mu.Unlock()
			sessions.Add(1)
			go func() {
				defer sessions.Done()
				g.handleSession(nc)
				mu.Lock()
				open--
				mu.Unlock()
			}()
		case "direct-tcpip":
			var p struct {
				Host     string
				Port     uint32
				OrigHost string
				OrigPort uint32
			}
			if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
				_ = nc.Reject(ssh.ConnectionFailed, "bad payload")
				continue
			}
			go g.forward(nc, "tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))))
		case "direct-streamlocal@openssh.com":
			var p struct {
				Path      string
				Reserved0 string
				Reserved1 uint32
			}
			if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
				_ = nc.Reject(ssh.ConnectionFailed, "bad payload")
				continue
			}
			go g.forward(nc, "unix", p.Path)
		default:
			_ = nc.Reject(ssh.UnknownChannelType, "unknown channel type")
		}
	}
	sessions.Wait()
}

func (g *goServer) forward(nc ssh.NewChannel, network, addr string) {
	target, err := net.Dial(network, addr)
	if err != nil {
		_ = nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		target.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(target, ch)
		if tc, ok := target.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() { _, _ = io.Copy(ch, target); _ = ch.CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
	ch.Close()
	target.Close()
}

func (g *goServer) handleSession(nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	var env []string
	var cmd *exec.Cmd
	exited := make(chan struct{})
	for {
		var r *ssh.Request
		var ok bool
		select {
		case r, ok = <-reqs:
		case <-exited:
			g.sendExit(ch, cmd)
			return
		}
		if !ok {
			if cmd != nil && cmd.Process != nil {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
			return
		}
		switch r.Type {
		case "env":
			var kv struct{ Name, Value string }
			if ssh.Unmarshal(r.Payload, &kv) == nil {
				env = append(env, kv.Name+"="+kv.Value)
			}
			_ = r.Reply(true, nil)
		case "exec":
			var p struct{ Command string }
			if cmd != nil || ssh.Unmarshal(r.Payload, &p) != nil {
				_ = r.Reply(false, nil)
				continue
			}
			cmd = exec.CommandContext(context.Background(), "/bin/sh", "-c", p.Command)
			cmd.Env = append(os.Environ(), env...)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			// A client may keep stdin open after the command exits; don't wait for it.
			cmd.WaitDelay = time.Second
			if err := cmd.Start(); err != nil {
				_ = r.Reply(false, nil)
				return
			}
			_ = r.Reply(true, nil)
			go func() { _ = cmd.Wait(); close(exited) }()
		case "signal":
			var p struct{ Signal string }
			if cmd != nil && cmd.Process != nil && ssh.Unmarshal(r.Payload, &p) == nil {
				if n, ok := signals[p.Signal]; ok {
					_ = syscall.Kill(cmd.Process.Pid, n)
				}
			}
			if r.WantReply {
				_ = r.Reply(true, nil)
			}
		default:
			if r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
	}
}

var signals = map[string]syscall.Signal{"KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP}

func (g *goServer) sendExit(ch ssh.Channel, cmd *exec.Cmd) {
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		name := ""
		for n, s := range signals {
			if s == ws.Signal() {
				name = n
			}
		}
		if name != "" {
			_, _ = ch.SendRequest("exit-signal", false, ssh.Marshal(&struct {
				Signal     string
				CoreDumped bool
				Msg, Lang  string
			}{Signal: name}))
			return
		}
	}
	code := cmd.ProcessState.ExitCode()
	if code < 0 {
		code = 255
	}
	_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(&struct{ Status uint32 }{uint32(code)}))
}
