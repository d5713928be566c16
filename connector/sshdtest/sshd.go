package sshdtest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// SSHDPath is where Debian's openssh-server installs sshd.
const SSHDPath = "/usr/sbin/sshd"

// Options configure Start. The zero value is an ed25519 client key in OpenSSH format,
// an ed25519 host key, sshd's default MaxSessions and unix socket forwarding allowed.
type Options struct {
	// KeyType and KeyFormat choose the client key written to authorized_keys.
	KeyType   KeyType
	KeyFormat KeyFormat
	// HostKeyType chooses the server's host key.
	HostKeyType KeyType
	// ClientKey and HostKey, if set, are PEM private keys to use instead of generated
	// ones, so that a test can know them before the server starts.
	ClientKey, HostKey []byte
	// Port to listen on; 0 picks a free one (ReservePort). A test that sets it takes
	// the number from ReservePort.
	Port int
	// User is the account to log in as; empty means the current user. Another
	// account needs Start to run as root (see LoginUser).
	User string
	// MaxSessions sets sshd's MaxSessions; 0 keeps its default (10).
	MaxSessions int
	// DenyStreamLocal sets AllowStreamLocalForwarding no.
	DenyStreamLocal bool
	// ExtraConfig lines are appended to sshd_config.
	ExtraConfig []string
}

// Server is a running SSH server for a test.
type Server struct {
	// Addr is "127.0.0.1:<port>".
	Addr string
	Port int
	// User is the account to log in as (the current user: root in CI).
	User string
	// Key is the client private key (as asked in Options), Signer the same key.
	Key    []byte
	Signer ssh.Signer
	// HostKey is the server's public host key in authorized_keys form.
	HostKey    []byte
	HostSigner ssh.Signer
	// Dir holds the server's configuration and keys.
	Dir string

	cmd      *exec.Cmd
	log      *syncbuf.Buffer
	stopOnce sync.Once
	exited   chan struct{}
	stopFn   func()
}

// ConnectInfo returns what a plugin would report for this server as instance id, with
// the host key included.
func (s *Server) ConnectInfo(id string) provider.ConnectInfo {
	return provider.ConnectInfo{
		ConnectorConfig: provider.ConnectorConfig{OS: "linux", Arch: "amd64", Protocol: provider.ProtocolSSH,
			Username: s.User, Key: s.Key, Timeout: 20 * time.Second},
		ID: id, InternalAddr: s.Addr, HostKey: s.HostKey,
	}
}

// Log returns what the server logged so far.
func (s *Server) Log() string {
	if s.log == nil {
		return ""
	}
	return s.log.String()
}

// Stop stops the server and every process it started (connections and their commands).
// It is also registered as a test cleanup.
func (s *Server) Stop() { s.stopOnce.Do(s.stopFn) }

// Available reports whether OpenSSH's sshd is installed, and why not.
func Available() (bool, string) {
	if _, err := os.Stat(SSHDPath); err != nil {
		return false, fmt.Sprintf("OpenSSH sshd not found at %s (install Debian package openssh-server): %v", SSHDPath, err)
	}
	return true, ""
}

// LoginUser returns a local account other than root that can log in over SSH (a uid
// of 1000 or more and a real shell), for tests of what OpenSSH treats differently for
// root: it does not deliver signals to root sessions, because it turns privilege
// separation off after a root login.
func LoginUser() (string, bool) {
	data, err := os.ReadFile("/etc/passwd")
	if err != nil || os.Geteuid() != 0 {
		return "", false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Split(line, ":")
		if len(f) < 7 {
			continue
		}
		uid, err := strconv.Atoi(f[2])
		shell := f[6]
		if err != nil || uid < 1000 || uid >= 60000 || strings.HasSuffix(shell, "nologin") || strings.HasSuffix(shell, "false") {
			continue
		}
		if _, err := os.Stat(shell); err == nil {
			return f[0], true
		}
	}
	return "", false
}

