package local

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// testServer is a Server on 127.0.0.1 with its keys.
type testServer struct {
	srv     *Server
	addr    string
	dir     string
	hostKey ssh.Signer
	client  ssh.Signer
	user    string
}

func startTestServer(t *testing.T, mutate func(*ServerConfig)) *testServer {
	t.Helper()
	hostKey, _, err := GenerateKey("host")
	if err != nil {
		t.Fatal(err)
	}
	client, _, err := GenerateKey("client")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := ServerConfig{HostKey: hostKey, User: "ci", AuthorizedKeys: []ssh.PublicKey{client.PublicKey()},
		WorkDir: dir, TmpDir: filepath.Join(dir, "tmp")}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return &testServer{srv: srv, addr: ln.Addr().String(), dir: dir, hostKey: hostKey, client: client, user: cfg.User}
}

func (ts *testServer) dial(t *testing.T) *ssh.Client {
	t.Helper()
	c, err := ssh.Dial("tcp", ts.addr, &ssh.ClientConfig{
		User:            ts.user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(ts.client)},
		HostKeyCallback: ssh.FixedHostKey(ts.hostKey.PublicKey()),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatalf("dial %s: %v", ts.addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// run runs command with stdin and env, returning stdout, stderr and the exit code (-1
// and the signal for a signalled command).
func run(t *testing.T, c *ssh.Client, command, stdin string, env map[string]string) (string, string, int, string) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for k, v := range env {
		if err := s.Setenv(k, v); err != nil {
			t.Fatalf("setenv %s: %v", k, err)
		}
	}
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	if stdin != "" {
		s.Stdin = strings.NewReader(stdin)
	}
	err = s.Run(command)
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0, ""
	case errors.As(err, &ee):
		if ee.Signal() != "" {
			return stdout.String(), stderr.String(), -1, ee.Signal()
		}
		return stdout.String(), stderr.String(), ee.ExitStatus(), ""
	default:
		t.Fatalf("run %q: %v", command, err)
		return "", "", 0, ""
	}
}

func TestExec(t *testing.T) {
	ts := startTestServer(t, nil)
	c := ts.dial(t)
	t.Setenv("FLOTILLA_TEST_LEAK", "must-not-reach-the-sandbox")
	tests := []struct {
		name, command, stdin string
		env                  map[string]string
		stdout, stderr       string
		code                 int
	}{
		{name: "true", command: "true"},
		{name: "exit code", command: "exit 3", code: 3},
		{name: "stdout and stderr", command: "echo out; echo err >&2", stdout: "out\n", stderr: "err\n"},
		{name: "stdin", command: "cat", stdin: "line one\nline two\n", stdout: "line one\nline two\n"},
		{name: "working directory", command: "pwd", stdout: ts.dir + "\n"},
		{name: "home and tmpdir", command: `echo "$HOME $TMPDIR $USER"`, stdout: ts.dir + " " + filepath.Join(ts.dir, "tmp") + " ci\n"},
		{name: "clean environment", command: `echo "[$FLOTILLA_TEST_LEAK]"`, stdout: "[]\n"},
		{name: "env request", command: `echo "$FOO $BAR"`, env: map[string]string{"FOO": "foo", "BAR": "b a r"}, stdout: "foo b a r\n"},
		{name: "bash when asked", command: `bash -c 'echo ${BASH_VERSION:+bash}'`, stdout: "bash\n"},
		{name: "command not found", command: "no-such-command-xyz", code: 127},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if strings.HasPrefix(tt.command, "bash") {
				if _, err := os.Stat("/bin/bash"); err != nil {
					t.Skip("bash is not installed")
				}
			}
			stdout, stderr, code, sig := run(t, c, tt.command, tt.stdin, tt.env)
			if code != tt.code || sig != "" {
				t.Errorf("exit = %d (signal %q), want %d; stderr %q", code, sig, tt.code, stderr)
			}
			if stdout != tt.stdout {
				t.Errorf("stdout = %q, want %q", stdout, tt.stdout)
			}
			if tt.stderr != "" && stderr != tt.stderr {
				t.Errorf("stderr = %q, want %q", stderr, tt.stderr)
			}
		})
	}
}

