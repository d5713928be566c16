// Package qemu is the nesting daemon's Linux backend: each VM is a QEMU process
// (Debian's qemu-system-x86) booting a guest image of nesting/guestimage with a
// copy-on-write overlay of the image's disk, its own SSH server and a forwarded port on
// 127.0.0.1 (user-mode networking, no privileges needed).
//
// KVM is used where it works and TCG (software emulation) otherwise: with accelerator
// "auto", Init boots an image's kernel under KVM and waits briefly for its initramfs to
// report; a nested host whose KVM hangs falls back to TCG.
//
// Every VM is recorded in the state directory before QEMU starts (state_dir/<id>/vm.json
// next to its overlay, console log and QEMU's pid file), and QEMU runs detached in its
// own session: a daemon that dies leaves its VMs running, and the next daemon lists and
// deletes them.
package qemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/guestimage"
)

// Config is the backend's configuration (JSON).
type Config struct {
	// ImagesDir holds one directory per image, named as jobs name images (default
	// guestimage.DefaultImagesDir()).
	ImagesDir string `json:"images_dir"`
	// StateDir holds the VMs' records and overlays (default
	// /var/lib/flotilla/nesting-qemu for root, else under $XDG_STATE_HOME).
	StateDir string `json:"state_dir"`
	// MaxVMs is how many VMs may run at once (default 2).
	MaxVMs int `json:"max_vms"`
	// VCPUs and Memory (MiB) are each VM's (defaults 1 and 1024).
	VCPUs  int `json:"vcpus"`
	Memory int `json:"memory"`
	// Accelerator is "auto" (default: KVM if a probe boot works, else TCG), "kvm" or "tcg".
	Accelerator string `json:"accelerator"`
	// AuthorizedKey (an authorized_keys line) or AuthorizedKeyFile is the SSH public key
	// the guests accept for their user.
	AuthorizedKey     string `json:"authorized_key"`
	AuthorizedKeyFile string `json:"authorized_key_file"`
	// QEMU is the emulator (default qemu-system-x86_64 from PATH).
	QEMU string `json:"qemu"`
	// ListenAddress is the host address each VM's SSH port is forwarded on (default
	// 127.0.0.1: only this host reaches the VMs). A daemon whose VMs are used from
	// another machine (fleeting-plugin-nesting with nesting_ssh) listens on an address
	// that machine reaches, e.g. "0.0.0.0".
	ListenAddress string `json:"listen_address"`
}

// Hypervisor is the qemu backend. Create it with New.
type Hypervisor struct {
	log *slog.Logger

	mu    sync.Mutex
	cfg   Config
	key   string // base64 of the authorized_keys line
	accel string
	info  nesting.Info
	// probed caches the KVM probe by kernel path: it costs a boot.
	probed map[string]error
	// starting are the VMs whose QEMU this process is starting: List must not take
	// their pid-less records for dead ones.
	starting map[string]bool
}

var _ nesting.Hypervisor = (*Hypervisor)(nil)

// New returns an uninitialized backend.
func New(log *slog.Logger) *Hypervisor {
	if log == nil {
		log = slog.Default()
	}
	return &Hypervisor{log: log, probed: map[string]error{}, starting: map[string]bool{}}
}

func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/flotilla/nesting-qemu"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "flotilla", "nesting-qemu")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "flotilla", "nesting-qemu")
}

