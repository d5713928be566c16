package local

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// DefaultPath is the PATH commands in a sandbox get: the usual system directories, not
// whatever the plugin process happened to inherit.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DockerSocketPath is the socket path a client asks for (direct-streamlocal) to reach the
// Docker daemon; when ServerConfig.DockerSocket is set, it is mapped to that socket.
const DockerSocketPath = "/var/run/docker.sock"

// ServerConfig configures one sandbox's SSH server.
type ServerConfig struct {
	// HostKey identifies the server; clients are told its public key in ConnectInfo.
	HostKey ssh.Signer
	// User is the only user name accepted.
	User string
	// AuthorizedKeys are the client public keys accepted.
	AuthorizedKeys []ssh.PublicKey
	// Password, when not empty, is accepted for User as well.
	Password string
	// WorkDir is where commands run; it is also their HOME.
	WorkDir string
	// TmpDir is the commands' TMPDIR, so temporary files stay inside the sandbox.
	TmpDir string
	// Path is the commands' PATH; empty means DefaultPath.
	Path string
	// DockerSocket, when set, is the host socket that DockerSocketPath is mapped to.
	DockerSocket string
	// Isolation is IsolationNone or IsolationNamespaces.
	Isolation string
	// Hostname is set in the UTS namespace when Isolation is IsolationNamespaces.
	Hostname string
	// SelfCommand runs this program's hidden ns-init subcommand (binary plus the
	// arguments selecting the local plugin). Needed only for IsolationNamespaces.
	SelfCommand []string
	// Logger receives connection and session events; nil discards them.
	Logger *slog.Logger
}