// TestExecReplyComesFirst holds the server's reply to exec until the command has
// ended: its exit must still come after the reply. Were the channel closed first, the
// client would see EOF instead of its command's result, and a job runner could run the
// job again.
func TestExecReplyComesFirst(t *testing.T) {
	testHookBeforeReply = func(pid int) {
		processGone(pid)
		// Room for an exit report that must not come before the reply.
		time.Sleep(200 * time.Millisecond)
	}
	t.Cleanup(func() { testHookBeforeReply = nil }) // after the server's Close
	c := startTestServer(t, nil).dial(t)
	tests := []struct {
		command, stdout string
		code            int
	}{
		{command: "true"},
		{command: "exit 3", code: 3},
		{command: "echo out", stdout: "out\n"},
	}
	for _, tt := range tests {
		t.Run(tt.command, func(t *testing.T) {
			stdout, stderr, code, sig := run(t, c, tt.command, "", nil)
			if code != tt.code || sig != "" || stdout != tt.stdout {
				t.Errorf("exit %d (signal %q), stdout %q, stderr %q; want exit %d, stdout %q", code, sig, stdout, stderr, tt.code, tt.stdout)
			}
		})
	}
}

func TestShellReadsStdin(t *testing.T) {
	c := startTestServer(t, nil).dial(t)
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out bytes.Buffer
	s.Stdout = &out
	s.Stdin = strings.NewReader("echo from-shell\nexit 4\n")
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	var ee *ssh.ExitError
	if err := s.Wait(); !errors.As(err, &ee) || ee.ExitStatus() != 4 {
		t.Fatalf("wait = %v, want exit status 4", err)
	}
	if out.String() != "from-shell\n" {
		t.Fatalf("stdout = %q", out.String())
	}
}

// startLines starts command and returns a reader of its stdout lines.
func startLines(t *testing.T, c *ssh.Client, command string) (*ssh.Session, *bufio.Reader) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	out, err := s.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(command); err != nil {
		t.Fatal(err)
	}
	return s, bufio.NewReader(out)
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read line: %v", err)
	}
	return strings.TrimSpace(line)
}

func readPIDLine(t *testing.T, r *bufio.Reader) int {
	t.Helper()
	pid, err := strconv.Atoi(readLine(t, r))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// processGone waits (bounded) for pid to be gone or a zombie, and reports which.
func processGone(pid int) bool {
	return eventually.Poll(10*time.Second, func() bool {
		info, ok := readProc(pid)
		return !ok || info.state == 'Z'
	})
}

func TestSignals(t *testing.T) {
	c := startTestServer(t, nil).dial(t)
	tests := []struct {
		name     string
		signal   ssh.Signal
		command  string
		wantCode int
		wantSig  string
		wantOut  string
	}{
		{name: "trapped TERM", signal: ssh.SIGTERM, command: `trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done`,
			wantCode: 7, wantOut: "got-term"},
		{name: "KILL", signal: ssh.SIGKILL, command: `echo ready; exec sleep 300`, wantSig: "KILL"},
		{name: "INT", signal: ssh.SIGINT, command: `echo ready; exec sleep 300`, wantSig: "INT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, out := startLines(t, c, tt.command)
			if got := readLine(t, out); got != "ready" {
				t.Fatalf("first line %q", got)
			}
			if err := s.Signal(tt.signal); err != nil {
				t.Fatal(err)
			}
			rest, _ := io.ReadAll(out)
			err := s.Wait()
			var ee *ssh.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("wait = %v, want an exit error", err)
			}
			if tt.wantSig != "" && ee.Signal() != tt.wantSig {
				t.Errorf("signal = %q, want %q", ee.Signal(), tt.wantSig)
			}
			if tt.wantSig == "" && ee.ExitStatus() != tt.wantCode {
				t.Errorf("exit status = %d, want %d", ee.ExitStatus(), tt.wantCode)
			}
			if !strings.Contains(string(rest), tt.wantOut) {
				t.Errorf("output %q lacks %q", rest, tt.wantOut)
			}
		})
	}
}