// parseConfig decodes and checks data, reporting every problem at once.
func parseConfig(data []byte) (Config, string, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, "", fmt.Errorf("%w: qemu config: %v", nesting.ErrInvalid, err)
	}
	var errs []string
	if c.ImagesDir == "" {
		c.ImagesDir = guestimage.DefaultImagesDir()
	}
	if c.StateDir == "" {
		c.StateDir = defaultStateDir()
	}
	if c.MaxVMs == 0 {
		c.MaxVMs = 2
	}
	if c.VCPUs == 0 {
		c.VCPUs = 1
	}
	if c.Memory == 0 {
		c.Memory = 1024
	}
	if c.Accelerator == "" {
		c.Accelerator = "auto"
	}
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.ListenAddress == "" {
		c.ListenAddress = "127.0.0.1"
	}
	if ip := net.ParseIP(c.ListenAddress); ip == nil || ip.To4() == nil {
		errs = append(errs, fmt.Sprintf("listen_address: %q: want an IPv4 address such as 127.0.0.1 or 0.0.0.0", c.ListenAddress))
	}
	if c.MaxVMs < 0 {
		errs = append(errs, fmt.Sprintf("max_vms: %d: must be at least 1", c.MaxVMs))
	}
	if c.VCPUs < 0 || c.VCPUs > 64 {
		errs = append(errs, fmt.Sprintf("vcpus: %d: must be 1 … 64", c.VCPUs))
	}
	if c.Memory < 128 {
		errs = append(errs, fmt.Sprintf("memory: %d MiB: must be at least 128", c.Memory))
	}
	if !slices.Contains([]string{"auto", "kvm", "tcg"}, c.Accelerator) {
		errs = append(errs, fmt.Sprintf("accelerator: %q: use \"auto\", \"kvm\" or \"tcg\"", c.Accelerator))
	}
	key := c.AuthorizedKey
	switch {
	case c.AuthorizedKey != "" && c.AuthorizedKeyFile != "":
		errs = append(errs, "authorized_key and authorized_key_file: give one of them")
	case c.AuthorizedKeyFile != "":
		b, err := os.ReadFile(c.AuthorizedKeyFile)
		if err != nil {
			errs = append(errs, fmt.Sprintf("authorized_key_file: %v", err))
		}
		key = string(b)
	case key == "":
		errs = append(errs, "authorized_key: missing: the SSH public key (an authorized_keys line) the guests accept, or authorized_key_file")
	}
	var enc string
	if key != "" {
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key))
		if err != nil {
			errs = append(errs, fmt.Sprintf("authorized key: %v: want one authorized_keys line such as \"ssh-ed25519 AAAA…\"", err))
		} else {
			enc = base64.StdEncoding.EncodeToString(ssh.MarshalAuthorizedKey(pk))
		}
	}
	if len(errs) > 0 {
		return c, "", fmt.Errorf("%w: qemu config: %s", nesting.ErrInvalid, strings.Join(errs, "; "))
	}
	return c, enc, nil
}

// Init applies config, finds QEMU and chooses the accelerator.
func (h *Hypervisor) Init(ctx context.Context, config []byte) (nesting.Info, error) {
	c, key, err := parseConfig(config)
	if err != nil {
		return nesting.Info{}, err
	}
	qemu, err := exec.LookPath(c.QEMU)
	if err != nil {
		return nesting.Info{}, fmt.Errorf("%w: %s not found: install the Debian package qemu-system-x86 (apt-get install qemu-system-x86 qemu-utils)", nesting.ErrUnavailable, c.QEMU)
	}
	c.QEMU = qemu
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nesting.Info{}, fmt.Errorf("%w: qemu-img not found: install the Debian package qemu-utils", nesting.ErrUnavailable)
	}
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return nesting.Info{}, fmt.Errorf("%w: state_dir: %v", nesting.ErrInvalid, err)
	}
	accel, err := h.chooseAccel(ctx, c)
	if err != nil {
		return nesting.Info{}, err
	}
	h.log.Info("qemu accelerator", "accelerator", accel, "configured", c.Accelerator)
	info := nesting.Info{Name: "qemu", Accelerator: accel, MaxVMs: c.MaxVMs}
	h.mu.Lock()
	h.cfg, h.key, h.accel, h.info = c, key, accel, info
	h.mu.Unlock()
	return info, nil
}

// Info is what Init last returned.
func (h *Hypervisor) Info() nesting.Info {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.info
}

func (h *Hypervisor) chooseAccel(ctx context.Context, c Config) (string, error) {
	if c.Accelerator == "tcg" {
		return "tcg", nil
	}
	kvmErr := h.probeKVM(ctx, c)
	if kvmErr == nil {
		return "kvm", nil
	}
	if c.Accelerator == "kvm" {
		return "", fmt.Errorf("%w: accelerator \"kvm\": KVM does not work here: %v; set \"accelerator\": \"tcg\" (software emulation, slower) or \"auto\"", nesting.ErrUnavailable, kvmErr)
	}
	h.log.Info("KVM not usable, using TCG", "reason", kvmErr.Error())
	return "tcg", nil
}

// probeTimeout bounds the KVM probe: under KVM the kernel reaches the initramfs in
// about a second; a KVM that cannot run guests (nested hosts) hangs instead.
var probeTimeout = 10 * time.Second

