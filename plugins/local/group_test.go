package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// newRoot returns a root_dir for a test and, at its end, deletes every instance left
// in it with all its processes, so that a failing test leaks no process.
func newRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	t.Cleanup(func() {
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if idPattern.MatchString(e.Name()) {
				_ = deleteInstance(context.Background(), filepath.Join(root, e.Name()))
			}
		}
	})
	return root
}

// newGroup initialises a group in this process (its instance servers are still
// separate processes: this test binary re-executed).
func newGroup(t *testing.T, cfg map[string]any, settings provider.ConnectorConfig) *InstanceGroup {
	t.Helper()
	return newGroupWith(t, cfg, settings, nil)
}

// newGroupWith is newGroup with mutate applied to the group before Init.
func newGroupWith(t *testing.T, cfg map[string]any, settings provider.ConnectorConfig, mutate func(*InstanceGroup)) *InstanceGroup {
	t.Helper()
	g := New(selfCommand(t))
	data, _ := json.Marshal(cfg)
	if err := plugin.DecodeConfig(data, g); err != nil {
		t.Fatal(err)
	}
	if mutate != nil {
		mutate(g)
	}
	if _, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: settings}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Shutdown(context.Background()) })
	return g
}

// states lists the group's instances.
func states(t *testing.T, g provider.InstanceGroup) map[string]provider.State {
	t.Helper()
	out := map[string]provider.State{}
	if err := g.Update(context.Background(), func(id string, s provider.State) { out[id] = s }); err != nil {
		t.Fatalf("update: %v", err)
	}
	return out
}

// waitStates polls Update until cond holds (bounded by a generous deadline: this is a
// wait, not a timing assertion).
func waitStates(t *testing.T, g provider.InstanceGroup, what string, cond func(map[string]provider.State) bool) map[string]provider.State {
	t.Helper()
	var st map[string]provider.State
	eventually.NoError(t, what, 30*time.Second, func() error {
		if st = states(t, g); !cond(st) {
			return fmt.Errorf("instances: %v", st)
		}
		return nil
	})
	return st
}

func allRunning(n int) func(map[string]provider.State) bool {
	return func(st map[string]provider.State) bool {
		if len(st) != n {
			return false
		}
		for _, s := range st {
			if s != provider.StateRunning {
				return false
			}
		}
		return true
	}
}

