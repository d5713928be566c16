package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
)

const pkg = "github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cmd/fakecloud"

// pluginConfig is the part of plugin_config the aws plugin reads to find the fake.
type pluginConfig struct {
	Name            string `json:"name"`
	Profile         string `json:"profile"`
	ConfigFile      string `json:"config_file"`
	CredentialsFile string `json:"credentials_file"`
	Endpoint        string `json:"endpoint"`
}

// fakecloud is a running fakecloud process.
type fakecloud struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	ready  Ready
	exited chan struct{}
	err    error // Wait's result, once exited is closed
}

// start runs bin and waits for its ready line.
func start(t *testing.T, bin string, args ...string) *fakecloud {
	t.Helper()
	f := &fakecloud{cmd: exec.Command(bin, args...), stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	f.cmd.Stderr = f.stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start fakecloud: %v", err)
	}
	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(out).ReadString('\n')
		lines <- line
		_, _ = io.Copy(io.Discard, out)
		f.err = f.cmd.Wait()
		close(f.exited)
	}()
	t.Cleanup(func() {
		_ = f.cmd.Process.Kill()
		<-f.exited
	})
	select {
	case line := <-lines:
		if err := json.Unmarshal([]byte(line), &f.ready); err != nil {
			_ = f.cmd.Process.Kill()
			<-f.exited
			t.Fatalf("fakecloud's first line %q is not the ready JSON: %v (exit: %v)\nstderr:\n%s", line, err, f.err, f.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("fakecloud printed no ready line within 30s")
	}
	return f
}

// get decodes a control API answer; it returns the status and the body.
func (f *fakecloud) get(t *testing.T, path string, v any) (int, string) {
	t.Helper()
	resp, err := http.Get(f.ready.Control + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("GET %s: %v in %s", path, err, body)
		}
	}
	return resp.StatusCode, string(body)
}

// TestFakecloud runs the command, scales its group up through the AWS SDK with the files
// it wrote, runs a command on the VM over SSH with its client key, and stops it: the
// command on the VM must be gone once fakecloud exits.
func TestFakecloud(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the fakecloud command")
	}
	// Orphans of fakecloud become this process's children, running or as zombies, so a
	// VM command that fakecloud did not reap before exiting is still visible at the end.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become a child subreaper: %v", err)
	}
	bin := conformancetest.Build(t, pkg)
	dir := t.TempDir()
	f := start(t, bin, "-dir", dir, "-group", "ci-managers", "-max", "3")

	var pc pluginConfig
	if err := json.Unmarshal(f.ready.PluginConfig, &pc); err != nil {
		t.Fatalf("plugin_config %s: %v", f.ready.PluginConfig, err)
	}
	if pc.Name != "ci-managers" || pc.Endpoint == "" || pc.Profile == "" {
		t.Fatalf("plugin_config = %s, want name ci-managers, an endpoint and a profile", f.ready.PluginConfig)
	}
	for _, file := range []string{pc.ConfigFile, pc.CredentialsFile, f.ready.ClientKeyFile} {
		if filepath.Dir(file) != dir {
			t.Errorf("%s is not in -dir %s", file, dir)
		}
	}

	var g Group
	f.get(t, "/group", &g)
	if g != (Group{Name: "ci-managers", Max: 3}) {
		t.Fatalf("GET /group = %+v before scaling, want an empty group of max 3", g)
	}

	// Scale up as the aws plugin would: the SDK, the files fakecloud wrote, its endpoint.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithSharedConfigProfile(pc.Profile),
		config.WithSharedConfigFiles([]string{pc.ConfigFile}), config.WithSharedCredentialsFiles([]string{pc.CredentialsFile}))
	if err != nil {
		t.Fatalf("load the AWS config fakecloud wrote: %v", err)
	}
	as := autoscaling.NewFromConfig(cfg, func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(pc.Endpoint) })
	if _, err := as.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String(pc.Name), DesiredCapacity: aws.Int32(1)}); err != nil {
		t.Fatalf("SetDesiredCapacity: %v", err)
	}

	var vm VM
	deadline := time.Now().Add(10 * time.Second)
	for vm.SSHAddr == "" {
		var vms []VM
		f.get(t, "/vms", &vms)
		if len(vms) > 1 {
			t.Fatalf("GET /vms = %+v, want one VM", vms)
		}
		if len(vms) == 1 {
			vm = vms[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no running VM with an SSH address within 10s: %+v", vms)
		}
		if vm.SSHAddr == "" {
			time.Sleep(20 * time.Millisecond) // polling the fakecloud process, with a deadline
		}
	}
	if vm.State != "running" || !vm.Live || vm.Group != "ci-managers" {
		t.Errorf("VM = %+v, want a live running VM of ci-managers", vm)
	}
	f.get(t, "/group", &g)
	if g.Desired != 1 || g.Size != 1 {
		t.Errorf("GET /group = %+v, want desired 1, size 1", g)
	}
	if code, body := f.get(t, "/check", nil); code != http.StatusOK {
		t.Errorf("GET /check = %d %s, want 200", code, body)
	}

	client := dialVM(t, f.ready.ClientKeyFile, vm)
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("echo $$; exec sleep 300"); err != nil {
		t.Fatalf("start a command on %s: %v", vm.ID, err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("read the command's pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("the command printed %q, not its pid", line)
	}

	if err := f.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("fakecloud still running 30s after SIGTERM")
	}
	if f.err != nil {
		t.Fatalf("fakecloud exited with %v after SIGTERM, want 0\nstderr:\n%s", f.err, f.stderr)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		_, _ = syscall.Wait4(pid, nil, 0, nil)
		t.Errorf("the VM's command (pid %d) outlived fakecloud (kill 0: %v)", pid, err)
	}
}

// dialVM connects to a VM as ec2-user with the client key, checking the host key /vms
// reported.
func dialVM(t *testing.T, keyFile string, vm VM) *ssh.Client {
	t.Helper()
	pem, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatalf("read client_key_file: %v", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatalf("client_key_file %s: %v", keyFile, err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(vm.HostKey))
	if err != nil {
		t.Fatalf("VM %s host key %q: %v", vm.ID, vm.HostKey, err)
	}
	client, err := ssh.Dial("tcp", vm.SSHAddr, &ssh.ClientConfig{User: "ec2-user", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("ssh to VM %s at %s: %v", vm.ID, vm.SSHAddr, err)
	}
	return client
}

// TestFakecloudUsage checks that bad invocations fail at once, naming the flag.
func TestFakecloudUsage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the fakecloud command")
	}
	bin := conformancetest.Build(t, pkg)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string // in stderr
	}{
		{"no dir", nil, 2, []string{"-dir is required"}},
		{"all problems at once", []string{"-group", "", "-max", "0", "extra"}, 2, []string{"-dir is required", "-group is empty", "-max 0", `unexpected arguments ["extra"]`}},
		{"unknown flag", []string{"-dir", dir, "-nope"}, 2, []string{"-nope"}},
		{"bad listen address", []string{"-dir", dir, "-listen", "127.0.0.1:notaport"}, 1, []string{"-listen 127.0.0.1:notaport"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tc.code {
				t.Fatalf("fakecloud %q: %v, want exit status %d\nstderr:\n%s", tc.args, err, tc.code, &stderr)
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout = %q, want nothing (no ready line)", &stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr does not mention %q:\n%s", w, &stderr)
				}
			}
		})
	}
}