// probeKVM checks that /dev/kvm opens and that an image's kernel boots under KVM to
// its initramfs (which prints a marker and powers off with flotilla.probe=1).
func (h *Hypervisor) probeKVM(ctx context.Context, c Config) error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kvm: %v", err)
	}
	f.Close()
	img, err := firstImage(c.ImagesDir)
	if err != nil {
		// Nothing to boot: trust /dev/kvm.
		h.log.Warn("no image to probe KVM with; trusting /dev/kvm", "images_dir", c.ImagesDir, "err", err)
		return nil
	}
	kernel := filepath.Join(img.dir, img.meta.Kernel)
	h.mu.Lock()
	res, ok := h.probed[kernel]
	h.mu.Unlock()
	if ok {
		return res
	}
	res = runProbe(ctx, c.QEMU, kernel, filepath.Join(img.dir, img.meta.Initrd))
	h.mu.Lock()
	h.probed[kernel] = res
	h.mu.Unlock()
	return res
}

func runProbe(ctx context.Context, qemu, kernel, initrd string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-accel", "kvm", "-M", "pc", "-cpu", "host", "-m", "128",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 quiet flotilla.probe=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if strings.Contains(out.String(), "flotilla-probe-ok") {
		return nil
	}
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("a guest kernel did not boot under KVM within %s (nested virtualization without working KVM)", probeTimeout)
	}
	return fmt.Errorf("qemu -accel kvm: %v: %s", err, lastLine(out.String()))
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

type image struct {
	name string
	dir  string
	meta guestimage.Metadata
}

func firstImage(imagesDir string) (image, error) {
	names, err := imageNames(imagesDir)
	if err != nil {
		return image{}, err
	}
	for _, n := range names {
		if img, err := findImage(imagesDir, n); err == nil {
			return img, nil
		}
	}
	return image{}, errors.New("no image")
}

func imageNames(imagesDir string) ([]string, error) {
	ents, err := os.ReadDir(imagesDir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(imagesDir, e.Name(), guestimage.MetadataFile)); err == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func findImage(imagesDir, name string) (image, error) {
	notFound := func(why string) error {
		names, err := imageNames(imagesDir)
		have := "it holds no images"
		if err != nil {
			have = err.Error()
		} else if len(names) > 0 {
			have = "it holds " + strings.Join(names, ", ")
		}
		return fmt.Errorf("%w: %q %sin images directory %s (%s); build one with `nesting image build --name %s --images-dir %s`",
			nesting.ErrImageNotFound, name, why, imagesDir, have, name, imagesDir)
	}
	if guestimage.ValidName(name) != nil {
		return image{}, notFound("is no image name, so not ")
	}
	dir := filepath.Join(imagesDir, name)
	if _, err := os.Stat(filepath.Join(dir, guestimage.MetadataFile)); err != nil {
		return image{}, notFound("not ")
	}
	// Resolve the link: a rebuilt image replaces it, while running overlays keep theirs.
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	m, err := guestimage.ReadMetadata(dir)
	if err != nil {
		return image{}, fmt.Errorf("%w: %v", nesting.ErrImageNotFound, err)
	}
	return image{name: name, dir: dir, meta: m}, nil
}

// record is state_dir/<id>/vm.json.
type record struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Image string `json:"image"`
	Slot  int    `json:"slot"`
	Port  int    `json:"port"`
	// Listen is the host address the port is forwarded on ("" in records of older
	// daemons: 127.0.0.1).
	Listen  string    `json:"listen,omitempty"`
	Created time.Time `json:"created"`
	// PID is QEMU's, once known (QEMU also writes it to qemu.pid).
	PID int `json:"pid,omitempty"`
}

func (r record) vm() nesting.VM {
	host := r.Listen
	if host == "" {
		host = "127.0.0.1"
	}
	return nesting.VM{ID: r.ID, Name: r.Name, Addr: net.JoinHostPort(host, strconv.Itoa(r.Port)),
		Image: r.Image, Slot: r.Slot, CreatedAt: r.Created}
}

func (h *Hypervisor) config() (Config, string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.info.Name == "" {
		return Config{}, "", nesting.ErrNotInitialized
	}
	return h.cfg, h.accel, nil
}

