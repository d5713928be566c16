package pool

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/nesting/nestingtest"
	"github.com/flotilla-ci/flotilla/nesting/qemu"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
)

// vmPool is a pool of the local plugin whose jobs run under vm_isolation in real QEMU
// VMs of a nesting daemon on this machine (the local instances reach its socket over
// their SSH connection), and the daemon's hypervisor.
func vmPool(t *testing.T, extra string) (*Pool, *qemu.Hypervisor) {
	t.Helper()
	imagesDir, image := vmtest.Image(t)
	authorized, keyFile := vmtest.KeyFile(t)
	h := qemu.New(nil)
	hcfg, _ := json.Marshal(map[string]any{"images_dir": imagesDir, "state_dir": t.TempDir(), "max_vms": 2,
		"memory": 256, "accelerator": "tcg", "authorized_key": authorized})
	if _, err := h.Init(context.Background(), hcfg); err != nil {
		t.Fatal(err)
	}
	d := nestingtest.Serve(t, h, true)
	cfg, _, err := config.Parse("test.toml", []byte(fmt.Sprintf(`
[[runners]]
  name = "vm"
  executor = "instance"
  %s
  [runners.autoscaler]
    plugin = "local"
    max_instances = 1
    capacity_per_instance = 2
    update_interval = "100ms"
    update_interval_when_expecting = "50ms"
    shutdown_deletion_interval = "100ms"
    [runners.autoscaler.plugin_config]
      root_dir = %q
    [runners.autoscaler.vm_isolation]
      enabled = true
      nesting_host = %q
      image = %q
      [runners.autoscaler.vm_isolation.connector_config]
        username = "root"
        key_path = %q
`, extra, t.TempDir(), d.Host, image, keyFile)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(context.Background(), cfg, &cfg.Runners[0], Options{Logger: quiet, StateDir: t.TempDir(), DeleteOnShutdown: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		vms, _ := h.List(context.Background())
		for _, vm := range vms {
			t.Errorf("VM %s left", vm.ID)
			_ = h.Delete(context.Background(), vm.ID)
		}
	})
	return p, h
}

func scriptJob(id string, script ...string) *jobs.Job {
	return &jobs.Job{ID: id, Name: "job-" + id, Script: script, Timeout: 5 * time.Minute}
}

// TestVMIsolationRunsTheJobInItsOwnVM: the job sees another machine (hostname and
// kernel command line of the guest, none of the host's processes) and its VM is deleted
// afterwards.
func TestVMIsolationRunsTheJobInItsOwnVM(t *testing.T) {
	p, h := vmPool(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	// The job says what machine it is on, and whether it can see this test's process.
	pid := os.Getpid()
	res, inst := p.Run(ctx, scriptJob("1", `echo "host=$(hostname)"`, `echo "cmdline=$(cat /proc/cmdline)"`,
		fmt.Sprintf(`if grep -q pool.test /proc/%d/cmdline 2>/dev/null; then echo "seen=yes"; else echo "seen=no"; fi`, pid)),
		"vm-1", &log, RunOptions{Runtime: executors.RunOptions{Executor: "instance"}})
	if res.Status != executors.StatusSuccess || inst == "" {
		t.Fatalf("job: %+v on %q\n%s", res, inst, log.String())
	}
	host, _ := os.Hostname()
	out := log.String()
	for _, c := range []struct {
		re   string
		want bool
		why  string
	}{
		{`(?m) cmdline=.*flotilla\.key=`, true, "the job's kernel is the guest's (its command line carries the VM's key)"},
		{`(?m) seen=no$`, true, "the job cannot see this machine's processes"},
		{`(?m) host=` + regexp.QuoteMeta(host) + `$`, false, "the job's hostname is not this machine's"},
	} {
		if regexp.MustCompile(c.re).MatchString(out) != c.want {
			t.Errorf("%s: output does not show it:\n%s", c.why, out)
		}
	}
	if vms, _ := h.List(ctx); len(vms) != 0 {
		t.Errorf("VMs after the job: %+v", vms)
	}
}

// TestVMIsolationNeverFallsBack: an image that is not allowed, or a daemon that is not
// there, fails the job as a system failure naming the cause; it never runs on the
// instance.
func TestVMIsolationNeverFallsBack(t *testing.T) {
	p, h := vmPool(t, "[runners.instance]\n    allowed_images = [\"debian\"]")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	job := scriptJob("2", "touch "+t.TempDir()+"/ran-on-the-instance")
	job.Image.Name = "ubuntu"
	var log bytes.Buffer
	res, _ := p.Run(ctx, job, "vm-2", &log, RunOptions{})
	if res.FailureReason != executors.RunnerSystemFailure || !strings.Contains(log.String(), `image "ubuntu" is not allowed`) {
		t.Errorf("job with a disallowed image: %+v\n%s", res, log.String())
	}
	if vms, _ := h.List(ctx); len(vms) != 0 {
		t.Errorf("VMs after a refused job: %+v", vms)
	}
}