func TestNothingOutlivesTheSession(t *testing.T) {
	var stdin io.WriteCloser // of the current session
	ts := startTestServer(t, nil)
	c := ts.dial(t)
	tests := []struct {
		name    string
		command string
		end     func(s *ssh.Session)
	}{
		// The client closes the channel while the command runs.
		{name: "channel closed", command: `sleep 300 & echo $!; wait`, end: func(s *ssh.Session) { s.Close() }},
		// The command exits (when its stdin ends), leaving a background process in its
		// group.
		{name: "command exited", command: `sleep 300 >/dev/null 2>&1 & echo $!; read x`, end: func(s *ssh.Session) {
			stdin.Close()
			_ = s.Wait()
		}},
		// The connection drops.
		{name: "connection lost", command: `sleep 300 & echo $!; wait`, end: func(*ssh.Session) {}},
		// The server stops.
		{name: "server closed", command: `sleep 300 & echo $!; wait`, end: func(*ssh.Session) { ts.srv.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := c
			if tt.name == "connection lost" || tt.name == "server closed" {
				client = ts.dial(t)
			}
			s, err := client.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if stdin, err = s.StdinPipe(); err != nil {
				t.Fatal(err)
			}
			stdout, err := s.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Start(tt.command); err != nil {
				t.Fatal(err)
			}
			pid := readPIDLine(t, bufio.NewReader(stdout))
			if info, ok := readProc(pid); !ok || info.state == 'Z' {
				t.Fatalf("background process %d not running at start", pid)
			}
			if tt.name == "connection lost" {
				client.Close()
			} else {
				tt.end(s)
			}
			if !processGone(pid) {
				t.Fatalf("background process %d still running after %s", pid, tt.name)
			}
		})
	}
}

// echoServer accepts connections on ln and echoes them.
func echoServer(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

func roundTrip(t *testing.T, conn net.Conn, msg string) {
	t.Helper()
	defer conn.Close()
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func TestForwarding(t *testing.T) {
	sockDir, err := os.MkdirTemp("", "fl-sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, tcpLn)
	unixPath := filepath.Join(sockDir, "echo.sock")
	unixLn, err := net.Listen("unix", unixPath)
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, unixLn)
	dockerPath := filepath.Join(sockDir, "docker.sock")
	dockerLn, err := net.Listen("unix", dockerPath)
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, dockerLn)

	ts := startTestServer(t, func(c *ServerConfig) { c.DockerSocket = dockerPath })
	c := ts.dial(t)
	_, port, _ := net.SplitHostPort(tcpLn.Addr().String())
	tests := []struct {
		name, network, addr string
		wantErr             string
	}{
		{name: "tcp to 127.0.0.1", network: "tcp", addr: tcpLn.Addr().String()},
		{name: "tcp to localhost", network: "tcp", addr: "localhost:" + port},
		{name: "tcp to another host", network: "tcp", addr: "192.0.2.1:80", wantErr: "not allowed"},
		{name: "tcp to a closed port", network: "tcp", addr: "127.0.0.1:1", wantErr: "connect to 127.0.0.1:1"},
		{name: "unix socket", network: "unix", addr: unixPath},
		{name: "docker socket mapped", network: "unix", addr: DockerSocketPath},
		{name: "missing unix socket", network: "unix", addr: filepath.Join(sockDir, "nope.sock"), wantErr: "nope.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := c.Dial(tt.network, tt.addr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("dial error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, conn, "ping "+tt.name)
		})
	}
}