func writeRecord(dir string, r record) error {
	data, _ := json.MarshalIndent(r, "", "  ")
	tmp := filepath.Join(dir, "vm.json.tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "vm.json"))
}

// Create records the VM, makes its overlay and starts QEMU detached. It returns once
// QEMU runs and forwards the VM's port; the guest's SSH server answers a few seconds
// later (under TCG).
func (h *Hypervisor) Create(ctx context.Context, imageName string, slot int) (nesting.VM, error) {
	c, accel, err := h.config()
	if err != nil {
		return nesting.VM{}, err
	}
	img, err := findImage(c.ImagesDir, imageName)
	if err != nil {
		return nesting.VM{}, err
	}
	idb := make([]byte, 6)
	_, _ = rand.Read(idb)
	id := "qemu-" + hex.EncodeToString(idb)
	dir := filepath.Join(c.StateDir, id)
	// Marked before its directory exists: a List running meanwhile (the server lists
	// before every Create) must not take the directory, which has no record yet, for a
	// dead VM's and remove it under this Create.
	h.mu.Lock()
	h.starting[id] = true
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.starting, id)
		h.mu.Unlock()
	}()
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nesting.VM{}, fmt.Errorf("create VM: %w", err)
	}
	rec := record{ID: id, Name: "flotilla-" + id, Image: imageName, Slot: slot, Listen: c.ListenAddress, Created: time.Now().UTC()}
	vm, err := h.start(ctx, c, accel, img, dir, &rec)
	if err != nil {
		_ = h.kill(context.WithoutCancel(ctx), dir, rec)
		h.remove(dir)
		return nesting.VM{}, fmt.Errorf("create VM from %s: %w", imageName, err)
	}
	h.log.Info("created VM", "id", id, "image", imageName, "slot", slot, "addr", vm.Addr, "pid", rec.PID, "accelerator", accel)
	return vm, nil
}

func (h *Hypervisor) start(ctx context.Context, c Config, accel string, img image, dir string, rec *record) (nesting.VM, error) {
	overlay := filepath.Join(dir, "overlay.qcow2")
	base := filepath.Join(img.dir, img.meta.Disk)
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", img.meta.DiskFormat, overlay).CombinedOutput(); err != nil {
		return nesting.VM{}, fmt.Errorf("qemu-img create overlay of %s: %v: %s", base, err, strings.TrimSpace(string(out)))
	}
	h.mu.Lock()
	key := h.key
	h.mu.Unlock()
	// A port taken by someone else between our check and QEMU's bind fails QEMU's
	// start; another port is tried then.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort(c.ListenAddress)
		if err != nil {
			return nesting.VM{}, err
		}
		rec.Port = port
		// Recorded before QEMU starts: a daemon dying now leaves a record the next one
		// finds (and, through the command line naming this directory, its QEMU).
		if err := writeRecord(dir, *rec); err != nil {
			return nesting.VM{}, fmt.Errorf("record VM: %w", err)
		}
		pidFile := filepath.Join(dir, "qemu.pid")
		args := []string{"-name", rec.Name, "-accel", accel, "-M", "pc",
			"-smp", strconv.Itoa(c.VCPUs), "-m", strconv.Itoa(c.Memory),
			"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
			"-chardev", "file,id=console,path=" + qemuOptValue(filepath.Join(dir, "console.log")), "-serial", "chardev:console",
			"-kernel", filepath.Join(img.dir, img.meta.Kernel), "-initrd", filepath.Join(img.dir, img.meta.Initrd),
			"-append", img.meta.Cmdline + " flotilla.key=" + key,
			"-drive", "file=" + qemuOptValue(overlay) + ",if=virtio,format=qcow2,cache=unsafe",
			"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:%s:%d-:22", c.ListenAddress, port),
			"-device", "virtio-net-pci,netdev=n0",
			"-daemonize", "-pidfile", pidFile}
		if accel == "kvm" {
			args = append(args, "-cpu", "host")
		}
		cmd := exec.CommandContext(ctx, c.QEMU, args...)
		// QEMU daemonizes into its own session after setting up the VM (netdev and
		// port forward included); the parent exits 0 only then.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		out, err := cmd.CombinedOutput()
		if err != nil {
			lastErr = fmt.Errorf("%s: %v: %s", c.QEMU, err, strings.TrimSpace(string(out)))
			if strings.Contains(string(out), "hostfwd") || strings.Contains(string(out), "host forwarding") {
				continue
			}
			return nesting.VM{}, lastErr
		}
		pid, err := readPID(pidFile)
		if err != nil {
			return nesting.VM{}, fmt.Errorf("qemu started but: %w", err)
		}
		rec.PID = pid
		if err := writeRecord(dir, *rec); err != nil {
			return nesting.VM{}, fmt.Errorf("record VM: %w", err)
		}
		return rec.vm(), nil
	}
	return nesting.VM{}, lastErr
}

