package execcmd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/guestimage"
	"github.com/flotilla-ci/flotilla/nesting/qemu"
)

// The values of Options.Isolation (`runner exec --isolation`).
const (
	// IsolationNone runs jobs as they come on the pool's instances: with the built-in
	// pool, as processes of the invoking user on this machine.
	IsolationNone = "none"
	// IsolationVM runs each job of the built-in pool in its own QEMU VM on this
	// machine, through an in-process nesting daemon and the pool's vm_isolation.
	IsolationVM = "vm"
)

// vmImage is the guest image the VMs of --isolation vm boot (nesting/guestimage's).
const vmImage = guestimage.DefaultName

// vmUser is the guest account the jobs run as inside each VM.
const vmUser = "root"

// vmMemory is each VM's memory in MiB: enough for package installs and compilers in a
// job, and only what a guest touches is taken from the host.
const vmMemory = 1024

// checkIsolation validates --isolation against the other flags (after checkPoolSize).
func checkIsolation(o *Options) error {
	switch o.Isolation {
	case "":
		o.Isolation = IsolationNone
	case IsolationNone, IsolationVM:
	default:
		return fmt.Errorf("--isolation %s: use none (jobs run on this machine as you) or vm (each job in its own QEMU VM)", o.Isolation)
	}
	if o.Isolation != IsolationVM {
		return nil
	}
	if o.ConfigPath != "" {
		return fmt.Errorf("--isolation vm applies to the built-in pool; with -c %s, configure [runners.autoscaler.vm_isolation] in that file instead", o.ConfigPath)
	}
	if o.Executor == config.ExecutorDockerAutoscaler {
		return errors.New("--isolation vm runs jobs with the instance executor: the VM image has no Docker Engine for --executor docker-autoscaler")
	}
	// One VM per job slot; the bound keeps the slots of the single instance (see
	// defaultConfig) within what config.toml accepts.
	if n := o.MaxInstances * o.Capacity; n > config.MaxCapacityPerInstance {
		return fmt.Errorf("--isolation vm: --max-instances × --capacity = %d VMs at once: at most %d", n, config.MaxCapacityPerInstance)
	}
	return nil
}

// vmPaths are where --isolation vm keeps its state, under the exec state directory:
// the daemon's socket, the key the guests accept, the images directory and the qemu
// backend's VM records.
type vmPaths struct{ dir, socket, key, images, qemuState string }

func newVMPaths(state string) vmPaths {
	dir := filepath.Join(state, "exec-vm")
	return vmPaths{dir: dir, socket: filepath.Join(dir, "nesting.sock"), key: filepath.Join(dir, "vm_key"),
		images: filepath.Join(dir, "images"), qemuState: filepath.Join(dir, "qemu")}
}

// vmHost is the nesting daemon of --isolation vm, served in this process.
type vmHost struct {
	info   nesting.Info
	srv    *nesting.Server
	sock   *nesting.Socket
	cancel context.CancelFunc
	done   chan error
}