func TestAuthAndHostKey(t *testing.T) {
	ts := startTestServer(t, func(c *ServerConfig) { c.Password = "s3cret" })
	other, _, err := GenerateKey("other")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		user    string
		auth    ssh.AuthMethod
		hostKey ssh.PublicKey
		wantErr string
	}{
		{name: "authorized key", user: "ci", auth: ssh.PublicKeys(ts.client), hostKey: ts.hostKey.PublicKey()},
		{name: "password", user: "ci", auth: ssh.Password("s3cret"), hostKey: ts.hostKey.PublicKey()},
		{name: "wrong key", user: "ci", auth: ssh.PublicKeys(other), hostKey: ts.hostKey.PublicKey(), wantErr: "unable to authenticate"},
		{name: "wrong password", user: "ci", auth: ssh.Password("nope"), hostKey: ts.hostKey.PublicKey(), wantErr: "unable to authenticate"},
		{name: "wrong user", user: "root2", auth: ssh.PublicKeys(ts.client), hostKey: ts.hostKey.PublicKey(), wantErr: "unable to authenticate"},
		{name: "unexpected host key", user: "ci", auth: ssh.PublicKeys(ts.client), hostKey: other.PublicKey(), wantErr: "host key mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ssh.Dial("tcp", ts.addr, &ssh.ClientConfig{User: tt.user, Auth: []ssh.AuthMethod{tt.auth},
				HostKeyCallback: ssh.FixedHostKey(tt.hostKey), Timeout: 10 * time.Second})
			if tt.wantErr != "" {
				if err == nil {
					c.Close()
					t.Fatal("dial succeeded, want an error")
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("dial error %q, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		})
	}
}

func TestKeepaliveAnswered(t *testing.T) {
	c := startTestServer(t, nil).dial(t)
	ok, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
	if err != nil || !ok {
		t.Fatalf("keepalive = %v, %v; want true", ok, err)
	}
	ok, _, err = c.SendRequest("tcpip-forward", true, ssh.Marshal(struct {
		Addr string
		Port uint32
	}{"127.0.0.1", 0}))
	if err != nil || ok {
		t.Fatalf("tcpip-forward = %v, %v; want a refusal", ok, err)
	}
}

func TestNewServerRejectsIncompleteConfig(t *testing.T) {
	key, _, err := GenerateKey("k")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  ServerConfig
		want string
	}{
		{"no host key", ServerConfig{User: "u", Password: "p", WorkDir: "/"}, "no host key"},
		{"no user", ServerConfig{HostKey: key, Password: "p", WorkDir: "/"}, "no user name"},
		{"nobody can log in", ServerConfig{HostKey: key, User: "u", WorkDir: "/"}, "nobody could log in"},
		{"namespaces without ns-init", ServerConfig{HostKey: key, User: "u", Password: "p", WorkDir: "/", Isolation: IsolationNamespaces}, "SelfCommand"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewServer(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewServer error = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestNamespacesIsolation(t *testing.T) {
	self := selfCommand(t)
	if err := probeNamespaces(context.Background(), self); err != nil {
		t.Skipf("namespaces are not available here (needs root or CAP_SYS_ADMIN on Linux): %v", err)
	}
	ts := startTestServer(t, func(c *ServerConfig) {
		c.Isolation, c.SelfCommand, c.Hostname = IsolationNamespaces, self, "sandbox-host"
	})
	c := ts.dial(t)
	tests := []struct {
		name, command, want string
		code                int
	}{
		{name: "own pid namespace", command: `tr '\0' '\n' </proc/1/cmdline | sed -n 3p`, want: "ns-init\n"},
		{name: "own hostname", command: `cat /proc/sys/kernel/hostname`, want: "sandbox-host\n"},
		{name: "own /proc", command: `ls /proc | grep -c '^[0-9]*$'`}, // ns-init, sh, ls, grep
		{name: "exit code", command: `exit 5`, code: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, code, _ := run(t, c, tt.command, "", nil)
			if code != tt.code {
				t.Fatalf("exit = %d, want %d; stderr %q", code, tt.code, stderr)
			}
			if tt.name == "own /proc" {
				n, _ := strconv.Atoi(strings.TrimSpace(out))
				if n < 2 || n > 5 {
					t.Fatalf("%d processes visible in /proc, want only the sandbox's few", n)
				}
				return
			}
			if out != tt.want {
				t.Fatalf("stdout = %q, want %q", out, tt.want)
			}
		})
	}
	t.Run("signal forwarded", func(t *testing.T) {
		s, out := startLines(t, c, `trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.05; done`)
		if got := readLine(t, out); got != "ready" {
			t.Fatalf("first line %q", got)
		}
		if err := s.Signal(ssh.SIGTERM); err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(out)
		var ee *ssh.ExitError
		if err := s.Wait(); !errors.As(err, &ee) || ee.ExitStatus() != 9 {
			t.Fatalf("wait = %v, want exit 9", err)
		}
		if !strings.Contains(string(rest), "got-term") {
			t.Fatalf("output %q", rest)
		}
	})
}

func TestStartSandbox(t *testing.T) {
	sb, err := StartSandbox(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	signer, err := ssh.ParsePrivateKey(sb.Info.Key)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(sb.Info.HostKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", sb.Addr, &ssh.ClientConfig{User: sb.Info.Username, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, _ := c.NewSession()
	out, err := s.Output("echo sandbox")
	if err != nil || string(out) != "sandbox\n" {
		t.Fatalf("output %q, %v", out, err)
	}
}
