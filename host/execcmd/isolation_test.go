package execcmd

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
)

// TestExecIsolationFlags: --isolation takes none or vm, and vm only where it can
// apply; a bad combination is refused before anything starts, naming the flag and
// what to do instead.
func TestExecIsolationFlags(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte("build:\n  script: [echo hi]\n"), 0o644)
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"unknown value", Options{Isolation: "container"}, "--isolation container: use none (jobs run on this machine as you) or vm (each job in its own QEMU VM)"},
		{"vm with a config file", Options{Isolation: "vm", ConfigPath: "my.toml"}, "--isolation vm applies to the built-in pool; with -c my.toml, configure [runners.autoscaler.vm_isolation] in that file instead"},
		{"vm with docker-autoscaler", Options{Isolation: "vm", Executor: "docker-autoscaler"}, "--isolation vm runs jobs with the instance executor: the VM image has no Docker Engine for --executor docker-autoscaler"},
		{"vm with too many slots", Options{Isolation: "vm", MaxInstances: 100, Capacity: 11}, "--isolation vm: --max-instances × --capacity = 1100 VMs at once: at most 1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			t.Setenv("XDG_STATE_HOME", state)
			o := tt.o
			o.Dir, o.Stdout, o.Stderr = dir, &bytes.Buffer{}, &bytes.Buffer{}
			code, err := Run(context.Background(), o)
			if err == nil || err.Error() != tt.want || code != ExitInvalid {
				t.Fatalf("Run = %d, %v; want 2, %q", code, err, tt.want)
			}
			if ents, _ := os.ReadDir(state); len(ents) != 0 {
				t.Errorf("a refused run left state behind: %v", ents)
			}
		})
	}
}

func runner(plugin, executor string, mod func(*config.Autoscaler)) *config.Runner {
	r := &config.Runner{Name: "r", Executor: executor, Autoscaler: &config.Autoscaler{Plugin: plugin}}
	if mod != nil {
		mod(r.Autoscaler)
	}
	return r
}