// qemuOptValue escapes a value inside a QEMU option list (-drive, -chardev), where a
// comma separates options: a path with a comma is written with it doubled.
func qemuOptValue(v string) string { return strings.ReplaceAll(v, ",", ",,") }

func freePort(addr string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: bad pid %q", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// qemuPID finds the VM's live QEMU: the pid file's (or record's) process if its command
// line names the VM's directory, else any process whose does (QEMU started, but the
// daemon died before the pid was known). 0 if none runs.
func qemuPID(dir string, rec record) int {
	cands := []int{}
	if pid, err := readPID(filepath.Join(dir, "qemu.pid")); err == nil {
		cands = append(cands, pid)
	}
	if rec.PID > 0 {
		cands = append(cands, rec.PID)
	}
	for _, pid := range cands {
		if ownsDir(pid, dir) {
			return pid
		}
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && ownsDir(pid, dir) {
			return pid
		}
	}
	return 0
}

// ownsDir says whether pid is a live (not zombie) process whose command line names dir.
func ownsDir(pid int, dir string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte(dir+string(filepath.Separator)))
}

// List returns the VMs recorded in the state directory whose QEMU runs; records of
// dead QEMUs are removed.
func (h *Hypervisor) List(ctx context.Context) ([]nesting.VM, error) {
	c, _, err := h.config()
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(c.StateDir)
	if err != nil {
		return nil, fmt.Errorf("list VMs: %w", err)
	}
	var vms []nesting.VM
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(c.StateDir, e.Name())
		h.mu.Lock()
		starting := h.starting[e.Name()]
		h.mu.Unlock()
		if starting {
			continue
		}
		rec, err := readRecord(dir)
		if err != nil {
			h.log.Warn("removing unreadable VM record", "dir", dir, "err", err)
			if qemuPID(dir, record{}) == 0 {
				_ = os.RemoveAll(dir)
			}
			continue
		}
		if pid := qemuPID(dir, rec); pid == 0 {
			h.log.Info("VM's QEMU is gone; removing its record", "id", rec.ID)
			h.remove(dir)
			continue
		}
		vms = append(vms, rec.vm())
	}
	slices.SortFunc(vms, func(a, b nesting.VM) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return vms, nil
}

func readRecord(dir string) (record, error) {
	var r record
	data, err := os.ReadFile(filepath.Join(dir, "vm.json"))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, err
	}
	if r.ID != filepath.Base(dir) {
		return r, fmt.Errorf("%s: id %q does not match its directory", filepath.Join(dir, "vm.json"), r.ID)
	}
	return r, nil
}

// Delete stops the VM's QEMU, waits until it is gone, and removes its overlay and
// record.
func (h *Hypervisor) Delete(ctx context.Context, id string) error {
	c, _, err := h.config()
	if err != nil {
		return err
	}
	if guestimage.ValidName(id) != nil {
		return fmt.Errorf("%w: %q", nesting.ErrVMNotFound, id)
	}
	dir := filepath.Join(c.StateDir, id)
	rec, err := readRecord(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w: %s", nesting.ErrVMNotFound, id)
		}
		h.log.Warn("deleting VM with unreadable record", "dir", dir, "err", err)
	}
	if err := h.kill(ctx, dir, rec); err != nil {
		return fmt.Errorf("delete VM %s: %w", id, err)
	}
	h.remove(dir)
	h.log.Info("deleted VM", "id", id)
	return nil
}

// kill ends the VM's QEMU (SIGTERM, SIGKILL after 5 s) and waits until it is gone.
func (h *Hypervisor) kill(ctx context.Context, dir string, rec record) error {
	pid := qemuPID(dir, rec)
	if pid == 0 {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	term := time.Now()
	for ownsDir(pid, dir) {
		if time.Since(term) > 5*time.Second {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Since(term) > 30*time.Second {
			return fmt.Errorf("QEMU (pid %d) does not exit", pid)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// remove deletes a stopped VM's files, the record last so that an interrupted removal
// is found again.
func (h *Hypervisor) remove(dir string) {
	for _, f := range []string{"overlay.qcow2", "qemu.pid", "console.log", "vm.json.tmp", "vm.json"} {
		_ = os.Remove(filepath.Join(dir, f))
	}
	_ = os.RemoveAll(dir)
}
