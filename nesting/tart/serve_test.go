package tart_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// daemon is a `nesting serve --hypervisor tart` process.
type daemon struct {
	cmd    *exec.Cmd
	log    *syncbuf.Buffer
	done   chan struct{}
	err    error
	client *nesting.Client
}

func startDaemon(t *testing.T, bin, config, sock string) *daemon {
	t.Helper()
	d := &daemon{log: &syncbuf.Buffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, "serve", "--hypervisor", "tart", "--config", config, "--socket", sock)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a group of its own, as in a terminal
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		_ = d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log)
		}
	})
	c, err := nesting.Dial("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d.client = c
	eventually.NoError(t, "the daemon to answer", 30*time.Second, func() error {
		select {
		case <-d.done:
			t.Fatalf("the daemon exited: %v\n%s", d.err, d.log)
		default:
		}
		_, _, err := c.List(context.Background())
		return err
	})
	return d
}

// TestServe drives a real `nesting serve --hypervisor tart`, with the stand-in tart
// found in PATH, through nesting.Client: two VMs and no third, a kill -9 of the
// daemon that leaves the VMs running for the next one, which lists and deletes them,
// and a shutdown that leaves no VM and no `tart run`.
func TestServe(t *testing.T) {
	e := newEnv(t)
	bin := filepath.Join(t.TempDir(), "nesting")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/flotilla-ci/flotilla/nesting/cmd/nesting").CombinedOutput(); err != nil {
		t.Fatalf("build nesting: %v\n%s", err, out)
	}
	t.Setenv("PATH", binDir+string(os.PathListSeparator)+os.Getenv("PATH"))
	config := filepath.Join(t.TempDir(), "tart.json")
	if err := os.WriteFile(config, fmt.Appendf(nil, `{"ssh_port": %d, "ip_timeout": "30s"}`, e.port), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nesting.sock")
	ctx := context.Background()

	d := startDaemon(t, bin, config, sock)
	var made []nesting.VM
	for slot := range 2 {
		vm, _, err := d.client.Create(ctx, "macos-base", slot)
		if err != nil {
			t.Fatalf("Create in slot %d: %v", slot, err)
		}
		made = append(made, vm)
	}
	if _, _, err := d.client.Create(ctx, "macos-base", nesting.NoSlot); !errors.Is(err, nesting.ErrCapacity) {
		t.Fatalf("third Create: %v, want ErrCapacity", err)
	}
	vms, info, err := d.client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (nesting.Info{Name: "tart", Accelerator: "virtualization.framework", MaxVMs: 2}); info != want {
		t.Errorf("List says the hypervisor is %+v, want %+v", info, want)
	}
	if len(vms) != 2 || vms[0].ID != made[0].ID || vms[1].ID != made[1].ID || vms[0].Image != "macos-base" {
		t.Errorf("List = %+v, want %+v", vms, made)
	}

	// Ctrl-C in the daemon's terminal (SIGINT to its process group), then kill -9 of
	// the next daemon: each time the VMs live on, and the next daemon takes over the
	// socket and them.
	for _, stop := range []struct {
		how    string
		signal func() error
	}{
		{"Ctrl-C", func() error { return syscall.Kill(-d.cmd.Process.Pid, syscall.SIGINT) }},
		{"kill -9", func() error { return d.cmd.Process.Kill() }},
	} {
		if err := stop.signal(); err != nil {
			t.Fatal(err)
		}
		<-d.done
		d = startDaemon(t, bin, config, sock)
		vms, _, err = d.client.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(vms) != 2 {
			t.Fatalf("after %s and a restart List = %+v, want the 2 VMs", stop.how, vms)
		}
		for i, vm := range vms {
			if vm.ID != made[i].ID || vm.Slot != made[i].Slot || vm.Addr != made[i].Addr {
				t.Errorf("after %s and a restart VM %+v, want %+v", stop.how, vm, made[i])
			}
			if got := sshName(t, vm.Addr); got != vm.Name {
				t.Errorf("after %s: ssh %s reached %q, want %q", stop.how, vm.Addr, got, vm.Name)
			}
		}
	}
	pids := []int{e.pid(made[0].Name), e.pid(made[1].Name)}
	if err := d.client.Delete(ctx, made[1].ID); err != nil {
		t.Fatal(err)
	}
	goneWithin(t, pids[1])
	if got := e.ours(t); !slices.Equal(got, []string{made[0].Name}) {
		t.Errorf("after Delete the stand-in has %q, want only %s", got, made[0].Name)
	}

	if err := d.client.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
		if d.err != nil {
			t.Errorf("the daemon exited with %v after Shutdown", d.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not exit after Shutdown")
	}
	goneWithin(t, pids[0])
	if got := e.ours(t); len(got) != 0 {
		t.Errorf("after Shutdown the stand-in has %q", got)
	}
}
