package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/nesting/vmtest"
)

// vmRecords are the VM records the qemu backend of `runner exec --isolation vm` keeps
// under the state directory: one directory per VM.
func vmRecords(t *testing.T, state string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(state, "flotilla", "exec-vm", "qemu"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range ents {
		ids = append(ids, e.Name())
	}
	return ids
}

// TestExecIsolationVMSignals: SIGTERM during a VM-isolated job cancels it and leaves
// no QEMU process and no VM record; after a kill -9 of the runner (its VM survives,
// QEMU runs in its own session), the next `runner exec --isolation vm` on the same
// state deletes that VM when it starts and leaves nothing either.
func TestExecIsolationVMSignals(t *testing.T) {
	vmtest.Image(t) // skips (or fails under FLOTILLA_REQUIRE_VM=1) where VMs cannot run
	bin := runnerBinary(t)
	args := []string{"--isolation", "vm", "--max-instances", "1", "--capacity", "1"}

	t.Run("SIGTERM", func(t *testing.T) {
		r := startExec(t, bin, longJob("true"), "", nil, args...)
		waitFile(t, r.proc, r.log("long"), jobStarted, 3*time.Minute)
		r.signal(syscall.SIGTERM, false)
		if code := r.exitCode(2 * time.Minute); code != 143 {
			t.Errorf("exit code %d, want 143; output:\n%s", code, r.output())
		}
		if vms := vmRecords(t, r.state); len(vms) > 0 {
			t.Errorf("VMs left: %v; output:\n%s", vms, r.output())
		}
		r.assertNothingLeft(r.root()) // QEMU names the test's directory: it is one of the run's processes
	})

	t.Run("kill -9 then the next run", func(t *testing.T) {
		state := t.TempDir()
		r := startExec(t, bin, longJob("true"), state, nil, args...)
		waitFile(t, r.proc, r.log("long"), jobStarted, 3*time.Minute)
		r.signal(syscall.SIGKILL, true)
		<-r.done
		if vms := vmRecords(t, state); len(vms) != 1 {
			t.Fatalf("after kill -9: VMs %v, want the job's one", vms)
		}
		next := startExec(t, bin, "quick:\n  script: [hostname]\n", state, nil, args...)
		if code := next.exitCode(3 * time.Minute); code != 0 {
			t.Fatalf("next run: exit code %d; output:\n%s", code, next.output())
		}
		if out := next.output(); !strings.Contains(out, "Deleting 1 VM(s) left by an earlier run") {
			t.Errorf("the next run does not say it deletes the VM left:\n%s", out)
		}
		if vms := vmRecords(t, state); len(vms) > 0 {
			t.Errorf("VMs left: %v; output:\n%s", vms, next.output())
		}
		next.assertNothingLeft(next.root())
		r.assertNothingLeft(r.root()) // the first run's QEMU and instance server too
	})
}
