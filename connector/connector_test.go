package connector_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func TestDialKeyTypesAgainstOpenSSH(t *testing.T) {
	t.Parallel()
	for _, kt := range []sshdtest.KeyType{sshdtest.ED25519, sshdtest.RSA, sshdtest.ECDSA} {
		for _, f := range []sshdtest.KeyFormat{sshdtest.OpenSSH, sshdtest.PEM} {
			t.Run(string(kt)+"/"+string(f), func(t *testing.T) {
				t.Parallel()
				// The host key has the same type, which exercises host key algorithm
				// negotiation for each kind of reported key.
				srv := sshdtest.Start(t, sshdtest.Options{KeyType: kt, KeyFormat: f, HostKeyType: kt})
				c := dial(t, srv.ConnectInfo("i-"+string(kt)), opts())
				if got := runOut(t, c, "echo ok"); got != "ok\n" {
					t.Fatalf("output %q, want %q", got, "ok\n")
				}
			})
		}
	}
}

func TestDialRejectsBadCredentials(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t, sshdtest.Options{})
	otherKey, _ := sshdtest.GenerateKey(t, sshdtest.ED25519, sshdtest.OpenSSH)
	tests := []struct {
		name      string
		mutate    func(*provider.ConnectInfo)
		stage     connector.Stage
		wantInErr []string
	}{
		{"garbage key", func(i *provider.ConnectInfo) { i.Key = []byte("not a key") }, connector.StageConfig,
			[]string{"parse private key", "key_path"}},
		{"key not authorized", func(i *provider.ConnectInfo) { i.Key = otherKey }, connector.StageAuth,
			[]string{"dial ssh " + srv.Addr + " as " + srv.User + " (auth: publickey)", ": auth: ", "unable to authenticate"}},
		{"no credentials", func(i *provider.ConnectInfo) { i.Key = nil }, connector.StageConfig,
			[]string{"no credentials"}},
		{"no username", func(i *provider.ConnectInfo) { i.Username = "" }, connector.StageConfig,
			[]string{"no username"}},
		{"no address", func(i *provider.ConnectInfo) { i.InternalAddr = "" }, connector.StageConfig,
			[]string{"no internal or external address"}},
		{"unparseable reported host key", func(i *provider.ConnectInfo) { i.HostKey = []byte("ssh-ed25519 !!!") }, connector.StageHostKey,
			[]string{"authorized_keys form"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := srv.ConnectInfo("i-1")
			tt.mutate(&info)
			_, err := connector.Dial(ctxT(t), info, opts())
			if err == nil {
				t.Fatal("dial succeeded")
			}
			e := asError(t, err)
			if e.Stage != tt.stage {
				t.Errorf("stage %q, want %q (%v)", e.Stage, tt.stage, err)
			}
			if e.Attempts > 1 {
				t.Errorf("a permanent failure was retried %d times: %v", e.Attempts, err)
			}
			for _, s := range tt.wantInErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestParsePrivateKeyPassphrase(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen (openssh-client) not installed")
	}
	path := filepath.Join(t.TempDir(), "k")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = connector.ParsePrivateKey(key)
	if err == nil || !strings.Contains(err.Error(), "passphrase") || !strings.Contains(err.Error(), "ssh-keygen -p") {
		t.Fatalf("err = %v, want an explanation of the passphrase and how to remove it", err)
	}
}

func TestReportedHostKeyMismatchIsRefused(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t, sshdtest.Options{})
	_, other := sshdtest.GenerateKey(t, sshdtest.ED25519, sshdtest.OpenSSH)
	info := srv.ConnectInfo("i-1")
	info.HostKey = ssh.MarshalAuthorizedKey(other.PublicKey())
	_, err := connector.Dial(ctxT(t), info, opts())
	var hk *connector.HostKeyError
	if !errors.As(err, &hk) {
		t.Fatalf("err = %v, want a *HostKeyError", err)
	}
	if hk.Pinned {
		t.Error("reported as a pin, want reported by the plugin")
	}
	if e := asError(t, err); e.Stage != connector.StageHostKey || e.Attempts != 1 {
		t.Errorf("stage %q attempts %d, want host key after 1 attempt", e.Stage, e.Attempts)
	}
	if !strings.Contains(err.Error(), ssh.FingerprintSHA256(srv.HostSigner.PublicKey())) {
		t.Errorf("error %q does not name the presented key's fingerprint", err)
	}
}

func TestTrustOnFirstUsePinsAndRefusesChange(t *testing.T) {
	t.Parallel()
	first := sshdtest.Start(t, sshdtest.Options{})
	second := sshdtest.Start(t, sshdtest.Options{})
	storePath := filepath.Join(t.TempDir(), "state", "known_hosts")
	store, err := connector.OpenFileHostKeyStore(storePath)
	if err != nil {
		t.Fatal(err)
	}
	o := opts()
	o.HostKeys = store

	info := first.ConnectInfo("i-1")
	info.HostKey = nil // the plugin reports none: trust on first use
	c := dial(t, info, o)
	c.Close()

	// The pin survives a restart of the host: a new store reads it from the file.
	reopened, err := connector.OpenFileHostKeyStore(storePath)
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := reopened.Lookup("i-1")
	if err != nil || pinned == nil || ssh.FingerprintSHA256(pinned) != ssh.FingerprintSHA256(first.HostSigner.PublicKey()) {
		t.Fatalf("pin after reopen = %v, %v; want the first server's key", pinned, err)
	}
	o.HostKeys = reopened

	// The same instance ID now presents another key (the second server).
	moved := second.ConnectInfo("i-1")
	moved.HostKey = nil
	_, err = connector.Dial(ctxT(t), moved, o)
	var hk *connector.HostKeyError
	if !errors.As(err, &hk) || !hk.Pinned {
		t.Fatalf("err = %v, want a pinned *HostKeyError", err)
	}
	for _, s := range []string{"changed", storePath, `"i-1"`, "remove"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
	// The pin is not replaced by the refused key.
	if k, _ := reopened.Lookup("i-1"); ssh.FingerprintSHA256(k) != ssh.FingerprintSHA256(first.HostSigner.PublicKey()) {
		t.Error("the refused key replaced the pin")
	}

	// Forgetting the instance (it was deleted) lets a new one pin its key.
	if err := reopened.Forget("i-1"); err != nil {
		t.Fatal(err)
	}
	dial(t, moved, o).Close()
}

func TestFileHostKeyStoreReportsBadLine(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(path, []byte("# comment\ni-1 ssh-ed25519 AAAAnotbase64!!\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := connector.OpenFileHostKeyStore(path)
	if err == nil || !strings.Contains(err.Error(), path+":2:") || !strings.Contains(err.Error(), "i-1") {
		t.Fatalf("err = %v, want one naming %s:2 and the instance", err, path)
	}
}

func TestDialWaitsForLateServer(t *testing.T) {
	t.Parallel()
	port := sshdtest.ReservePort(t) // refused until the server listens there
	// The keys exist before the server, as on a cloud instance that is still booting.
	clientKey, _ := sshdtest.GenerateKey(t, sshdtest.ED25519, sshdtest.OpenSSH)
	hostKey, hostSigner := sshdtest.GenerateKey(t, sshdtest.ED25519, sshdtest.OpenSSH)
	info := provider.ConnectInfo{ID: "late", InternalAddr: "127.0.0.1",
		HostKey: ssh.MarshalAuthorizedKey(hostSigner.PublicKey()),
		ConnectorConfig: provider.ConnectorConfig{ProtocolPort: port, Username: currentUser(t), Key: clientKey,
			Timeout: 30 * time.Second}}
	o := opts()
	var failures []error
	o.OnRetry = func(attempt int, err error, _ time.Duration) {
		failures = append(failures, err)
		if attempt == 2 {
			// Start the server only after the connector has seen it down twice.
			sshdtest.Start(t, sshdtest.Options{Port: port, ClientKey: clientKey, HostKey: hostKey})
		}
	}
	c := dial(t, info, o)
	if got := runOut(t, c, "echo up"); got != "up\n" {
		t.Fatalf("output %q", got)
	}
	if len(failures) < 2 {
		t.Fatalf("%d failed attempts before success, want at least 2", len(failures))
	}
	if !strings.Contains(failures[0].Error(), "refused") {
		t.Errorf("first failure %v, want connection refused", failures[0])
	}
}

func TestDialGivesUpAtTimeoutOrCancel(t *testing.T) {
	t.Parallel()
	port := sshdtest.ClosedPort(t) // nothing listens there
	key, _ := sshdtest.GenerateKey(t, sshdtest.ED25519, sshdtest.OpenSSH)
	base := provider.ConnectInfo{ID: "never", InternalAddr: "127.0.0.1:" + strconv.Itoa(port),
		ConnectorConfig: provider.ConnectorConfig{Username: "ci", Key: key}}
	tests := []struct {
		name    string
		timeout time.Duration
		ctx     func() (context.Context, context.CancelFunc)
		want    string
	}{
		{"connector timeout", 300 * time.Millisecond, func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}, "connector_config timeout 300ms"},
		{"caller cancels", time.Hour, func() (context.Context, context.CancelFunc) {
			return context.WithTimeoutCause(context.Background(), 300*time.Millisecond, errors.New("job cancelled"))
		}, "job cancelled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := base
			info.Timeout = tt.timeout
			ctx, cancel := tt.ctx()
			defer cancel()
			_, err := connector.Dial(ctx, info, opts())
			if err == nil {
				t.Fatal("dial succeeded")
			}
			e := asError(t, err)
			// Retrying itself is TestDialWaitsForLateServer's subject; here a slow machine
			// (or -race) may fit only one attempt into the budget.
			if e.Stage != connector.StageTCP || e.Attempts < 1 {
				t.Errorf("stage %q after %d attempts, want tcp: %v", e.Stage, e.Attempts, err)
			}
			for _, s := range []string{tt.want, "refused", "dial ssh 127.0.0.1:" + strconv.Itoa(port) + " as ci (auth: publickey)"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// TestDialNamesTheCauseNotTheCut: when the time runs out in the middle of an attempt,
// that attempt's error ("i/o timeout") says only that it was cut short; the error names
// what the attempts before it found.
func TestDialNamesTheCauseNotTheCut(t *testing.T) {
	t.Parallel()
	key, _ := sshdtest.GenerateKey(t, sshdtest.ED25519, sshdtest.OpenSSH)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	tests := []struct {
		name string
		// cut is the third and later attempts: cut short by the deadline
		cut func(ctx context.Context, network, addr string) (net.Conn, error)
	}{
		{"the context ends during the attempt", func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer // hangs (a SYN nobody answers) until the deadline
			<-ctx.Done()
			return d.DialContext(ctx, network, addr)
		}},
		{"the attempt's timeout is seen before the context's", func(ctx context.Context, network, addr string) (net.Conn, error) {
			// On a loaded machine the dial's deadline can fire before the context
			// reports it: the attempt fails with a timeout while ctx.Err() is nil.
			return nil, &net.OpError{Op: "dial", Net: network, Err: os.ErrDeadlineExceeded}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := provider.ConnectInfo{ID: "booting", InternalAddr: "127.0.0.1:22",
				ConnectorConfig: provider.ConnectorConfig{Username: "ci", Key: key, Timeout: 300 * time.Millisecond}}
			var attempts atomic.Int32
			o := opts()
			o.DialFn = func(ctx context.Context, network, addr string) (net.Conn, error) {
				if attempts.Add(1) <= 2 {
					return nil, refused
				}
				return tt.cut(ctx, network, addr)
			}
			_, err := connector.Dial(context.Background(), info, o)
			if err == nil {
				t.Fatal("dial succeeded")
			}
			for _, want := range []string{"connection refused", "connector_config timeout 300ms"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func currentUser(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("id", "-un").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func TestAddressSelection(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t, sshdtest.Options{})
	closed := "127.0.0.1:" + strconv.Itoa(sshdtest.ClosedPort(t))
	tests := []struct {
		name        string
		internal    string
		external    string
		port        int
		useExternal bool
	}{
		{"internal only, external requested", srv.Addr, "", 0, true},
		{"external requested", closed, srv.Addr, 0, true},
		{"internal by default", srv.Addr, closed, 0, false},
		{"protocol_port for a port-less address", "127.0.0.1", "", srv.Port, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := srv.ConnectInfo("i-addr")
			info.InternalAddr, info.ExternalAddr, info.ProtocolPort = tt.internal, tt.external, tt.port
			info.Timeout = 2 * time.Second // a wrong choice fails instead of waiting
			o := opts()
			o.UseExternalAddr = tt.useExternal
			c := dial(t, info, o)
			if c.Addr() != srv.Addr {
				t.Fatalf("dialled %s, want %s", c.Addr(), srv.Addr)
			}
		})
	}
}

func TestWinRMIsNotSupportedYet(t *testing.T) {
	t.Parallel()
	for _, p := range []provider.Protocol{provider.ProtocolWinRM, provider.ProtocolWinRMHTTPS} {
		info := provider.ConnectInfo{ID: "w", InternalAddr: "10.0.0.5",
			ConnectorConfig: provider.ConnectorConfig{Protocol: p, Username: "Administrator", Password: "x"}}
		_, err := connector.Dial(context.Background(), info, opts())
		if !errors.Is(err, connector.ErrWinRMNotSupported) {
			t.Fatalf("%s: err = %v, want ErrWinRMNotSupported", p, err)
		}
		want := fmt.Sprintf("dial %s 10.0.0.5:%d", p, provider.DefaultProtocolPorts[p])
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "not supported yet") {
			t.Errorf("error %q, want it to contain %q and say not supported yet", err, want)
		}
	}
}

func TestPasswordAuthInProcessServer(t *testing.T) {
	// OpenSSH checks passwords against the machine's accounts (/etc/shadow), which a
	// test must not change, so password logins are tested against the in-process
	// x/crypto/ssh server.
	t.Parallel()
	srv := sshdtest.StartGo(t, sshdtest.GoOptions{Password: "s3cret", NoPublicKey: true})
	tests := []struct {
		name     string
		password string
		withKey  bool
		wantErr  []string
	}{
		{"right password", "s3cret", false, nil},
		{"wrong password", "nope", false, []string{"(auth: password,keyboard-interactive)", ": auth: "}},
		{"key refused, password accepted", "s3cret", true, nil},
		{"key and password refused", "nope", true, []string{"(auth: publickey,password,keyboard-interactive)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := srv.ConnectInfo("i-pw")
			info.Password, info.Key = tt.password, nil
			if tt.withKey {
				info.Key, _ = sshdtest.GenerateKey(t, sshdtest.ECDSA, sshdtest.PEM)
			}
			c, err := connector.Dial(ctxT(t), info, opts())
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer c.Close()
				if got := runOut(t, c, "echo pw"); got != "pw\n" {
					t.Fatalf("output %q", got)
				}
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if e := asError(t, err); e.Stage != connector.StageAuth {
				t.Errorf("stage %q, want auth", e.Stage)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestRun(t *testing.T) {
	t.Parallel()
	servers := map[string]*sshdtest.Server{
		"openssh": sshdtest.Start(t, sshdtest.Options{}),
		"go":      sshdtest.StartGo(t, sshdtest.GoOptions{}),
	}
	tests := []struct {
		name       string
		opts       connector.RunOptions
		stdin      string
		wantOut    string
		wantErrOut string
		wantCode   int
		wantSignal string
	}{
		{name: "success", opts: connector.RunOptions{Command: "echo hi"}, wantOut: "hi\n"},
		{name: "exit code", opts: connector.RunOptions{Command: "echo partial; exit 3"}, wantOut: "partial\n", wantCode: 3},
		{name: "stdin to stdout", opts: connector.RunOptions{Command: "cat; echo done"}, stdin: "in\n", wantOut: "in\ndone\n"},
		{name: "stderr", opts: connector.RunOptions{Command: "echo oops >&2; exit 1"}, wantErrOut: "oops\n", wantCode: 1},
		{name: "env", opts: connector.RunOptions{Command: `printf '%s|%s' "$A" "$B_2"`, Env: map[string]string{"A": "it's a b", "B_2": "$HOME"}},
			wantOut: "it's a b|$HOME"},
		{name: "killed by signal", opts: connector.RunOptions{Command: "kill -TERM $$; sleep 5"}, wantCode: 143, wantSignal: "TERM"},
	}
	for srvName, srv := range servers {
		c := dial(t, srv.ConnectInfo("i-run-"+srvName), opts())
		for _, tt := range tests {
			t.Run(srvName+"/"+tt.name, func(t *testing.T) {
				var out, errOut strings.Builder
				o := tt.opts
				o.Stdout, o.Stderr = &out, &errOut
				if tt.stdin != "" {
					o.Stdin = strings.NewReader(tt.stdin)
				}
				err := c.Run(ctxT(t), o)
				code, signal := 0, ""
				var ee *connector.ExitError
				if errors.As(err, &ee) {
					code, signal = ee.ExitCode(), ee.Signal
				} else if err != nil {
					t.Fatalf("run: %v", err)
				}
				if code != tt.wantCode || signal != tt.wantSignal {
					t.Errorf("exit %d signal %q, want %d %q (err %v)", code, signal, tt.wantCode, tt.wantSignal, err)
				}
				if out.String() != tt.wantOut || errOut.String() != tt.wantErrOut {
					t.Errorf("stdout %q stderr %q, want %q %q", out.String(), errOut.String(), tt.wantOut, tt.wantErrOut)
				}
			})
		}
	}
	t.Run("one-shot", func(t *testing.T) {
		var out strings.Builder
		err := connector.Run(ctxT(t), servers["openssh"].ConnectInfo("i-run-once"), connector.ConnectorOptions{
			RunOptions: connector.RunOptions{Command: "echo once; exit 4", Stdout: &out}, DialOptions: opts()})
		var ee *connector.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 4 || out.String() != "once\n" {
			t.Fatalf("err %v output %q, want exit 4 and %q", err, out.String(), "once\n")
		}
	})
	t.Run("bad env name", func(t *testing.T) {
		c := dial(t, servers["openssh"].ConnectInfo("i-run-env"), opts())
		err := c.Run(ctxT(t), connector.RunOptions{Command: "true", Env: map[string]string{"A-B": "x"}})
		if err == nil || !strings.Contains(err.Error(), `"A-B"`) {
			t.Fatalf("err = %v, want one naming the bad variable", err)
		}
	})
}

func TestRunCancel(t *testing.T) {
	t.Parallel()
	nonRoot, haveNonRoot := sshdtest.LoginUser()
	tests := []struct {
		name string
		// start returns the server, or "" and a reason to skip.
		start func(t *testing.T) *sshdtest.Server
		// killed: the server delivers signals, so the remote command must die.
		killed bool
	}{
		{"in-process server", func(t *testing.T) *sshdtest.Server { return sshdtest.StartGo(t, sshdtest.GoOptions{}) }, true},
		{"openssh non-root", func(t *testing.T) *sshdtest.Server {
			if !haveNonRoot {
				t.Skip("no non-root account with a login shell on this machine (needs root to start sshd for it)")
			}
			return sshdtest.Start(t, sshdtest.Options{User: nonRoot})
		}, true},
		// OpenSSH turns privilege separation off after a root login and then refuses
		// "signal" requests; Run must still return promptly and leave the connection
		// usable. (The process is cleaned up with the server.)
		{"openssh root", func(t *testing.T) *sshdtest.Server { return sshdtest.Start(t, sshdtest.Options{}) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := tt.start(t)
			c := dial(t, srv.ConnectInfo("i-cancel"), opts())
			pid := cancelRunningCommand(t, c)
			if tt.killed {
				waitGone(t, pid)
			}
			if got := runOut(t, c, "echo after"); got != "after\n" {
				t.Fatalf("output %q", got)
			}
		})
	}
}

// cancelRunningCommand starts a long command, cancels it once it runs, checks that Run
// returns the cancellation cause, and returns the remote process ID.
func cancelRunningCommand(t *testing.T, c *connector.Client) int {
	t.Helper()
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		// exec makes the sleep the process sshd started, so it receives the signal.
		errc <- c.Run(ctx, connector.RunOptions{Command: "echo $$; exec sleep 600", Stdout: pw})
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("read pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("pid %q: %v", line, err)
	}
	go io.Copy(io.Discard, pr)
	cancel(errors.New("job cancelled by user"))
	err = <-errc
	if err == nil || !strings.Contains(err.Error(), "job cancelled by user") {
		t.Fatalf("err = %v, want the cancellation cause", err)
	}
	return pid
}

// waitGone waits until the process is gone or a zombie (the servers run on this
// machine, so /proc shows their commands). It polls for an outcome; it is not a
// timing assertion.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	eventually.True(t, fmt.Sprintf("remote process %d to end after cancel", pid), 10*time.Second, func() bool {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		return err != nil || strings.Contains(string(stat), ") Z ")
	})
}

func TestDialThroughTunnel(t *testing.T) {
	t.Parallel()
	tcpAddr := echoServer(t, "tcp", "127.0.0.1:0")
	sock := unixSocketPath(t)
	echoServer(t, "unix", sock)
	servers := map[string]*sshdtest.Server{
		"openssh": sshdtest.Start(t, sshdtest.Options{}),
		"go":      sshdtest.StartGo(t, sshdtest.GoOptions{}),
	}
	for name, srv := range servers {
		c := dial(t, srv.ConnectInfo("i-tunnel-"+name), opts())
		for _, target := range []struct{ network, addr string }{{"tcp", tcpAddr}, {"unix", sock}} {
			t.Run(name+"/"+target.network, func(t *testing.T) {
				conn, err := c.Dial(ctxT(t), target.network, target.addr)
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				defer conn.Close()
				assertEcho(t, conn)
			})
		}
		t.Run(name+"/unreachable", func(t *testing.T) {
			_, err := c.Dial(ctxT(t), "unix", sock+".missing")
			if !errors.Is(err, connector.ErrStreamLocalRefused) || !strings.Contains(err.Error(), sock+".missing") {
				t.Fatalf("err = %v, want ErrStreamLocalRefused naming the socket", err)
			}
		})
	}
}

func assertEcho(t *testing.T, conn net.Conn) {
	t.Helper()
	msg := []byte("ping through the tunnel\n")
	if _, err := conn.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(got) != string(msg) {
		t.Fatalf("echo %q, want %q", got, msg)
	}
}

func TestDialUnixFallsBackToDialStdio(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t, sshdtest.Options{DenyStreamLocal: true})
	sock := unixSocketPath(t)
	echoServer(t, "unix", sock)
	c := dial(t, srv.ConnectInfo("i-stdio"), opts())

	_, err := c.Dial(ctxT(t), "unix", sock)
	if !errors.Is(err, connector.ErrStreamLocalRefused) {
		t.Fatalf("direct dial err = %v, want ErrStreamLocalRefused", err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fallbacks := map[string]string{
		// This test binary, re-executed on the instance, bridges stdio to the socket.
		"helper": dialStdioEnv + "=" + sock + " " + self,
	}
	if docker, err := exec.LookPath("docker"); err == nil {
		// The real Docker CLI: dial-stdio connects to DOCKER_HOST and pipes stdio.
		fallbacks["docker CLI"] = "DOCKER_HOST=unix://" + sock + " " + docker + " system dial-stdio"
	} else {
		t.Log("docker CLI not installed: testing the fallback with the helper only")
	}
	for name, cmd := range fallbacks {
		t.Run(name, func(t *testing.T) {
			conn, err := c.DialUnix(ctxT(t), sock, cmd)
			if err != nil {
				t.Fatalf("dial unix with fallback: %v", err)
			}
			defer conn.Close()
			assertEcho(t, conn)
		})
	}
	t.Run("failing fallback", func(t *testing.T) {
		conn, err := c.DialUnix(ctxT(t), sock, "echo no docker here >&2; exit 127")
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		_, err = io.ReadAll(conn)
		if err == nil || !strings.Contains(err.Error(), "127") || !strings.Contains(err.Error(), "no docker here") {
			t.Fatalf("read err = %v, want the exit status and stderr", err)
		}
	})
}

func TestPoolSharesAndRedialsConnections(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t, sshdtest.Options{})
	p := connector.NewPool(opts())
	defer p.Shutdown()
	info := srv.ConnectInfo("i-pool")

	// Concurrent first uses share one dial.
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.Run(ctxT(t), info, connector.RunOptions{Command: "true"})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	}
	if s := p.Stats(); s.Dials != 1 || s.Instances != 1 {
		t.Fatalf("stats %+v, want 1 dial and 1 instance", s)
	}

	// The connection drops (sshd's per-connection process dies): the next use
	// re-dials, whether or not the drop was noticed yet.
	c, err := p.Client(ctxT(t), info)
	if err != nil {
		t.Fatal(err)
	}
	srv.KillConnections()
	if err := p.Run(ctxT(t), info, connector.RunOptions{Command: "true"}); err != nil {
		t.Fatalf("run after drop: %v", err)
	}
	if c.Err() == nil {
		t.Error("the dropped client does not report its loss")
	}
	if s := p.Stats(); s.Dials != 2 {
		t.Fatalf("stats %+v, want 2 dials", s)
	}

	// A command that started and then lost its connection is reported, not re-run:
	// it may have done part of its work.
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		errc <- p.Run(ctxT(t), info, connector.RunOptions{Command: "echo started; exec sleep 600", Stdout: pw})
		pw.Close()
	}()
	if _, err := bufio.NewReader(pr).ReadString('\n'); err != nil {
		t.Fatalf("command did not start: %v", err)
	}
	go io.Copy(io.Discard, pr)
	srv.KillConnections()
	if err := <-errc; !errors.Is(err, connector.ErrConnectionClosed) {
		t.Fatalf("run across a drop: err = %v, want ErrConnectionClosed", err)
	}
	if s := p.Stats(); s.Dials != 2 {
		t.Fatalf("stats %+v, want no re-dial for a started command", s)
	}

	// Close forgets the instance: its connection is closed and its pin dropped.
	c2, _ := p.Client(ctxT(t), info)
	if err := p.Close(info.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c2.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not close the connection")
	}
	if s := p.Stats(); s.Instances != 0 {
		t.Fatalf("stats %+v after Close, want 0 instances", s)
	}
}

func TestMaxSessionsLimitIsExplained(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t, sshdtest.Options{MaxSessions: 2})
	p := connector.NewPool(opts())
	defer p.Shutdown()
	info := srv.ConnectInfo("i-max")

	// Hold two sessions open: each prints a line, then waits for stdin to close.
	var holders []*io.PipeWriter
	errs := make(chan error, 2)
	for range 2 {
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		holders = append(holders, inW)
		go func() {
			errs <- p.Run(ctxT(t), info, connector.RunOptions{Command: "echo open; cat >/dev/null", Stdin: inR, Stdout: outW})
			outW.Close()
		}()
		if _, err := bufio.NewReader(outR).ReadString('\n'); err != nil {
			t.Fatalf("session did not start: %v", err)
		}
		go io.Copy(io.Discard, outR)
	}
	err := p.Run(ctxT(t), info, connector.RunOptions{Command: "true"})
	if !errors.Is(err, connector.ErrChannelLimit) {
		t.Fatalf("third session err = %v, want ErrChannelLimit", err)
	}
	if e := asError(t, err); e.Stage != connector.StageChannel {
		t.Errorf("stage %q, want channel", e.Stage)
	}
	for _, s := range []string{"MaxSessions", "capacity_per_instance", srv.Addr} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
	for _, w := range holders {
		w.Close()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("held session: %v", err)
		}
	}
	// With the sessions closed, the same connection takes new ones. sshd frees a
	// session slot when it has processed the channel close, a moment after the client
	// saw the exit status, so a refusal just after release is retried briefly.
	eventually.NoError(t, "a run after release", 10*time.Second, func() error {
		err := p.Run(ctxT(t), info, connector.RunOptions{Command: "true"})
		if err != nil && !errors.Is(err, connector.ErrChannelLimit) {
			t.Fatalf("run after release: %v", err)
		}
		return err
	})
	if s := p.Stats(); s.Dials != 1 {
		t.Errorf("stats %+v, want the limit not to cost a re-dial", s)
	}
}

// freezableConn stops delivering incoming bytes when frozen, like a peer that vanished
// without closing the connection (a VM that was stopped, a dropped NAT mapping).
type freezableConn struct {
	net.Conn
	frozen atomic.Bool
	thaw   chan struct{}
}

func (c *freezableConn) Read(p []byte) (int, error) {
	if c.frozen.Load() {
		<-c.thaw
		return 0, net.ErrClosed
	}
	return c.Conn.Read(p)
}

func TestKeepaliveClosesDeadConnection(t *testing.T) {
	t.Parallel()
	srv := sshdtest.Start(t, sshdtest.Options{})
	var conn *freezableConn
	o := opts()
	o.DialFn = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		conn = &freezableConn{Conn: c, thaw: make(chan struct{})}
		return conn, nil
	}
	info := srv.ConnectInfo("i-keepalive")
	info.Keepalive = 50 * time.Millisecond
	c := dial(t, info, o)
	defer close(conn.thaw)
	// Keepalives answered: the connection stays up across many intervals.
	if got := runOut(t, c, "sleep 0.3; echo alive"); got != "alive\n" {
		t.Fatalf("output %q", got)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("connection closed while the server answered: %v", err)
	}
	conn.frozen.Store(true)
	select {
	case <-c.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("keepalive did not close the dead connection")
	}
	if err := c.Err(); !errors.Is(err, connector.ErrConnectionClosed) || !strings.Contains(err.Error(), "keepalive") {
		t.Fatalf("close reason %v, want a keepalive failure", err)
	}
}