// Start runs OpenSSH sshd in the foreground (-D -e -f <config>) and waits until it
// answers with its banner. It skips the test if sshd is not installed.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if ok, why := Available(); !ok {
		t.Skip(why)
	}
	dir := t.TempDir()
	u, err := user.Current()
	if err != nil {
		t.Fatalf("sshdtest: current user: %v", err)
	}
	if os.Geteuid() == 0 {
		// sshd refuses to start without its privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
	}
	keyPEM, signer := givenOrNewKey(t, opts.ClientKey, opts.KeyType, opts.KeyFormat)
	hostPEM, hostSigner := givenOrNewKey(t, opts.HostKey, opts.HostKeyType, OpenSSH)
	hostKeyPath := filepath.Join(dir, "host_key")
	authPath := filepath.Join(dir, "authorized_keys")
	mustWrite(t, hostKeyPath, hostPEM, 0o600)
	loginUser := u.Username
	if opts.User != "" && opts.User != u.Username {
		// sshd reads authorized_keys as the user logging in, so it must live where
		// that user can read it.
		loginUser = opts.User
		authDir, err := os.MkdirTemp("", "sshdtest-auth")
		if err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(authDir) })
		if err := os.Chmod(authDir, 0o755); err != nil {
			t.Fatalf("sshdtest: %v", err)
		}
		authPath = filepath.Join(authDir, "authorized_keys")
		mustWrite(t, authPath, ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644)
	} else {
		mustWrite(t, authPath, ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o600)
	}
	mustWrite(t, filepath.Join(dir, "client_key"), keyPEM, 0o600)

	port := opts.Port
	if port == 0 {
		// sshd cannot be handed a listener; the reservation keeps the port from anyone
		// else until the server has stopped, and sshd (SO_REUSEADDR) binds it anyway.
		port = ReservePort(t)
	}
	cfg := []string{
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + hostKeyPath,
		"AuthorizedKeysFile " + authPath,
		"PidFile none",
		"PermitRootLogin yes",
		"StrictModes no",
		"PubkeyAuthentication yes",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"AllowTcpForwarding yes",
		"UseDNS no",
		"LogLevel VERBOSE",
		// Benchmarks open connections back to back; the default 10:30:100 drops some.
		"MaxStartups 200",
		"AcceptEnv FLOTILLA_*",
	}
	if loginUser != u.Username {
		// Without PAM, sshd refuses accounts whose password is locked ("!" in
		// /etc/shadow), which service accounts usually are; PAM's account check
		// allows key logins to them.
		cfg = append(cfg, "UsePAM yes")
	} else {
		cfg = append(cfg, "UsePAM no")
	}
	if opts.DenyStreamLocal {
		cfg = append(cfg, "AllowStreamLocalForwarding no")
	} else {
		cfg = append(cfg, "AllowStreamLocalForwarding yes")
	}
	if opts.MaxSessions > 0 {
		cfg = append(cfg, "MaxSessions "+strconv.Itoa(opts.MaxSessions))
	}
	cfg = append(cfg, opts.ExtraConfig...)
	cfgPath := filepath.Join(dir, "sshd_config")
	mustWrite(t, cfgPath, []byte(strings.Join(cfg, "\n")+"\n"), 0o600)

	s := &Server{
		Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port, User: loginUser,
		Key: keyPEM, Signer: signer, HostKey: ssh.MarshalAuthorizedKey(hostSigner.PublicKey()), HostSigner: hostSigner,
		Dir: dir, log: &syncbuf.Buffer{}, exited: make(chan struct{}),
	}
	s.cmd = exec.Command(SSHDPath, "-D", "-e", "-f", cfgPath)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("sshdtest: start sshd: %v", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	s.stopFn = func() {
		pid := s.cmd.Process.Pid
		// Per-connection sshd processes call setsid, so killing the process group is
		// not enough: kill the whole tree, children first.
		killTree(pid)
		<-s.exited
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("sshd log (%s):\n%s", s.Addr, s.Log())
		}
	})
	if err := waitBanner(s.Addr, s.exited, 10*time.Second); err != nil {
		s.Stop()
		t.Fatalf("sshdtest: sshd on %s did not come up: %v\nconfig:\n%s\nlog:\n%s", s.Addr, err, strings.Join(cfg, "\n"), s.Log())
	}
	return s
}

// KillConnections kills the per-connection sshd processes (and what they run) but
// leaves the listener up: to the client, every connection drops as if the instance's
// sshd had been restarted.
func (s *Server) KillConnections() {
	for _, child := range children(s.cmd.Process.Pid) {
		killTree(child)
	}
}

func givenOrNewKey(t testing.TB, given []byte, kt KeyType, f KeyFormat) ([]byte, ssh.Signer) {
	t.Helper()
	if given == nil {
		return GenerateKey(t, kt, f)
	}
	signer, err := ssh.ParsePrivateKey(given)
	if err != nil {
		t.Fatalf("sshdtest: given key: %v", err)
	}
	return given, signer
}

func mustWrite(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatalf("sshdtest: %v", err)
	}
}

// waitBanner polls until the server at addr sends an SSH banner. It is a readiness
// check, not a timing assertion.
func waitBanner(addr string, exited <-chan struct{}, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("sshd exited")
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil && strings.HasPrefix(line, "SSH-") {
				return nil
			}
			err = fmt.Errorf("no banner: %q %v", line, rerr)
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return last
}

// children lists the processes whose parent is pid, from /proc.
func children(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name is in parentheses and may hold spaces: parse after it.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 1 {
			if ppid, _ := strconv.Atoi(fields[1]); ppid == pid {
				out = append(out, child)
			}
		}
	}
	return out
}

// killTree kills pid and its descendants. Children are collected before the parent is
// killed, since they are re-parented once it dies.
func killTree(pid int) {
	_ = syscall.Kill(pid, syscall.SIGSTOP)
	for _, c := range children(pid) {
		killTree(c)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}
