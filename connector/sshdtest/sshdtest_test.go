package sshdtest_test

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// startCommand logs in to srv with plain x/crypto/ssh, starts a long-running command
// and returns its PID.
func startCommand(t *testing.T, srv *sshdtest.Server) (*ssh.Client, int) {
	t.Helper()
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(srv.HostKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", srv.Addr, &ssh.ClientConfig{User: srv.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(srv.Signer)}, HostKeyCallback: ssh.FixedHostKey(hostKey)})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("echo $$; exec sleep 600"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("read pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	return c, pid
}

func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !strings.Contains(string(stat), ") Z ")
}

// waitDead polls until pid is gone; it checks an outcome, not a duration.
func waitDead(t *testing.T, pid int) {
	t.Helper()
	eventually.True(t, fmt.Sprintf("process %d to end", pid), 10*time.Second, func() bool { return !alive(pid) })
}

func TestStopLeavesNoProcess(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	_, pid := startCommand(t, srv)
	if !alive(pid) {
		t.Fatalf("command %d not running", pid)
	}
	srv.Stop()
	waitDead(t, pid)
}

func TestKillConnectionsKeepsListener(t *testing.T) {
	srv := sshdtest.Start(t, sshdtest.Options{})
	c, pid := startCommand(t, srv)
	srv.KillConnections()
	waitDead(t, pid)
	// The client sees its connection end (Wait returns once it has).
	ended := make(chan struct{})
	go func() { c.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(time.Minute):
		t.Fatal("the client's connection is still up after KillConnections")
	}
	// The listener is still up: a new login works.
	startCommand(t, srv)
}

func TestGeneratedKeysParse(t *testing.T) {
	for _, kt := range []sshdtest.KeyType{sshdtest.ED25519, sshdtest.RSA, sshdtest.ECDSA} {
		for _, f := range []sshdtest.KeyFormat{sshdtest.OpenSSH, sshdtest.PEM} {
			pemBytes, signer := sshdtest.GenerateKey(t, kt, f)
			parsed, err := ssh.ParsePrivateKey(pemBytes)
			if err != nil {
				t.Fatalf("%s/%s: %v", kt, f, err)
			}
			if string(parsed.PublicKey().Marshal()) != string(signer.PublicKey().Marshal()) {
				t.Fatalf("%s/%s: parsed key differs from the signer", kt, f)
			}
			wantHeader := map[sshdtest.KeyFormat]string{sshdtest.OpenSSH: "OPENSSH PRIVATE KEY"}[f]
			if wantHeader != "" && !strings.Contains(string(pemBytes), wantHeader) {
				t.Fatalf("%s/%s: header missing from %q", kt, f, pemBytes[:40])
			}
		}
	}
}
