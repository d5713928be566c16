package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
)

func configJSON(t *testing.T, c map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConfigReportsEveryProblem(t *testing.T) {
	key, _ := vmtest.Key(t)
	tests := []struct {
		name string
		cfg  string
		want []string
	}{
		{"unknown key", `{"authorized_key": "` + strings.TrimSpace(key) + `", "memroy": 256}`, []string{`unknown field "memroy"`}},
		{"several at once", `{"accelerator": "hvf", "memory": 64, "vcpus": -1}`,
			[]string{"accelerator: \"hvf\"", "memory: 64 MiB", "vcpus: -1", "authorized_key: missing"}},
		{"bad key", `{"authorized_key": "ssh-ed25519 not-base64"}`, []string{"authorized key:"}},
		{"both keys", `{"authorized_key": "` + strings.TrimSpace(key) + `", "authorized_key_file": "/k"}`, []string{"give one of them"}},
		{"missing key file", `{"authorized_key_file": "/nonexistent/key.pub"}`, []string{"authorized_key_file:", "/nonexistent/key.pub"}},
		{"listen address", `{"listen_address": "::1", "authorized_key": "` + strings.TrimSpace(key) + `"}`, []string{`listen_address: "::1": want an IPv4 address`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(nil).Init(context.Background(), []byte(tt.cfg))
			if !errors.Is(err, nesting.ErrInvalid) {
				t.Fatalf("Init: %v, want ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestQEMUMissingNamesThePackage(t *testing.T) {
	key, _ := vmtest.Key(t)
	_, err := New(nil).Init(context.Background(), configJSON(t, map[string]any{
		"authorized_key": key, "state_dir": t.TempDir(), "qemu": "/nonexistent/qemu-system-x86_64", "accelerator": "tcg"}))
	if !errors.Is(err, nesting.ErrUnavailable) || !strings.Contains(err.Error(), "Debian package qemu-system-x86") {
		t.Fatalf("Init: %v, want ErrUnavailable naming the Debian package qemu-system-x86", err)
	}
}

// initTCG returns a backend on the test's image under TCG.
func initTCG(t *testing.T, extra map[string]any) (*Hypervisor, string) {
	t.Helper()
	imagesDir, name := vmtest.Image(t)
	key, _ := vmtest.Key(t)
	cfg := map[string]any{"authorized_key": key, "images_dir": imagesDir, "state_dir": t.TempDir(),
		"accelerator": "tcg", "memory": 256, "max_vms": 4}
	for k, v := range extra {
		cfg[k] = v
	}
	h := New(nil)
	info, err := h.Init(context.Background(), configJSON(t, cfg))
	if err != nil {
		t.Fatal(err)
	}
	if info.Accelerator != "tcg" || info.Name != "qemu" || info.MaxVMs != 4 {
		t.Fatalf("Info = %+v", info)
	}
	return h, name
}

func TestUnknownImageNamesTheImagesDirectory(t *testing.T) {
	h, name := initTCG(t, nil)
	for _, img := range []string{"ubuntu", "../etc", ""} {
		_, err := h.Create(context.Background(), img, nesting.NoSlot)
		if !errors.Is(err, nesting.ErrImageNotFound) {
			t.Fatalf("Create(%q): %v, want ErrImageNotFound", img, err)
		}
		if !strings.Contains(err.Error(), h.cfg.ImagesDir) || !strings.Contains(err.Error(), "it holds "+name) {
			t.Errorf("Create(%q): %q does not name the images directory and its images", img, err)
		}
	}
	if ents, _ := os.ReadDir(h.cfg.StateDir); len(ents) != 0 {
		t.Errorf("state dir after failed creates: %v", ents)
	}
}

// TestForcedKVM: where KVM cannot run guests (nested VMs such as CI's), forcing it
// fails Init with a message pointing to TCG; where it works, the VMs use it.
func TestForcedKVM(t *testing.T) {
	imagesDir, _ := vmtest.Image(t)
	key, _ := vmtest.Key(t)
	info, err := New(nil).Init(context.Background(), configJSON(t, map[string]any{
		"authorized_key": key, "images_dir": imagesDir, "state_dir": t.TempDir(), "accelerator": "kvm"}))
	if err == nil {
		if info.Accelerator != "kvm" {
			t.Fatalf("forced KVM works but Info.Accelerator = %q", info.Accelerator)
		}
		t.Logf("KVM works on this machine")
		return
	}
	if !errors.Is(err, nesting.ErrUnavailable) || !strings.Contains(err.Error(), "KVM does not work here") ||
		!strings.Contains(err.Error(), `"accelerator": "tcg"`) {
		t.Fatalf("Init with accelerator kvm: %v, want ErrUnavailable saying KVM does not work and how to use TCG", err)
	}
	t.Logf("KVM does not work here: %v", err)
}

// qemuProcesses are the live QEMU processes whose command line names stateDir.
func qemuProcesses(t *testing.T, stateDir string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		var pid int
		if _, err := fmtSscan(e.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), stateDir+"/") && ownsDirAny(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func TestCreateAnswersSSHAndDeleteLeavesNothing(t *testing.T) {
	imagesDir, name := vmtest.Image(t)
	key, signer := vmtest.Key(t)
	// A comma in the path, which QEMU's option lists would split at.
	state := filepath.Join(t.TempDir(), "state,dir")
	h := New(nil)
	if _, err := h.Init(context.Background(), configJSON(t, map[string]any{"authorized_key": key,
		"images_dir": imagesDir, "state_dir": state, "accelerator": "tcg", "memory": 256, "vcpus": 1,
		// Another loopback address than the default stands for a VM host's address that
		// other machines reach: the port is forwarded there, and only there.
		"listen_address": "127.0.0.2"})); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := h.Create(ctx, name, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Delete(context.Background(), vm.ID) })
	if !strings.HasPrefix(vm.Addr, "127.0.0.2:") || vm.Slot != 1 || vm.Image != name {
		t.Errorf("VM = %+v, want its SSH on 127.0.0.2 (listen_address)", vm)
	}
	out, err := vmtest.Run(ctx, vm.Addr, signer, `bash -c 'git --version && ls /etc/ssh/ssh_host_*'`)
	if err != nil {
		console, _ := os.ReadFile(filepath.Join(state, vm.ID, "console.log"))
		t.Fatalf("%v\nconsole:\n%s", err, console)
	}
	if !strings.HasPrefix(out, "git version ") || strings.Contains(out, "rsa") {
		t.Errorf("guest says %q, want git's version and only the ed25519 host key", out)
	}
	_, port, _ := net.SplitHostPort(vm.Addr)
	if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port)); err == nil {
		c.Close()
		t.Errorf("the VM's port also answers on 127.0.0.1: listen_address was not applied")
	}
	// The key is given at boot, not baked in: another key is refused.
	_, other := vmtest.Key(t)
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	_, err = vmtest.Run(short, vm.Addr, other, "true")
	cancelShort()
	if err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Errorf("SSH with a key not given to the VM: %v, want it refused", err)
	}
	vms, err := h.List(ctx)
	if err != nil || len(vms) != 1 || vms[0].ID != vm.ID || vms[0].Slot != 1 || vms[0].Addr != vm.Addr {
		t.Fatalf("List = %+v, %v", vms, err)
	}
	if err := h.Delete(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if p := qemuProcesses(t, state); len(p) > 0 {
		t.Errorf("QEMU still runs after Delete: %v", p)
	}
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Errorf("state dir after Delete: %v", ents)
	}
	if err := h.Delete(ctx, vm.ID); !errors.Is(err, nesting.ErrVMNotFound) {
		t.Errorf("second Delete: %v, want ErrVMNotFound", err)
	}
}