func ids(st map[string]provider.State) []string {
	out := make([]string, 0, len(st))
	for id := range st {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// runOn runs command on an instance over SSH, as the host's connector would, checking
// the reported host key.
func runOn(t *testing.T, g provider.InstanceGroup, id, command string) string {
	t.Helper()
	info, err := g.ConnectInfo(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(info.Key)
	if err != nil {
		t.Fatalf("client key of %s: %v", id, err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(info.HostKey)
	if err != nil {
		t.Fatalf("host key of %s: %v", id, err)
	}
	addr, err := info.Addr(false)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: info.Username, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("ssh to %s at %s: %v", id, addr, err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out, err := s.CombinedOutput(command)
	if err != nil {
		t.Fatalf("run %q on %s: %v: %s", command, id, err, out)
	}
	return string(out)
}

// serverPIDs returns the recorded server PID of each instance, waiting (bounded) for
// a just started server to record itself.
func serverPIDs(t *testing.T, root string, instances []string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, id := range instances {
		var pid int
		eventually.True(t, fmt.Sprintf("instance %s to record its server pid", id), 10*time.Second, func() bool {
			pid = readPID(filepath.Join(root, id, serverPIDFile))
			return pid > 0
		})
		out[id] = pid
	}
	return out
}

// assertNothingLeft checks that the instances' directories and every process of their
// servers' sessions are gone.
func assertNothingLeft(t *testing.T, root string, pids map[string]int) {
	t.Helper()
	for id, pid := range pids {
		if _, err := os.Stat(filepath.Join(root, id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("directory of %s still exists (stat: %v)", id, err)
		}
		if left := sessionProcesses(pid); len(left) > 0 {
			t.Errorf("processes %v of %s's server session are still running", left, id)
		}
	}
}

func launch(t *testing.T, cfg map[string]any) *pluginclient.Plugin {
	t.Helper()
	data, _ := json.Marshal(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	exe := selfCommand(t)
	p, err := pluginclient.Launch(ctx, exe[0], data, pluginclient.Options{Args: exe[1:], Name: "local"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLifecycleOutOfProcess(t *testing.T) {
	root := newRoot(t)
	p := launch(t, map[string]any{"root_dir": root, "max_instances": 5})
	ctx := context.Background()
	if n, err := p.Increase(ctx, 2); n != 2 || err != nil {
		t.Fatalf("increase = %d, %v", n, err)
	}
	st := waitStates(t, p, "2 running instances", allRunning(2))
	instances := ids(st)
	pids := serverPIDs(t, root, instances)
	for _, id := range instances {
		out := runOn(t, p, id, `echo "$HOME"; echo hi >file; cat file`)
		if want := filepath.Join(root, id, homeDir) + "\nhi\n"; out != want {
			t.Errorf("output on %s = %q, want %q", id, out, want)
		}
		if err := p.Heartbeat(ctx, id); err != nil {
			t.Errorf("heartbeat %s: %v", id, err)
		}
	}
	done, err := p.Decrease(ctx, instances)
	if err != nil || !slices.Equal(slices.Sorted(slices.Values(done)), instances) {
		t.Fatalf("decrease = %v, %v", done, err)
	}
	for _, s := range states(t, p) {
		if s != provider.StateDeleting {
			t.Fatalf("after Decrease an instance is %s, want deleting or gone", s)
		}
	}
	waitStates(t, p, "no instances", func(st map[string]provider.State) bool { return len(st) == 0 })
	assertNothingLeft(t, root, pids)
	for _, id := range instances {
		if _, err := p.ConnectInfo(ctx, id); !errors.Is(err, provider.ErrNotFound) {
			t.Errorf("connect info of deleted %s: %v, want ErrNotFound", id, err)
		}
	}
}

func TestBootDelayKeepsInstancesCreating(t *testing.T) {
	root := newRoot(t)
	g := newGroup(t, map[string]any{"root_dir": root, "boot_delay": "1h"}, provider.ConnectorConfig{})
	ctx := context.Background()
	if n, err := g.Increase(ctx, 1); n != 1 || err != nil {
		t.Fatalf("increase = %d, %v", n, err)
	}
	st := states(t, g)
	if len(st) != 1 {
		t.Fatalf("instances %v", st)
	}
	id := ids(st)[0]
	if st[id] != provider.StateCreating {
		t.Fatalf("state %s, want creating for the whole boot delay", st[id])
	}
	info, err := g.ConnectInfo(ctx, id)
	if err != nil {
		t.Fatalf("connect info of a booting instance: %v", err)
	}
	if _, err := ssh.Dial("tcp", info.InternalAddr, &ssh.ClientConfig{User: info.Username, HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 2 * time.Second}); err == nil {
		t.Fatal("a booting instance accepted an SSH connection")
	}
	if err := g.Heartbeat(ctx, id); err != nil {
		t.Fatalf("heartbeat of a booting instance: %v", err)
	}
	pids := serverPIDs(t, root, []string{id})
	if _, err := g.Decrease(ctx, []string{id}); err != nil {
		t.Fatal(err)
	}
	waitStates(t, g, "no instances", func(st map[string]provider.State) bool { return len(st) == 0 })
	assertNothingLeft(t, root, pids)
}

// pluginPID finds the plugin process the test launched: a child of this process
// running exactly the embedded plugin command.
func pluginPID(t *testing.T) int {
	t.Helper()
	want := strings.Join(selfCommand(t), "\x00")
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || strings.TrimRight(string(cl), "\x00") != want {
			continue
		}
		if f := strings.Fields(string(stat[i+1:])); len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			return pid
		}
	}
	t.Fatal("plugin process not found")
	return 0
}

func TestInstancesSurvivePluginKill(t *testing.T) {
	root := newRoot(t)
	cfg := map[string]any{"root_dir": root}
	p := launch(t, cfg)
	ctx := context.Background()
	if _, err := p.Increase(ctx, 2); err != nil {
		t.Fatal(err)
	}
	before := ids(waitStates(t, p, "2 running instances", allRunning(2)))
	pids := serverPIDs(t, root, before)
	hostKeys := map[string]string{}
	for _, id := range before {
		info, err := p.ConnectInfo(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		hostKeys[id] = string(info.HostKey)
	}

	if err := syscall.Kill(pluginPID(t), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := p.Update(ctx, func(string, provider.State) {}); !errors.Is(err, pluginclient.ErrPluginExited) {
		t.Fatalf("update of the killed plugin: %v, want ErrPluginExited", err)
	}

	p2 := launch(t, cfg)
	after := ids(waitStates(t, p2, "the same instances running", allRunning(2)))
	if !slices.Equal(before, after) {
		t.Fatalf("relaunched plugin lists %v, want %v", after, before)
	}
	for _, id := range after {
		if pid := readPID(filepath.Join(root, id, serverPIDFile)); pid != pids[id] {
			t.Errorf("server of %s was restarted (pid %d, was %d): it should have survived", id, pid, pids[id])
		}
		info, err := p2.ConnectInfo(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if string(info.HostKey) != hostKeys[id] {
			t.Errorf("host key of %s changed across the relaunch", id)
		}
		if out := runOn(t, p2, id, "echo still-here"); out != "still-here\n" {
			t.Errorf("output %q", out)
		}
	}
	if _, err := p2.Decrease(ctx, after); err != nil {
		t.Fatal(err)
	}
	waitStates(t, p2, "no instances", func(st map[string]provider.State) bool { return len(st) == 0 })
	assertNothingLeft(t, root, pids)
}

func TestDeadServerIsRestarted(t *testing.T) {
	root := newRoot(t)
	g := newGroup(t, map[string]any{"root_dir": root}, provider.ConnectorConfig{})
	ctx := context.Background()
	if _, err := g.Increase(ctx, 1); err != nil {
		t.Fatal(err)
	}
	id := ids(waitStates(t, g, "1 running instance", allRunning(1)))[0]
	oldPID := serverPIDs(t, root, []string{id})[id]
	before, _ := g.ConnectInfo(ctx, id)
	if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !processGone(oldPID) {
		t.Fatalf("killed server %d still running", oldPID)
	}
	if err := g.Heartbeat(ctx, id); !errors.Is(err, provider.ErrInstanceUnhealthy) {
		t.Fatalf("heartbeat with the server dead: %v, want ErrInstanceUnhealthy", err)
	}
	waitStates(t, g, "the instance running again", allRunning(1))
	if pid := readPID(filepath.Join(root, id, serverPIDFile)); pid == oldPID {
		t.Fatal("server pid unchanged: not restarted")
	}
	after, _ := g.ConnectInfo(ctx, id)
	if !bytes.Equal(before.HostKey, after.HostKey) {
		t.Fatal("host key changed across a server restart")
	}
	if out := runOn(t, g, id, "echo back"); out != "back\n" {
		t.Fatalf("output %q", out)
	}
	if err := g.Heartbeat(ctx, id); err != nil {
		t.Fatalf("heartbeat after restart: %v", err)
	}
}

func TestMaxInstances(t *testing.T) {
	root := newRoot(t)
	g := newGroup(t, map[string]any{"root_dir": root, "max_instances": 2, "boot_delay": "1h"}, provider.ConnectorConfig{})
	n, err := g.Increase(context.Background(), 3)
	if n != 2 || !errors.Is(err, provider.ErrCapacity) {
		t.Fatalf("increase 3 with max 2 = %d, %v; want 2 and ErrCapacity", n, err)
	}
	if n, err := g.Increase(context.Background(), 1); n != 0 || !errors.Is(err, provider.ErrCapacity) {
		t.Fatalf("increase when full = %d, %v", n, err)
	}
	if st := states(t, g); len(st) != 2 {
		t.Fatalf("instances %v", st)
	}
}

func TestDecreaseTouchesOnlyItsInstances(t *testing.T) {
	root := newRoot(t)
	g := newGroup(t, map[string]any{"root_dir": root}, provider.ConnectorConfig{})
	outside := t.TempDir()
	// Directories that are not instances of this group, named to tempt a careless
	// Decrease: an instance-like name without instance.json, another ID's metadata, a
	// plain directory, and a path outside root_dir.
	fakes := []string{"local-aaaaaaaaaaaa", "local-bbbbbbbbbbbb", "other"}
	for _, name := range fakes {
		if err := os.Mkdir(filepath.Join(root, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeJSON(filepath.Join(root, "local-bbbbbbbbbbbb", metaFile), instanceMeta{ID: "local-cccccccccccc"}); err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(root, outside)
	done, err := g.Decrease(context.Background(), append(fakes, rel, "../"+filepath.Base(outside), ""))
	if len(done) != 0 || !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("decrease = %v, %v; want nothing done and ErrNotFound", done, err)
	}
	for _, dir := range append([]string{outside}, fakes...) {
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(root, dir)
		}
		if _, err := os.Stat(dir); err != nil {
			t.Errorf("%s was touched: %v", dir, err)
		}
	}
	if st := states(t, g); len(st) != 0 {
		t.Fatalf("non-instances listed: %v", st)
	}
	if done, err := g.Decrease(context.Background(), nil); done != nil || err != nil {
		t.Fatalf("empty decrease = %v, %v", done, err)
	}
}

func TestCredentials(t *testing.T) {
	configured, configuredPEM, err := GenerateKey("configured")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		settings provider.ConnectorConfig
		wantKey  func(t *testing.T, info provider.ConnectInfo)
	}{
		{name: "configured key and user", settings: provider.ConnectorConfig{Key: configuredPEM, Username: "builder", UseStaticCredentials: true},
			wantKey: func(t *testing.T, info provider.ConnectInfo) {
				if !bytes.Equal(info.Key, configuredPEM) || info.Username != "builder" {
					t.Errorf("key or user not the configured ones: user %q", info.Username)
				}
				if !bytes.Contains(info.HostKey, []byte("ssh-ed25519 ")) {
					t.Errorf("host key %q", info.HostKey)
				}
				_ = configured
			}},
		{name: "generated key", settings: provider.ConnectorConfig{},
			wantKey: func(t *testing.T, info provider.ConnectInfo) {
				if len(info.Key) == 0 || bytes.Equal(info.Key, configuredPEM) {
					t.Error("no generated key reported")
				}
				if info.Username != defaultUser() {
					t.Errorf("user %q, want %q", info.Username, defaultUser())
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot(t)
			g := newGroup(t, map[string]any{"root_dir": root}, tt.settings)
			if _, err := g.Increase(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
			id := ids(waitStates(t, g, "1 running instance", allRunning(1)))[0]
			info, err := g.ConnectInfo(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			tt.wantKey(t, info)
			if out := runOn(t, g, id, "echo ok"); out != "ok\n" {
				t.Errorf("output %q", out)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name     string
		config   string
		settings provider.ConnectorConfig
		want     []string
	}{
		{name: "every bad key at once", config: `{"max_instances": -1, "boot_delay": "soon", "isolation": "vm", "docker_socket": "docker.sock", "rootdir": "/x"}`,
			want: []string{"plugin_config.rootdir: unknown key", `did you mean "root_dir"`}},
		{name: "values", config: `{"max_instances": -1, "boot_delay": "soon", "isolation": "vm", "docker_socket": "docker.sock"}`,
			want: []string{"plugin_config.max_instances", "plugin_config.boot_delay", "plugin_config.isolation", "plugin_config.docker_socket"}},
		{name: "negative boot delay", config: `{"boot_delay": "-1s"}`, want: []string{"plugin_config.boot_delay", "negative"}},
		{name: "static credentials without any", config: `{}`, settings: provider.ConnectorConfig{UseStaticCredentials: true},
			want: []string{"use_static_credentials is true but neither key nor password"}},
		{name: "unparsable key", config: `{}`, settings: provider.ConnectorConfig{Key: []byte("not a key")},
			want: []string{"connector_config key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := New(selfCommand(t))
			cfg := strings.Replace(tt.config, "{", `{"root_dir": "`+t.TempDir()+`", `, 1)
			cfg = strings.Replace(cfg, ", }", "}", 1)
			err := plugin.DecodeConfig([]byte(cfg), g)
			if err == nil {
				_, err = g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: tt.settings})
			}
			if !errors.Is(err, provider.ErrInvalidConfig) {
				t.Fatalf("error = %v, want ErrInvalidConfig", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestDockerSocketThroughInstance reaches a real dockerd through an instance, as the
// docker-autoscaler executor does: direct-streamlocal to /var/run/docker.sock on the
// instance, mapped to the configured docker_socket.
func TestDockerSocketThroughInstance(t *testing.T) {
	sock := os.Getenv("DOCKER_SOCKET")
	if sock == "" {
		sock = "/var/run/docker.sock"
	}
	probe := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 5 * time.Second}
	if resp, err := probe.Get("http://docker/_ping"); err != nil {
		t.Skipf("no dockerd answering on %s (set DOCKER_SOCKET to use another): %v", sock, err)
	} else {
		resp.Body.Close()
	}
	// The instance must reach the daemon through the configured path, not by luck of
	// the standard one: give it a link with another name.
	link := filepath.Join(t.TempDir(), "dockerd.sock")
	if err := os.Symlink(sock, link); err != nil {
		t.Fatal(err)
	}
	root := newRoot(t)
	g := newGroup(t, map[string]any{"root_dir": root, "docker_socket": link}, provider.ConnectorConfig{})
	if _, err := g.Increase(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	id := ids(waitStates(t, g, "1 running instance", allRunning(1)))[0]
	info, err := g.ConnectInfo(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	c, err := connector.Dial(context.Background(), info, connector.DialOptions{HostKeys: connector.NewMemoryHostKeyStore()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	docker := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return c.Dial(ctx, "unix", DockerSocketPath)
	}}, Timeout: 10 * time.Second}
	resp, err := docker.Get("http://internal.tunnel.invalid/_ping")
	if err != nil {
		t.Fatalf("docker ping through %s: %v", id, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "OK" {
		t.Fatalf("docker ping = %d %q, want 200 OK", resp.StatusCode, body)
	}
}

func TestNamespacesIsolationOfInstances(t *testing.T) {
	if err := probeNamespaces(context.Background(), selfCommand(t)); err != nil {
		t.Skipf("namespaces are not available here (needs root or CAP_SYS_ADMIN on Linux): %v", err)
	}
	for _, mode := range []string{IsolationNamespaces, IsolationAuto} {
		t.Run(mode, func(t *testing.T) {
			root := newRoot(t)
			g := newGroup(t, map[string]any{"root_dir": root, "isolation": mode}, provider.ConnectorConfig{})
			if _, err := g.Increase(context.Background(), 1); err != nil {
				t.Fatal(err)
			}
			id := ids(waitStates(t, g, "1 running instance", allRunning(1)))[0]
			if out := runOn(t, g, id, "cat /proc/sys/kernel/hostname"); out != id+"\n" {
				t.Fatalf("host name in the sandbox = %q, want the instance ID %q", out, id)
			}
		})
	}
}

func TestRootDirHasOneOwner(t *testing.T) {
	root := newRoot(t)
	launch(t, map[string]any{"root_dir": root}) // another process now owns root_dir
	g := New(selfCommand(t))
	if err := plugin.DecodeConfig([]byte(`{"root_dir": "`+root+`"}`), g); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := g.Init(ctx, hclog.NewNullLogger(), provider.Settings{})
	if !errors.Is(err, provider.ErrInvalidConfig) || !strings.Contains(err.Error(), "in use by another local plugin") {
		t.Fatalf("init on a root_dir in use = %v, want ErrInvalidConfig naming the conflict", err)
	}
}
