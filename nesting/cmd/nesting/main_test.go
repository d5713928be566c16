package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/nestingtest"
)

// run runs the CLI with args and returns its standard output and error.
func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := newRoot()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// TestClientCommands drives a daemon (the real server over the in-memory hypervisor)
// with the CLI's client commands, one after the other, as a user would.
func TestClientCommands(t *testing.T) {
	h := nestingtest.New()
	if _, err := h.Init(context.Background(), []byte(`{"max_vms": 2}`)); err != nil {
		t.Fatal(err)
	}
	d := nestingtest.Serve(t, h, true)
	sock := "--socket=" + d.Host
	steps := []struct {
		args           []string
		stdout, stderr string // substrings expected
		err            string // "" for success
	}{
		{args: []string{"create", "debian", "--slot", "0"}, stdout: "fake-1\tfake-1\t127.0.0.1:"},
		{args: []string{"create", "debian", "--slot", "0"}, stdout: "fake-2\t", stderr: "deleted fake-1, which held slot 0"},
		{args: []string{"create", "debian", "--slot", "5"}, err: "slot 5 is out of range"},
		{args: []string{"create", "windows"}, err: `"windows" (images: ["debian"])`},
		{args: []string{"list"}, stdout: "hypervisor fake, accelerator none, 1 of 2 VMs"},
		{args: []string{"delete", "fake-1"}, err: "vm not found"},
		{args: []string{"delete", "fake-2"}},
		{args: []string{"create", "debian"}, stdout: "fake-3\t"},
		{args: []string{"shutdown"}},
	}
	for _, s := range steps {
		out, errOut, err := run(t, append([]string{sock}, s.args...)...)
		switch {
		case s.err == "" && err != nil:
			t.Fatalf("nesting %s: %v", strings.Join(s.args, " "), err)
		case s.err != "" && (err == nil || !strings.Contains(err.Error(), s.err)):
			t.Fatalf("nesting %s: error %v, want one containing %q", strings.Join(s.args, " "), err, s.err)
		}
		if !strings.Contains(out, s.stdout) || !strings.Contains(errOut, s.stderr) {
			t.Errorf("nesting %s: stdout %q, stderr %q; want %q and %q", strings.Join(s.args, " "), out, errOut, s.stdout, s.stderr)
		}
	}
	select {
	case <-d.Done:
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon still runs after `nesting shutdown`")
	}
	if vms, _ := h.List(context.Background()); len(vms) != 0 {
		t.Errorf("VMs left after shutdown: %+v", vms)
	}
}

// TestListJSON: `list --json` prints the hypervisor and the VMs for scripts.
func TestListJSON(t *testing.T) {
	h := nestingtest.New()
	if _, err := h.Init(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	d := nestingtest.Serve(t, h, true)
	if _, _, err := run(t, "--socket="+d.Host, "create", "debian", "--slot", "1"); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, "--socket="+d.Host, "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Hypervisor nesting.Info `json:"hypervisor"`
		VMs        []nesting.VM `json:"vms"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	if got.Hypervisor.Name != "fake" || len(got.VMs) != 1 || got.VMs[0].Slot != 1 || got.VMs[0].Image != "debian" {
		t.Errorf("list --json = %+v", got)
	}
}

// TestNoDaemon: a client command with nothing on the socket says what to check.
func TestNoDaemon(t *testing.T) {
	_, _, err := run(t, "--socket="+t.TempDir()+"/none.sock", "--timeout=5s", "list")
	if err == nil || !strings.Contains(err.Error(), "is `nesting serve` running on that socket?") {
		t.Errorf("list without a daemon: %v", err)
	}
}