// startVMHost makes sure of the guest image and the key, and serves a nesting daemon
// with the qemu backend on p.socket, with no VM left of an earlier run. slots is the
// pool's job slots: one VM each.
func startVMHost(ctx context.Context, o Options, p vmPaths, slots int, logger *slog.Logger) (*vmHost, error) {
	// QEMU first: a missing emulator is said at once, not after building an image.
	for _, c := range []struct{ cmd, pkg string }{{"qemu-system-x86_64", "qemu-system-x86"}, {"qemu-img", "qemu-utils"}} {
		if _, err := exec.LookPath(c.cmd); err != nil {
			return nil, fmt.Errorf("--isolation vm: %s not found: install the Debian package %s (apt-get install qemu-system-x86 qemu-utils)", c.cmd, c.pkg)
		}
	}
	if len(p.socket) > 107 {
		return nil, fmt.Errorf("--isolation vm: the socket path %s is longer than a unix socket path may be (107 bytes): set XDG_STATE_HOME to a shorter directory", p.socket)
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return nil, fmt.Errorf("--isolation vm: %w", err)
	}
	if err := ensureImage(ctx, o.Stderr, p.images, logger); err != nil {
		return nil, fmt.Errorf("--isolation vm: %w", err)
	}
	authorized, err := ensureKey(p.key)
	if err != nil {
		return nil, fmt.Errorf("--isolation vm: %w", err)
	}
	sock, err := nesting.Listen(p.socket)
	if err != nil {
		return nil, fmt.Errorf("--isolation vm: %w", err)
	}
	cfg, _ := json.Marshal(qemu.Config{ImagesDir: p.images, StateDir: p.qemuState, MaxVMs: slots,
		Memory: vmMemory, Accelerator: "auto", AuthorizedKey: authorized})
	h := qemu.New(logger)
	info, err := h.Init(ctx, cfg)
	if err != nil {
		sock.Close()
		return nil, fmt.Errorf("--isolation vm: start the QEMU backend: %w", err)
	}
	srv := nesting.NewServer(h, true, logger)
	// VMs of a run that was killed (or exited at a third signal) are deleted now: this
	// daemon owns the state directory, and they would hold slots.
	left, _, err := srv.List(ctx)
	if err != nil {
		sock.Close()
		return nil, fmt.Errorf("--isolation vm: list the VMs of an earlier run: %w", err)
	}
	if len(left) > 0 {
		fmt.Fprintf(o.Stderr, "Deleting %d VM(s) left by an earlier run\n", len(left))
	}
	for _, vm := range left {
		if err := srv.Delete(ctx, vm.ID); err != nil && !errors.Is(err, nesting.ErrVMNotFound) {
			sock.Close()
			return nil, fmt.Errorf("--isolation vm: delete VM %s of an earlier run: %w", vm.ID, err)
		}
	}
	// The daemon serves until stop, not until ctx ends: after a signal, the pool still
	// deletes its jobs' VMs through it.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	v := &vmHost{info: info, srv: srv, sock: sock, cancel: cancel, done: make(chan error, 1)}
	go func() { v.done <- srv.Serve(sctx, sock) }()
	return v, nil
}

// stop deletes every VM (nesting's Shutdown) and stops the daemon; VMs that could not
// be deleted are named in the error (the next run deletes them when it starts).
func (v *vmHost) stop(ctx context.Context, stderr io.Writer) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownBound)
	defer cancel()
	err := v.srv.Shutdown(sctx)
	v.cancel()
	serveErr := <-v.done
	_ = v.sock.Close()
	if err != nil {
		fmt.Fprintf(stderr, "runner exec: VMs could not be deleted: %v\n"+
			"The next `runner exec --isolation vm` deletes what is left when it starts.\n", err)
		return err
	}
	if serveErr != nil {
		fmt.Fprintln(stderr, "warning: stopping the nesting daemon:", serveErr)
	}
	return nil
}

// ensureImage installs the guest image into images, building it first if it is not in
// guestimage's cache yet (once per recipe, shared by every run).
func ensureImage(ctx context.Context, stderr io.Writer, images string, logger *slog.Logger) error {
	if _, err := guestimage.Cached(); err != nil {
		if err := guestimage.CheckTools(); err != nil {
			return fmt.Errorf("no VM guest image yet, and it cannot be built here: %w", err)
		}
		fmt.Fprintln(stderr, "Building the VM guest image (first time only, about a minute; run with -v to follow)")
	}
	dir, err := guestimage.Build(ctx, guestimage.Recipe{}, logger)
	if err != nil {
		return err
	}
	_, err = guestimage.Install(dir, images, vmImage)
	return err
}

