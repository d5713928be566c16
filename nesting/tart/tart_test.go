package tart_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/tart"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// binDir holds the stand-in tart (as "tart"), built once by TestMain.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tart-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "tart"),
		"github.com/flotilla-ci/flotilla/nesting/tart/internal/faketart").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build the stand-in tart: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one stand-in Tart installation: its state directory, its command log and
// the port its VMs serve SSH on.
type env struct {
	home, log string
	port      int
	ipTimeout string // the backend's ip_timeout
}

// newEnv makes a stand-in Tart with the image "macos-base" and points the stand-in's
// variables at it; every VM it still runs at the end of the test is killed.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{home: t.TempDir(), port: sshdtest.ReservePort(t), ipTimeout: "30s"}
	e.log = filepath.Join(e.home, "commands.log")
	// The backend keeps the output of each `tart run` in a temporary file until the VM
	// runs or its failure is reported; none may stay.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Cleanup(func() {
		if left, _ := filepath.Glob(filepath.Join(tmp, "flotilla-tart-run-*")); len(left) > 0 && !t.Failed() {
			t.Errorf("left behind: %q", left)
		}
	})
	t.Setenv("FAKETART_HOME", e.home)
	t.Setenv("FAKETART_LOG", e.log)
	t.Setenv("FAKETART_SSH_PORT", fmt.Sprint(e.port))
	e.image(t, "macos-base", nil)
	t.Cleanup(func() {
		for _, name := range e.names(t) {
			if pid := e.pid(name); pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return e
}

// image makes an image (a stopped VM) with the stand-in's marker files in it
// ("fail-run", "no-ip").
func (e *env) image(t *testing.T, name string, markers map[string]string) {
	t.Helper()
	dir := filepath.Join(e.home, "vms", url.PathEscape(name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, content := range markers {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// names lists the stand-in's VMs.
func (e *env) names(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.home, "vms"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range entries {
		if n, err := url.PathUnescape(d.Name()); err == nil && !strings.HasPrefix(n, ".") {
			out = append(out, n)
		}
	}
	return out
}

// ours lists the stand-in's VMs with the backend's name prefix.
func (e *env) ours(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, n := range e.names(t) {
		if strings.HasPrefix(n, "flotilla-nesting-") {
			out = append(out, n)
		}
	}
	return out
}

// pid is the pid of the VM's `tart run`, 0 if it does not run.
func (e *env) pid(name string) int {
	data, err := os.ReadFile(filepath.Join(e.home, "vms", url.PathEscape(name), "run.json"))
	if err != nil {
		return 0
	}
	var st struct{ PID int }
	_ = json.Unmarshal(data, &st)
	return st.PID
}

// commands returns the command lines the stand-in received, and forgets them.
func (e *env) commands(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(e.log)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	os.Remove(e.log)
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// config is a backend config for the stand-in.
func (e *env) config() []byte {
	return fmt.Appendf(nil, `{"tart": %q, "ssh_port": %d, "ip_timeout": %q}`, filepath.Join(binDir, "tart"), e.port, e.ipTimeout)
}

func newBackend(t *testing.T, e *env) *tart.Backend {
	t.Helper()
	b := tart.New(nil)
	info, err := b.Init(context.Background(), e.config())
	if err != nil {
		t.Fatal(err)
	}
	if want := (nesting.Info{Name: "tart", Accelerator: "virtualization.framework", MaxVMs: 2}); info != want {
		t.Fatalf("Init = %+v, want %+v", info, want)
	}
	return b
}

// goneWithin waits until the process pid has ended. A `tart run` whose daemon was
// killed has no parent left to reap it, so a zombie counts as ended.
func goneWithin(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("no pid to wait for")
	}
	eventually.True(t, fmt.Sprintf("`tart run` (pid %d) to end", pid), 20*time.Second, func() bool {
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if _, after, ok := strings.Cut(string(stat), ") "); ok && strings.HasPrefix(after, "Z") {
				return true
			}
		}
		return syscall.Kill(pid, 0) != nil
	})
}

// sshName runs a command on the VM at addr and returns the VM's name as the stand-in
// tells it (FAKETART_VM).
func sshName(t *testing.T, addr string) string {
	t.Helper()
	c, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{User: "admin", Auth: []ssh.AuthMethod{ssh.Password("admin")},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("ssh %s: %v", addr, err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("ssh %s: %v", addr, err)
	}
	defer s.Close()
	out, err := s.Output("echo $FAKETART_VM")
	if err != nil {
		t.Fatalf("ssh %s: %v", addr, err)
	}
	return strings.TrimSpace(string(out))
}

// TestCommandLines checks the exact tart command lines of each call.
func TestCommandLines(t *testing.T) {
	ctx := context.Background()
	create := func(t *testing.T, b *tart.Backend) string {
		vm, err := b.Create(ctx, "macos-base", 1)
		if err != nil {
			t.Fatal(err)
		}
		return vm.ID
	}
	list := func(t *testing.T, b *tart.Backend) {
		if _, err := b.List(ctx); err != nil {
			t.Fatal(err)
		}
	}
	const listCmd = "list --source local --format json"
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, e *env, b *tart.Backend) string // returns the VM's name
		// op runs the call; it returns the VM it made, or the one setup made.
		op   func(t *testing.T, e *env, b *tart.Backend, vm string) string
		want []string
		// runAndIP: `tart run` and `tart ip --wait` run at once, so their lines (after
		// the first) may come in either order.
		runAndIP bool
	}{
		{
			name:     "create",
			op:       func(t *testing.T, _ *env, b *tart.Backend, _ string) string { return create(t, b) },
			want:     []string{"clone macos-base {vm}", "run --no-graphics {vm}", "ip --wait 30 {vm}"},
			runAndIP: true,
		},
		{
			name:  "list",
			setup: func(t *testing.T, _ *env, b *tart.Backend) string { return create(t, b) },
			op:    func(t *testing.T, _ *env, b *tart.Backend, vm string) string { list(t, b); return vm },
			want:  []string{listCmd},
		},
		{
			name:  "list by a new daemon asks for the address",
			setup: func(t *testing.T, _ *env, b *tart.Backend) string { return create(t, b) },
			op: func(t *testing.T, e *env, _ *tart.Backend, vm string) string {
				list(t, newBackend(t, e))
				return vm
			},
			want: []string{listCmd, "ip {vm}"},
		},
		{
			name:  "delete",
			setup: func(t *testing.T, _ *env, b *tart.Backend) string { return create(t, b) },
			op: func(t *testing.T, _ *env, b *tart.Backend, vm string) string {
				if err := b.Delete(ctx, vm); err != nil {
					t.Fatal(err)
				}
				return vm
			},
			want: []string{listCmd, "stop {vm}", "delete {vm}"},
		},
		{
			name: "delete a stopped VM",
			setup: func(t *testing.T, _ *env, b *tart.Backend) string {
				vm := create(t, b)
				if out, err := exec.Command(filepath.Join(binDir, "tart"), "stop", vm).CombinedOutput(); err != nil {
					t.Fatalf("tart stop: %v: %s", err, out)
				}
				return vm
			},
			op: func(t *testing.T, _ *env, b *tart.Backend, vm string) string {
				if err := b.Delete(ctx, vm); err != nil {
					t.Fatal(err)
				}
				return vm
			},
			want: []string{listCmd, "delete {vm}"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			b := newBackend(t, e)
			vm := ""
			if tc.setup != nil {
				vm = tc.setup(t, e, b)
			}
			e.commands(t)
			vm = tc.op(t, e, b, vm)
			var want []string
			for _, w := range tc.want {
				want = append(want, strings.ReplaceAll(w, "{vm}", vm))
			}
			got := e.commands(t)
			if tc.runAndIP && len(got) == len(want) {
				slices.Sort(got[1:])
				slices.Sort(want[1:])
			}
			if !slices.Equal(got, want) {
				t.Errorf("tart was run as\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
			}
		})
	}
}

// TestAtMostTwoVMs: max_vms above Apple's two is refused, and a daemon of the backend
// runs two VMs, each answering SSH at its address, and refuses a third without running
// tart for it.
func TestAtMostTwoVMs(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, err := tart.New(nil).Init(ctx, fmt.Appendf(nil, `{"tart": %q, "max_vms": 3}`, filepath.Join(binDir, "tart")))
	if !errors.Is(err, nesting.ErrInvalid) || !strings.Contains(err.Error(), "at most 2 macOS VMs per host") {
		t.Fatalf("Init with max_vms 3: %v, want ErrInvalid naming Apple's limit", err)
	}
	s := nesting.NewServer(newBackend(t, e), true, nil)
	var vms []nesting.VM
	for slot := range 2 {
		vm, _, err := s.Create(ctx, "macos-base", slot)
		if err != nil {
			t.Fatalf("Create in slot %d: %v", slot, err)
		}
		vms = append(vms, vm)
	}
	if vms[0].Addr == vms[1].Addr {
		t.Fatalf("both VMs have the address %s", vms[0].Addr)
	}
	for _, vm := range vms {
		if got := sshName(t, vm.Addr); got != vm.Name {
			t.Errorf("ssh %s reached VM %q, want %q", vm.Addr, got, vm.Name)
		}
	}
	e.commands(t)
	if _, _, err := s.Create(ctx, "macos-base", nesting.NoSlot); !errors.Is(err, nesting.ErrCapacity) {
		t.Fatalf("third Create: %v, want ErrCapacity", err)
	}
	if got := e.commands(t); slices.ContainsFunc(got, func(c string) bool { return strings.HasPrefix(c, "clone") }) {
		t.Errorf("the refused Create ran tart clone: %q", got)
	}
	if got := e.ours(t); len(got) != 2 {
		t.Errorf("the stand-in has the VMs %q, want the two created", got)
	}
}

// TestRestart: a new backend over the same Tart finds the VMs its predecessor made,
// with their slots, creation times and addresses, and only those; it deletes them,
// and their `tart run` processes end. Other VMs are left alone.
func TestRestart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	tartBin := filepath.Join(binDir, "tart")
	// A VM of someone else's, running, and one that only looks like ours.
	e.image(t, "flotilla-nesting-mine", nil)
	if out, err := exec.Command(tartBin, "clone", "macos-base", "my-vm").CombinedOutput(); err != nil {
		t.Fatalf("tart clone: %v: %s", err, out)
	}
	other := exec.Command(tartBin, "run", "--no-graphics", "my-vm")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	eventually.True(t, "my-vm to run", 20*time.Second, func() bool { return e.pid("my-vm") > 0 })

	first := newBackend(t, e)
	var made []nesting.VM
	for _, slot := range []int{0, nesting.NoSlot} {
		vm, err := first.Create(ctx, "macos-base", slot)
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, vm)
	}

	second := newBackend(t, e)
	found, err := second.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != len(made) {
		t.Fatalf("the new backend lists %+v, want the %d VMs of the first", found, len(made))
	}
	for _, want := range made {
		i := slices.IndexFunc(found, func(v nesting.VM) bool { return v.ID == want.ID })
		if i < 0 {
			t.Errorf("VM %s is not listed", want.ID)
			continue
		}
		got := found[i]
		if got.Name != want.Name || got.Slot != want.Slot || got.Addr != want.Addr || !got.CreatedAt.Equal(want.CreatedAt.Truncate(time.Millisecond)) {
			t.Errorf("listed %+v, created %+v", got, want)
		}
		if n := sshName(t, got.Addr); n != want.Name {
			t.Errorf("ssh %s reached %q, want %q", got.Addr, n, want.Name)
		}
	}

	for _, id := range []string{"my-vm", "flotilla-nesting-mine", "macos-base"} {
		if err := second.Delete(ctx, id); !errors.Is(err, nesting.ErrVMNotFound) {
			t.Errorf("Delete(%s): %v, want ErrVMNotFound", id, err)
		}
	}
	for _, vm := range made {
		pid := e.pid(vm.Name)
		if err := second.Delete(ctx, vm.ID); err != nil {
			t.Fatalf("Delete(%s): %v", vm.ID, err)
		}
		goneWithin(t, pid)
	}
	if got, want := e.names(t), []string{"flotilla-nesting-mine", "macos-base", "my-vm"}; !slices.Equal(got, want) {
		t.Errorf("the stand-in has the VMs %q, want %q", got, want)
	}
	if e.pid("my-vm") == 0 {
		t.Error("my-vm was stopped")
	}
	if vms, err := first.List(ctx); err != nil || len(vms) != 0 {
		t.Errorf("the first backend lists %+v, %v after the second deleted its VMs", vms, err)
	}
}

// TestCreateFails: an unknown image is ErrImageNotFound with what tart said, and a VM
// whose `tart run` exits at once, or that gets no IP address in time, is a clear
// error; none leaves a VM or a `tart run` behind.
func TestCreateFails(t *testing.T) {
	for _, tc := range []struct {
		name, image string
		markers     map[string]string // of the image
		ipTimeout   string
		wantErr     error
		wantMsg     []string
	}{
		{name: "unknown local image", image: "no-such-image", wantErr: nesting.ErrImageNotFound,
			wantMsg: []string{`the specified VM "no-such-image" does not exist`, "tart list"}},
		{name: "unknown OCI image", image: "ghcr.io/acme/no-such-image:latest", wantErr: nesting.ErrImageNotFound,
			wantMsg: []string{`"ghcr.io/acme/no-such-image:latest" does not exist`}},
		{name: "run exits at once", image: "broken", markers: map[string]string{"fail-run": "VZErrorDomain Code=2: the disk image is unusable"},
			wantMsg: []string{"stopped as it started", "tart run --no-graphics", "the disk image is unusable"}},
		{name: "no IP address in time", image: "no-network", markers: map[string]string{"no-ip": ""}, ipTimeout: "1s",
			wantMsg: []string{"wait for the IP address of VM", "tart ip --wait 1", "no IP address found"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.markers != nil {
				e.image(t, tc.image, tc.markers)
			}
			if tc.ipTimeout != "" {
				e.ipTimeout = tc.ipTimeout
			}
			b := newBackend(t, e)
			ctx := context.Background()
			_, err := b.Create(ctx, tc.image, 0)
			if err == nil {
				t.Fatal("Create succeeded")
			}
			t.Logf("Create: %v", err)
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("Create: %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && errors.Is(err, nesting.ErrImageNotFound) {
				t.Errorf("Create: %v, which is not about the image's name", err)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("Create: %v, want it to say %q", err, m)
				}
			}
			if got := e.ours(t); len(got) != 0 {
				t.Errorf("left behind: %q", got)
			}
			if vms, err := b.List(ctx); err != nil || len(vms) != 0 {
				t.Errorf("List = %+v, %v; want none", vms, err)
			}
		})
	}
}

// TestConfig: defaults, every problem of a config at once with its line, and a
// missing tart named with how to get it.
func TestConfig(t *testing.T) {
	cfg, err := tart.ParseConfig(nil)
	if err != nil || cfg != tart.DefaultConfig() || cfg.MaxVMs != 2 || cfg.SSHPort != 22 || cfg.Tart != "tart" {
		t.Fatalf("ParseConfig(empty) = %+v, %v", cfg, err)
	}
	cfg, err = tart.ParseConfig([]byte(`{"max_vms": 1, "ssh_port": 2222, "ip_timeout": "90s", "tart": "/opt/tart"}`))
	if err != nil || cfg != (tart.Config{Tart: "/opt/tart", MaxVMs: 1, SSHPort: 2222, IPTimeout: 90 * time.Second}) {
		t.Fatalf("ParseConfig = %+v, %v", cfg, err)
	}
	for _, tc := range []struct {
		name, config string
		want         []string
	}{
		{name: "every problem", config: "{\n  \"max_vms\": 5,\n  \"ssh_port\": 0,\n  \"ip_timeout\": \"soon\",\n  \"colour\": 1,\n  \"tart\": \"\"\n}",
			want: []string{"line 2: max_vms: 5 is more than Apple allows", "line 3: ssh_port: 0 is not a TCP port",
				`line 4: ip_timeout: "soon" is not a duration`, `line 5: "colour": unknown key`, "line 6: tart:"}},
		{name: "wait too long", config: `{"ip_timeout": "24h"}`, want: []string{"1 to 65535 seconds"}},
		{name: "not an object", config: `[1]`, want: []string{"line 1", "not an object"}},
		{name: "syntax", config: "{\n\"max_vms\": 2,,\n}", want: []string{"line 2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tart.ParseConfig([]byte(tc.config))
			t.Logf("ParseConfig: %v", err)
			if !errors.Is(err, nesting.ErrInvalid) {
				t.Fatalf("ParseConfig: %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("ParseConfig: %v\nwant it to say %q", err, w)
				}
			}
		})
	}
	t.Run("tart missing", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		_, err := tart.New(nil).Init(context.Background(), []byte(`{"max_vms": 9}`))
		t.Logf("Init: %v", err)
		if !errors.Is(err, nesting.ErrUnavailable) || !errors.Is(err, nesting.ErrInvalid) {
			t.Fatalf("Init: %v, want ErrUnavailable and ErrInvalid", err)
		}
		for _, w := range []string{"macOS on Apple Silicon", "brew install cirruslabs/cli/tart", "max_vms"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Init: %v\nwant it to say %q", err, w)
			}
		}
	})
}