// TestJobsRunLine: the line every run prints says where jobs run and as whom, and is a
// WARNING naming the risk and the remedy when that is root on this machine without
// isolation.
func TestJobsRunLine(t *testing.T) {
	alice := where{uid: 1000, name: "alice", builtIn: true}
	root := where{uid: 0, name: "root", builtIn: true}
	configRoot := where{uid: 0, name: "root"}
	tests := []struct {
		name string
		r    *config.Runner
		w    where
		want string
	}{
		{"built-in, a user", runner("local", "instance", nil), alice,
			"Jobs run on this machine as alice (uid 1000), without isolation"},
		{"built-in, a user without a name", runner("local", "instance", nil), where{uid: 1234, builtIn: true},
			"Jobs run on this machine as uid 1234, without isolation"},
		{"built-in, root", runner("local", "instance", nil), root,
			"WARNING: jobs run on this machine as root (uid 0), without isolation: a job can change or break this machine (install packages, delete files, stop processes); use --isolation vm to run each job in its own VM"},
		{"config, root, namespaces", runner("local", "instance", func(a *config.Autoscaler) {
			a.PluginConfig = map[string]any{"isolation": "namespaces"}
		}), configRoot,
			"WARNING: jobs run on this machine as root (uid 0), in namespaces of their own (this machine's files are not protected): a job can change or break this machine (install packages, delete files, stop processes); configure [runners.autoscaler.vm_isolation] to run each job in its own VM"},
		{"built-in, VMs", runner("local", "instance", nil), where{uid: 0, builtIn: true, vm: &nesting.Info{Name: "qemu", Accelerator: "tcg"}},
			"Jobs run in QEMU VMs (accelerator tcg) on this machine, as root inside each VM, from the VM image debian"},
		{"built-in, VMs, images ignored", runner("local", "instance", nil), where{uid: 0, builtIn: true, vm: &nesting.Info{Name: "qemu", Accelerator: "kvm"}, ignoredImages: 2},
			"Jobs run in QEMU VMs (accelerator kvm) on this machine, as root inside each VM, from the VM image debian (the image: of 2 job(s) is ignored: it names a container image)"},
		{"built-in, docker", runner("local", "docker-autoscaler", func(a *config.Autoscaler) {
			a.PluginConfig = map[string]any{"docker_socket": "/var/run/docker.sock"}
		}), root,
			"Jobs run in Docker containers of this machine's Docker Engine (/var/run/docker.sock), as their images' users"},
		{"config, cloud plugin", runner("aws", "instance", func(a *config.Autoscaler) { a.ConnectorConfig.Username = "ec2-user" }), configRoot,
			"Jobs run on the instances of plugin aws, as ec2-user"},
		{"config, cloud plugin, docker", runner("googlecloud", "docker-autoscaler", nil), configRoot,
			"Jobs run in Docker containers on the instances of plugin googlecloud"},
		{"config, cloud plugin, vm_isolation", runner("aws", "instance", func(a *config.Autoscaler) {
			a.VMIsolation = config.VMIsolation{Enabled: true, NestingHost: "unix:///run/nesting.sock", ConnectorConfig: config.ConnectorConfig{Username: "admin"}}
		}), configRoot,
			"Jobs run in VMs of the nesting daemon unix:///run/nesting.sock on the instances of plugin aws, as admin inside each VM"},
		{"config, local, vm_isolation", runner("local", "instance", func(a *config.Autoscaler) {
			a.VMIsolation = config.VMIsolation{Enabled: true, NestingHost: "unix:///run/nesting.sock"}
		}), configRoot,
			"Jobs run in VMs of the nesting daemon unix:///run/nesting.sock on this machine, as the VM image's user inside each VM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := jobsRunLine(tt.r, tt.w); got != tt.want {
				t.Errorf("line\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// TestExecSaysWhereJobsRun: a run without isolation prints the line for the user
// running it, and loudly for root (the user is faked: a test cannot become another).
func TestExecSaysWhereJobsRun(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte("build:\n  script: [id -u]\n"), 0o644)
	tests := []struct {
		name      string
		uid       int
		user      string
		want      string
		wantLoud  bool
		wantLines int
	}{
		{"non-root", 1000, "alice", "Jobs run on this machine as alice (uid 1000), without isolation\n", false, 1},
		{"root", 0, "root", "WARNING: jobs run on this machine as root (uid 0), without isolation: a job can change or break this machine", true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			real := currentUser
			currentUser = func() (int, string) { return tt.uid, tt.user }
			t.Cleanup(func() { currentUser = real })
			code, out, errOut := run(t, dir, Options{})
			if code != 0 {
				t.Fatalf("exit code %d\n%s\n%s", code, out, errOut)
			}
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("stderr lacks %q:\n%s", tt.want, errOut)
			}
			if got := strings.Count(errOut, "WARNING"); (got > 0) != tt.wantLoud {
				t.Errorf("%d WARNING lines, want loud=%v:\n%s", got, tt.wantLoud, errOut)
			}
			if got := strings.Count(errOut, "obs run "); got != tt.wantLines {
				t.Errorf("%d lines say where jobs run, want %d:\n%s", got, tt.wantLines, errOut)
			}
		})
	}
}

// qemuProcesses are the processes whose command line names dir (the qemu backend's
// VMs name their directory under the state directory).
func qemuProcesses(t *testing.T, dir string) []string {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var found []string
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, "qemu") && strings.Contains(cmd, dir) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			found = append(found, strconv.Itoa(pid)+": "+cmd)
		}
	}
	return found
}