// ensureKey returns the authorized_keys line of the ed25519 key at path, making the
// key (OpenSSH format, 0600) if there is none.
func ensureKey(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := ssh.ParsePrivateKey(data)
		if err != nil {
			return "", fmt.Errorf("VM key %s: %w (remove it to have a new one made)", path, err)
		}
		return string(ssh.MarshalAuthorizedKey(k.PublicKey())), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("VM key: %w", err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("VM key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "flotilla runner exec --isolation vm")
	if err != nil {
		return "", fmt.Errorf("VM key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("VM key: %w", err)
	}
	authorized := string(ssh.MarshalAuthorizedKey(sshPub))
	// Written under a temporary name and renamed: a run killed meanwhile leaves no
	// half-written key to be read next time.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(block), 0o600); err != nil {
		return "", fmt.Errorf("VM key: %w", err)
	}
	if err := os.WriteFile(path+".pub", []byte(authorized), 0o644); err != nil {
		return "", fmt.Errorf("VM key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("VM key: %w", err)
	}
	return authorized, nil
}

// vmIsolationTable is the built-in pool's [runners.autoscaler.vm_isolation] for
// --isolation vm, indented for defaultConfig.
func vmIsolationTable(p vmPaths) string {
	return fmt.Sprintf(`    [runners.autoscaler.vm_isolation]
      enabled = true
      nesting_host = %q
      image = %q
      [runners.autoscaler.vm_isolation.connector_config]
        username = %q
        key_path = %q
`, "unix://"+p.socket, vmImage, vmUser, p.key)
}

// currentUser is the user running this process: a seam for tests, which cannot
// become another user.
var currentUser = func() (uid int, name string) {
	uid = os.Getuid()
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		name = u.Username
	}
	return uid, name
}

// where is what jobsRunLine needs besides the runner entry.
type where struct {
	uid  int
	name string // the user's name, "" if unknown
	// builtIn: the pool is runner exec's own (no -c).
	builtIn bool
	// vm is the in-process nesting daemon of --isolation vm, nil without.
	vm *nesting.Info
	// ignoredImages is how many jobs name an image that --isolation vm ignores.
	ignoredImages int
}

// jobsRunLine says in one line where the jobs of r run and as whom. Root on this
// machine without isolation is a WARNING line that names the risk and the remedy.
func jobsRunLine(r *config.Runner, w where) string {
	a := r.Autoscaler
	docker := r.Executor == config.ExecutorDockerAutoscaler
	local := a.Plugin == "local"
	switch {
	case w.vm != nil:
		s := fmt.Sprintf("Jobs run in QEMU VMs (accelerator %s) on this machine, as %s inside each VM, from the VM image %s",
			w.vm.Accelerator, vmUser, vmImage)
		if w.ignoredImages > 0 {
			s += fmt.Sprintf(" (the image: of %d job(s) is ignored: it names a container image)", w.ignoredImages)
		}
		return s
	case a.VMIsolation.Enabled:
		on := "this machine"
		if !local {
			on = "the instances of plugin " + a.Plugin
		}
		who := a.VMIsolation.ConnectorConfig.Username
		if who == "" {
			who = "the VM image's user"
		}
		return fmt.Sprintf("Jobs run in VMs of the nesting daemon %s on %s, as %s inside each VM", a.VMIsolation.NestingHost, on, who)
	case !local:
		if docker {
			return "Jobs run in Docker containers on the instances of plugin " + a.Plugin
		}
		who := a.ConnectorConfig.Username
		if who == "" {
			who = "the instances' default user"
		}
		return fmt.Sprintf("Jobs run on the instances of plugin %s, as %s", a.Plugin, who)
	case docker:
		sock, _ := a.PluginConfig["docker_socket"].(string)
		return fmt.Sprintf("Jobs run in Docker containers of this machine's Docker Engine (%s), as their images' users", sock)
	}
	who := fmt.Sprintf("uid %d", w.uid)
	if w.name != "" {
		who = fmt.Sprintf("%s (uid %d)", w.name, w.uid)
	}
	how := "without isolation"
	switch iso, _ := a.PluginConfig["isolation"].(string); iso {
	case "namespaces":
		how = "in namespaces of their own (this machine's files are not protected)"
	case "auto":
		how = "in namespaces of their own where possible (this machine's files are not protected)"
	}
	if w.uid != 0 {
		return fmt.Sprintf("Jobs run on this machine as %s, %s", who, how)
	}
	remedy := "use --isolation vm to run each job in its own VM"
	if !w.builtIn {
		remedy = "configure [runners.autoscaler.vm_isolation] to run each job in its own VM"
	}
	return fmt.Sprintf("WARNING: jobs run on this machine as %s, %s: a job can change or break this machine (install packages, delete files, stop processes); %s",
		who, how, remedy)
}

// clearImages empties the jobs' image: keys, which name container images that the
// VMs of --isolation vm do not run, and returns how many jobs named one.
func clearImages(js []*pipeline.Job) int {
	n := 0
	for _, j := range js {
		if j.Image.Name != "" {
			n++
		}
		j.Image = jobs.Image{}
	}
	return n
}
