package pool

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/dockertest"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/nesting/nestingtest"
	"github.com/flotilla-ci/flotilla/nesting/qemu"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// vmHost is a nesting daemon on this machine whose qemu backend runs real VMs (TCG
// where KVM does not work), and what a runner entry needs to use it.
type vmHost struct {
	h           *qemu.Hypervisor
	host, image string
	keyFile     string
}

func newVMHost(t testing.TB) *vmHost {
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
	t.Cleanup(func() {
		vms, _ := h.List(context.Background())
		for _, vm := range vms {
			t.Errorf("VM %s left", vm.ID)
			_ = h.Delete(context.Background(), vm.ID)
		}
	})
	return &vmHost{h: h, host: d.Host, image: image, keyFile: keyFile}
}

// poolSpec is a vm_isolation pool of the local plugin: the local instances reach the
// daemon's socket over their SSH connection.
type poolSpec struct {
	executor         string // default instance
	runner           string // extra lines in [runners]
	autoscaler       string // extra tables at the end of [runners.autoscaler]
	rootDir, state   string // default: new directories
	vmUser           string // the VMs' login, default root
	nestingConfig    string // a [runners.autoscaler.vm_isolation.nesting_config] body
	deleteOnShutdown bool
}

func (v *vmHost) start(t testing.TB, ps poolSpec) *Pool {
	t.Helper()
	return startIsolated(t, v.host, v.image, v.keyFile, ps)
}

// startIsolated starts a vm_isolation pool of the local plugin on the daemon at
// nestingHost.
func startIsolated(t testing.TB, nestingHost, image, keyFile string, ps poolSpec) *Pool {
	t.Helper()
	if ps.executor == "" {
		ps.executor = "instance"
	}
	if ps.vmUser == "" {
		ps.vmUser = "root"
	}
	if ps.rootDir == "" {
		ps.rootDir = t.TempDir()
	}
	if ps.state == "" {
		ps.state = t.TempDir()
	}
	cfg, _, err := config.Parse("test.toml", []byte(fmt.Sprintf(`
[[runners]]
  name = "vm"
  executor = %q
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
      [runners.autoscaler.vm_isolation.nesting_config]
%s
      [runners.autoscaler.vm_isolation.connector_config]
        username = %q
        key_path = %q
%s
`, ps.executor, ps.runner, ps.rootDir, nestingHost, image, ps.nestingConfig, ps.vmUser, keyFile, ps.autoscaler)))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(context.Background(), cfg, &cfg.Runners[0], Options{Logger: quiet, StateDir: ps.state, DeleteOnShutdown: ps.deleteOnShutdown})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { shutdownPool(t, p) }) })
	return p
}