// TestExecIsolationVM: with --isolation vm a job runs in a QEMU VM, another kernel and
// host name than this machine's, although the job names a container image; afterwards
// no QEMU process, VM record or socket of the run is left.
func TestExecIsolationVM(t *testing.T) {
	vmtest.Image(t) // skips (or fails under FLOTILLA_REQUIRE_VM=1) where VMs cannot run
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(`
where:
  image: alpine:3
  script:
    - echo "kernel=$(cat /proc/version)"
    - echo "host=$(hostname)"
`), 0o644)
	code, out, errOut := run(t, dir, Options{Isolation: IsolationVM, MaxInstances: 1, Capacity: 1})
	state := os.Getenv("XDG_STATE_HOME")
	if code != 0 {
		t.Fatalf("exit code %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{"Jobs run in QEMU VMs (accelerator ", ", as root inside each VM, from the VM image debian (the image: of 1 job(s) is ignored"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if strings.Contains(errOut, "WARNING") {
		t.Errorf("a VM-isolated run warns:\n%s", errOut)
	}
	logs, _ := filepath.Glob(filepath.Join(state, "flotilla", "exec-logs", "*", "where.log"))
	if len(logs) != 1 {
		t.Fatalf("job log: %v", logs)
	}
	b, _ := os.ReadFile(logs[0])
	kernel, _ := os.ReadFile("/proc/version")
	hostname, _ := os.Hostname()
	for _, line := range []string{"kernel=" + strings.TrimSpace(string(kernel)), "host=" + hostname} {
		if strings.Contains(string(b), "\n"+line) || strings.Contains(string(b), " "+line) {
			t.Errorf("the job saw this machine's %q:\n%s", line, b)
		}
	}
	for _, want := range []string{"kernel=Linux version", "host="} {
		if !strings.Contains(string(b), want) {
			t.Errorf("job log lacks %q:\n%s", want, b)
		}
	}

	p := newVMPaths(filepath.Join(state, "flotilla"))
	if left := qemuProcesses(t, p.dir); len(left) > 0 {
		t.Errorf("QEMU processes left:\n%s", strings.Join(left, "\n"))
	}
	if ents, _ := os.ReadDir(p.qemuState); len(ents) != 0 {
		t.Errorf("VM records left in %s: %v", p.qemuState, ents)
	}
	if _, err := os.Stat(p.socket); !os.IsNotExist(err) {
		t.Errorf("nesting socket left: %v", err)
	}
}

// TestExecIsolationVMCannotRun: where VMs cannot run, --isolation vm fails with the
// reason and what to install, and runs no job at all (never unisolated instead).
func TestExecIsolationVMCannotRun(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte("build:\n  script: [echo hi]\n"), 0o644)
	// A PATH with QEMU only: no image build tools.
	qemuOnly := t.TempDir()
	for _, c := range []string{"qemu-system-x86_64", "qemu-img"} {
		p, err := exec.LookPath(c)
		if err != nil {
			vmtest.Require(t)
		}
		os.Symlink(p, filepath.Join(qemuOnly, c))
	}
	tests := []struct {
		name, path string
		want       string
	}{
		{"no QEMU", t.TempDir(), "--isolation vm: qemu-system-x86_64 not found: install the Debian package qemu-system-x86 (apt-get install qemu-system-x86 qemu-utils)"},
		{"no image and no build tools", qemuOnly, "--isolation vm: no VM guest image yet, and it cannot be built here: building a guest image needs mmdebstrap (Debian package mmdebstrap)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state := t.TempDir()
			t.Setenv("XDG_STATE_HOME", state)
			t.Setenv("XDG_CACHE_HOME", t.TempDir()) // no cached image
			t.Setenv("PATH", tt.path)
			var stdout, stderr bytes.Buffer
			code, err := Run(context.Background(), Options{Dir: dir, Isolation: IsolationVM, Stdout: &stdout, Stderr: &stderr})
			if code != ExitPipelineFailed || err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("Run = %d, %v; want 1, %q…", code, err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(state, "flotilla", "exec-logs")); !os.IsNotExist(err) {
				t.Errorf("a job ran: %v\n%s%s", err, stdout.String(), stderr.String())
			}
		})
	}
}
