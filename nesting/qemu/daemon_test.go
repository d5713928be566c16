package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// daemon is a real `nesting serve --hypervisor qemu` process.
type daemon struct {
	cmd    *exec.Cmd
	socket string
}

func buildNesting(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nesting")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/flotilla-ci/flotilla/nesting/cmd/nesting").CombinedOutput()
	if err != nil {
		t.Fatalf("go build nesting: %v\n%s", err, out)
	}
	return bin
}

func startDaemon(t *testing.T, bin, config, socket string) (*daemon, *nesting.Client) {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--hypervisor", "qemu", "--config", config, "--socket", socket)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, socket: socket}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var c *nesting.Client
	eventually.NoError(t, "the daemon to answer on "+socket, time.Minute, func() error {
		cl, err := nesting.Dial(socket)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, _, err := cl.List(ctx); err != nil {
			cl.Close()
			return err
		}
		c = cl
		return nil
	})
	t.Cleanup(func() { c.Close() })
	return d, c
}

func ids(vms []nesting.VM) []string {
	var s []string
	for _, v := range vms {
		s = append(s, v.ID)
	}
	slices.Sort(s)
	return s
}

// TestDaemonSlotsKillAndRestart runs the daemon binary: VMs in slots, stomping a held
// slot, kill -9 of the daemon with three VMs running (they keep running), a restart
// that lists them with their slots, and a Shutdown that leaves no QEMU and no overlay.
func TestDaemonSlotsKillAndRestart(t *testing.T) {
	imagesDir, name := vmtest.Image(t)
	key, signer := vmtest.Key(t)
	bin := buildNesting(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	config := filepath.Join(dir, "qemu.json")
	if err := os.WriteFile(config, configJSON(t, map[string]any{"authorized_key": key, "images_dir": imagesDir,
		"state_dir": state, "accelerator": "tcg", "memory": 256, "max_vms": 3}), 0o600); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "nesting.sock")
	d, c := startDaemon(t, bin, config, socket)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t.Cleanup(func() { // whatever happens, no QEMU outlives the test
		for _, pid := range qemuProcesses(t, state) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})

	var vms []nesting.VM
	for slot := range 3 {
		vm, stomped, err := c.Create(ctx, name, slot)
		if err != nil || stomped != "" {
			t.Fatalf("Create slot %d: %v (stomped %q)", slot, err, stomped)
		}
		vms = append(vms, vm)
	}
	if _, _, err := c.Create(ctx, name, 3); err == nil {
		t.Fatal("Create in slot 3 of max_vms 3 succeeded")
	}
	// Stomping: slot 0 again deletes its holder first.
	vm0, stomped, err := c.Create(ctx, name, 0)
	if err != nil || stomped != vms[0].ID {
		t.Fatalf("Create slot 0 again: %v, stomped %q, want %s", err, stomped, vms[0].ID)
	}
	vms[0] = vm0
	if _, err := os.Stat(filepath.Join(state, stomped)); !os.IsNotExist(err) {
		t.Errorf("stomped VM's directory: %v, want gone", err)
	}
	if out, err := vmtest.Run(ctx, vm0.Addr, signer, "bash -c 'git --version'"); err != nil || !strings.HasPrefix(out, "git version") {
		t.Fatalf("VM in slot 0: %q, %v", out, err)
	}

	// kill -9 the daemon: the VMs run on.
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = d.cmd.Wait()
	if p := qemuProcesses(t, state); len(p) != 3 {
		t.Fatalf("after kill -9 of the daemon %d QEMU processes run, want 3", len(p))
	}
	c.Close()

	_, c2 := startDaemon(t, bin, config, socket)
	listed, info, err := c2.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Accelerator != "tcg" || !slices.Equal(ids(listed), ids(vms)) {
		t.Fatalf("restarted daemon lists %v (%+v), want %v", ids(listed), info, ids(vms))
	}
	for _, v := range listed {
		if i := slices.IndexFunc(vms, func(w nesting.VM) bool { return w.ID == v.ID }); vms[i].Slot != v.Slot || vms[i].Addr != v.Addr {
			t.Errorf("listed %+v, created %+v", v, vms[i])
		}
	}
	// The restarted daemon knows the slots: slot 1 stomps its predecessor's VM.
	vm1, stomped, err := c2.Create(ctx, name, 1)
	if err != nil || stomped != vms[1].ID {
		t.Fatalf("Create slot 1 after restart: %v, stomped %q, want %s", err, stomped, vms[1].ID)
	}
	_ = vm1
	if err := c2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if p := qemuProcesses(t, state); len(p) != 0 {
		t.Errorf("QEMU processes after Shutdown: %v", p)
	}
	overlays, _ := filepath.Glob(filepath.Join(state, "*", "*.qcow2"))
	ents, _ := os.ReadDir(state)
	if len(overlays) != 0 || len(ents) != 0 {
		t.Errorf("after Shutdown: overlays %v, state dir %v", overlays, ents)
	}
}