// Server is one sandbox's SSH server: exec and shell sessions, TCP and unix-socket
// forwarding, keepalives. Close kills every command it started.
type Server struct {
	cfg    ServerConfig
	ssh    *ssh.ServerConfig
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	ln     net.Listener
	conns  map[*ssh.ServerConn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewServer checks cfg and returns a server ready to Serve.
func NewServer(cfg ServerConfig) (*Server, error) {
	var errs []error
	if cfg.HostKey == nil {
		errs = append(errs, errors.New("ssh server: no host key"))
	}
	if cfg.User == "" {
		errs = append(errs, errors.New("ssh server: no user name"))
	}
	if len(cfg.AuthorizedKeys) == 0 && cfg.Password == "" {
		errs = append(errs, errors.New("ssh server: no authorized key and no password: nobody could log in"))
	}
	if cfg.WorkDir == "" {
		errs = append(errs, errors.New("ssh server: no work directory"))
	}
	if cfg.Isolation == "" {
		cfg.Isolation = IsolationNone
	}
	if cfg.Isolation == IsolationNamespaces && len(cfg.SelfCommand) == 0 {
		errs = append(errs, errors.New("ssh server: namespaces isolation needs SelfCommand to run ns-init"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if cfg.TmpDir == "" {
		cfg.TmpDir = cfg.WorkDir
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, conns: map[*ssh.ServerConn]struct{}{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	sc := &ssh.ServerConfig{
		PublicKeyCallback: func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if md.User() != cfg.User {
				return nil, fmt.Errorf("user %q is not %q", md.User(), cfg.User)
			}
			for _, k := range cfg.AuthorizedKeys {
				if k.Type() == key.Type() && string(k.Marshal()) == string(key.Marshal()) {
					return &ssh.Permissions{}, nil
				}
			}
			return nil, fmt.Errorf("public key %s is not authorized", ssh.FingerprintSHA256(key))
		},
		ServerVersion: "SSH-2.0-flotilla-local",
	}
	if cfg.Password != "" {
		sc.PasswordCallback = func(md ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if md.User() == cfg.User && constantTimeEqual(pw, []byte(cfg.Password)) {
				return &ssh.Permissions{}, nil
			}
			return nil, errors.New("wrong user or password")
		}
	}
	sc.AddHostKey(cfg.HostKey)
	s.ssh = sc
	return s, nil
}

func constantTimeEqual(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := range a {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

// Serve accepts connections on ln until Close. It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.ln = ln
	s.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("ssh server: accept on %s: %w", ln.Addr(), err)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handleConn(nc)
		}()
	}
}

// Close stops accepting, drops every connection and kills every command the server
// started (their whole process groups). It waits for the connections' goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.ln != nil {
		s.ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// handshakeTimeout bounds a client's key exchange and authentication, so that a
// half-open connection does not hold a goroutine forever.
const handshakeTimeout = 30 * time.Second

func (s *Server) handleConn(nc net.Conn) {
	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(nc, s.ssh)
	if err != nil {
		s.log.Debug("ssh handshake failed", "remote", nc.RemoteAddr().String(), "error", err)
		nc.Close()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		sc.Close()
		return
	}
	s.conns[sc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, sc)
		s.mu.Unlock()
		sc.Close()
	}()
	s.log.Debug("ssh connection", "remote", nc.RemoteAddr().String(), "user", sc.User())
	go s.globalRequests(reqs)
	var chWG sync.WaitGroup
	for nch := range chans {
		chWG.Add(1)
		go func() {
			defer chWG.Done()
			switch nch.ChannelType() {
			case "session":
				s.session(nch)
			case "direct-tcpip":
				s.directTCPIP(nch)
			case "direct-streamlocal@openssh.com":
				s.directStreamLocal(nch)
			default:
				_ = nch.Reject(ssh.UnknownChannelType, "channel type "+nch.ChannelType()+" is not supported")
			}
		}()
	}
	// The connection is gone: every channel is closed, so their handlers finish
	// (killing what they started) promptly.
	chWG.Wait()
}

// globalRequests answers OpenSSH keepalives; remote forwarding is not offered.
func (s *Server) globalRequests(reqs <-chan *ssh.Request) {
	for r := range reqs {
		if !r.WantReply {
			continue
		}
		_ = r.Reply(r.Type == "keepalive@openssh.com", nil)
	}
}

// GenerateKey returns a new ed25519 key as a signer and in OpenSSH PEM form.
func GenerateKey(comment string) (ssh.Signer, []byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, nil, fmt.Errorf("encode ed25519 key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("ed25519 signer: %w", err)
	}
	return signer, pem.EncodeToMemory(block), nil
}

// Sandbox is an SSH server started in this process on 127.0.0.1 with fresh keys, for
// tests and benchmarks (B6, B7) that need the local plugin's server without a plugin.
type Sandbox struct {
	*Server
	// Info reaches the sandbox: address, user, client key and host key.
	Info provider.ConnectInfo
	// Addr is the listening address.
	Addr string
}

// StartSandbox starts a server with a generated host key that accepts a generated
// client key, running commands in dir (which must exist). Close stops it.
func StartSandbox(dir string) (*Sandbox, error) {
	hostKey, _, err := GenerateKey("sandbox host")
	if err != nil {
		return nil, err
	}
	client, clientPEM, err := GenerateKey("sandbox client")
	if err != nil {
		return nil, err
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("sandbox: create %s: %w", tmp, err)
	}
	user := defaultUser()
	srv, err := NewServer(ServerConfig{HostKey: hostKey, User: user, AuthorizedKeys: []ssh.PublicKey{client.PublicKey()},
		WorkDir: dir, TmpDir: tmp})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sandbox: listen on 127.0.0.1: %w", err)
	}
	go func() { _ = srv.Serve(ln) }()
	addr := ln.Addr().String()
	return &Sandbox{Server: srv, Addr: addr, Info: provider.ConnectInfo{
		ConnectorConfig: provider.ConnectorConfig{Protocol: provider.ProtocolSSH, Username: user, Key: clientPEM,
			Timeout: 30 * time.Second},
		ID: "sandbox-" + filepath.Base(dir), InternalAddr: addr, ExternalAddr: addr,
		HostKey: ssh.MarshalAuthorizedKey(hostKey.PublicKey()),
	}}, nil
}

var _ io.Closer = (*Server)(nil)