func shutdownPool(t testing.TB, p *Pool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// vmPool is a vm_isolation pool on a new daemon, and the daemon's hypervisor.
func vmPool(t *testing.T, ps poolSpec) (*Pool, *qemu.Hypervisor) {
	t.Helper()
	v := newVMHost(t)
	ps.deleteOnShutdown = true
	return v.start(t, ps), v.h
}

func scriptJob(id string, script ...string) *jobs.Job {
	return &jobs.Job{ID: id, Name: "job-" + id, Script: script, Timeout: 5 * time.Minute}
}

// TestVMIsolationRunsTheJobInItsOwnVM: the job sees another machine (hostname and
// kernel command line of the guest, none of the host's processes) and its VM is deleted
// afterwards.
func TestVMIsolationRunsTheJobInItsOwnVM(t *testing.T) {
	p, h := vmPool(t, poolSpec{})
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
	p, h := vmPool(t, poolSpec{runner: "[runners.instance]\n    allowed_images = [\"debian\"]"})
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

// TestVMIsolationDockerNeedsDockerInTheImage: docker-autoscaler under vm_isolation runs
// the job's containers on the VM's Docker Engine; an image without one fails the job
// with a configuration error that says so, and the VM is deleted.
func TestVMIsolationDockerNeedsDockerInTheImage(t *testing.T) {
	p, h := vmPool(t, poolSpec{executor: "docker-autoscaler", runner: "[runners.docker]\n    image = \"busybox\""})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	job := scriptJob("3", "true")
	job.Image.Name = "busybox" // the container's image; the VM's is vm_isolation.image
	res, _ := p.Run(ctx, job, "vm-3", &log, RunOptions{})
	if res.FailureReason != executors.RunnerSystemFailure || !strings.Contains(log.String(), "has no Docker Engine socket at /var/run/docker.sock") {
		t.Errorf("docker-autoscaler job in a VM without Docker: %+v\n%s", res, log.String())
	}
	if vms, _ := h.List(ctx); len(vms) != 0 {
		t.Errorf("VMs after the job: %+v", vms)
	}
}

// TestVMIsolationAdoptionDeletesLeftVMs: VMs a runner that died left on its instance
// are deleted when the next runner adopts the instance, before it takes a job there.
func TestVMIsolationAdoptionDeletesLeftVMs(t *testing.T) {
	v := newVMHost(t)
	spec := poolSpec{rootDir: t.TempDir(), state: t.TempDir(),
		autoscaler: "    [[runners.autoscaler.policy]]\n      idle_count = 1\n      idle_time = \"1h\""}
	first := v.start(t, spec)
	eventually.True(t, "an idle instance", time.Minute, func() bool { return len(first.Status().InstanceList) == 1 })
	shutdownPool(t, first) // the instance stays (delete_instances_on_shutdown is off)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The job VM of the runner that "died".
	left, err := v.h.Create(ctx, v.image, 0)
	if err != nil {
		t.Fatal(err)
	}
	spec.deleteOnShutdown = true
	second := v.start(t, spec)
	eventually.NoError(t, "the left VM deleted by the adopting runner", 2*time.Minute, func() error {
		vms, err := v.h.List(ctx)
		if err != nil || len(vms) != 0 {
			return fmt.Errorf("VMs %+v (%v), the left one was %s", vms, err, left.ID)
		}
		return nil
	})
	if l := second.Status().InstanceList; len(l) != 1 || !l[0].Restored {
		t.Errorf("instances of the second runner: %+v; want the first's, adopted", l)
	}
}

// TestVMIsolationDeletesTheVMWhateverTheEnd: a failing script, a job that times out
// and a cancelled job each leave no VM behind.
func TestVMIsolationDeletesTheVMWhateverTheEnd(t *testing.T) {
	p, h := vmPool(t, poolSpec{})
	tests := []struct {
		name   string
		job    *jobs.Job
		cancel time.Duration // cancel the run this long after the script starts; 0: never
		want   executors.Status
	}{
		{"failure", scriptJob("f", "exit 3"), 0, executors.StatusFailed},
		{"timeout", func() *jobs.Job { j := scriptJob("t", "sleep 600"); j.Timeout = 2 * time.Second; return j }(), 0, executors.StatusFailed},
		{"cancel", scriptJob("c", "sleep 600"), time.Second, executors.StatusCanceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var log scriptStartLog
			if tt.cancel > 0 {
				log.onStart = func() { time.AfterFunc(tt.cancel, cancel) }
			}
			res, _ := p.Run(ctx, tt.job, "end-"+tt.name, &log, RunOptions{})
			if res.Status != tt.want {
				t.Errorf("job ended %s (%v), want %s\n%s", res.Status, res.Err, tt.want, log.String())
			}
			if vms, _ := h.List(context.Background()); len(vms) != 0 {
				t.Errorf("VMs after the job: %+v", vms)
			}
		})
	}
}

// scriptStartLog is a job log that calls onStart once the job's script starts.
type scriptStartLog struct {
	mu      sync.Mutex
	b       bytes.Buffer
	onStart func()
	started bool
}

func (l *scriptStartLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	if !l.started && l.onStart != nil && bytes.Contains(l.b.Bytes(), []byte(":step_script")) {
		l.started = true
		l.onStart()
	}
	return len(p), nil
}

func (l *scriptStartLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestVMIsolationDaemonNotThere: with no nesting daemon on the instance, the job fails
// as a system failure naming the socket, and does not run on the instance.
func TestVMIsolationDaemonNotThere(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran-on-the-instance")
	_, keyFile := vmtest.KeyFile(t)
	p := startIsolated(t, "unix:///nonexistent/nesting.sock", "debian", keyFile, poolSpec{deleteOnShutdown: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var log bytes.Buffer
	res, _ := p.Run(ctx, scriptJob("n", "touch "+marker), "none-1", &log, RunOptions{})
	if res.FailureReason != executors.RunnerSystemFailure || !strings.Contains(log.String(), "/nonexistent/nesting.sock") {
		t.Errorf("job without a nesting daemon: %+v\n%s", res, log.String())
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the job ran on the instance")
	}
}

// TestVMIsolationInitsTheDaemonOncePerInstance: a daemon started without a config
// gets nesting_config once per instance, not once per job; the "VMs" of this test's
// in-memory hypervisor are one OpenSSH server, so no QEMU is needed.
func TestVMIsolationInitsTheDaemonOncePerInstance(t *testing.T) {
	if ok, why := sshdtest.Available(); !ok {
		t.Skip(why)
	}
	vm := sshdtest.Start(t, sshdtest.Options{})
	h := nestingtest.New()
	h.Addr = vm.Addr
	d := nestingtest.Serve(t, h, false)
	p := startIsolated(t, d.Host, "debian", filepath.Join(vm.Dir, "client_key"), poolSpec{vmUser: vm.User, deleteOnShutdown: true,
		nestingConfig: "        max_vms = 1\n        images = [\"debian\"]"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 2 {
		var log bytes.Buffer
		res, _ := p.Run(ctx, scriptJob(fmt.Sprint(i), "true"), fmt.Sprintf("init-%d", i), &log, RunOptions{})
		if res.Status != executors.StatusSuccess {
			t.Fatalf("job %d: %+v\n%s", i, res, log.String())
		}
	}
	if n := h.Calls("Init"); n != 1 {
		t.Errorf("Init called %d times for two jobs on one instance, want 1", n)
	}
	if n := h.Calls("Create"); n != 2 {
		t.Errorf("Create called %d times for two jobs, want 2", n)
	}
	if vms, _ := h.List(ctx); len(vms) != 0 {
		t.Errorf("VMs after the jobs: %+v", vms)
	}
}

// TestVMIsolationDockerRunsOnTheVMsEngine: under vm_isolation, docker-autoscaler's
// containers run on the Docker Engine of the job's VM, reached through the VM's SSH
// connection. The "VM" is an OpenSSH server of this machine from the in-memory
// hypervisor, and its engine this machine's (the guest image has no Docker Engine).
func TestVMIsolationDockerRunsOnTheVMsEngine(t *testing.T) {
	if ok, why := sshdtest.Available(); !ok {
		t.Skip(why)
	}
	cli := dockertest.Client(t)
	dockertest.EnsureImage(t, cli)
	vm := sshdtest.Start(t, sshdtest.Options{})
	h := nestingtest.New()
	h.Addr = vm.Addr
	if _, err := h.Init(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	d := nestingtest.Serve(t, h, true)
	p := startIsolated(t, d.Host, "debian", filepath.Join(vm.Dir, "client_key"), poolSpec{
		executor: "docker-autoscaler", vmUser: vm.User, deleteOnShutdown: true,
		runner: fmt.Sprintf("[runners.docker]\n    image = %q\n    pull_policy = [\"never\"]", dockertest.Image)})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log bytes.Buffer
	// The test image is a bare busybox rootfs: no os-release, unlike this machine.
	res, _ := p.Run(ctx, scriptJob("d", `if [ -e /etc/os-release ]; then echo "where=host"; else echo "where=container"; fi`),
		"docker-vm", &log, RunOptions{Runtime: executors.RunOptions{Executor: "docker-autoscaler"}})
	if res.Status != executors.StatusSuccess || !regexp.MustCompile(`(?m) where=container$`).MatchString(log.String()) {
		t.Fatalf("job: %+v\n%s", res, log.String())
	}
	if n := h.Calls("Create"); n != 1 {
		t.Errorf("%d VMs created for the job, want 1", n)
	}
	if vms, _ := h.List(ctx); len(vms) != 0 {
		t.Errorf("VMs after the job: %+v", vms)
	}
}
