// Package tart is the nesting backend for Tart (https://tart.run): macOS and Linux VMs
// on Apple Silicon, run by Apple's Virtualization.framework. It drives the `tart` CLI
// as Tart documents it:
//
//	tart clone IMAGE NAME                    make the VM from a local or OCI image
//	tart run --no-graphics NAME              run it, in the background, until it stops
//	tart ip --wait SECONDS NAME              wait for its IP address
//	tart list --source local --format json   find the VMs
//	tart stop NAME; tart delete NAME         remove one
//
// The backend keeps no state of its own that a restarted daemon would need: every VM
// it makes is named flotilla-nesting-<slot>-<created>-<random> (slot "x" for none,
// created in base-36 Unix milliseconds), and the name is the VM's ID. A restarted
// daemon finds its predecessor's VMs, and only those, in `tart list` by that name;
// their slot and creation time come from it, their address from `tart ip`. Only the
// image a VM was cloned from is known to the daemon that created it alone.
//
// Apple's macOS licence allows two macOS VMs per host (Virtualization.framework refuses
// a third), so max_vms is 1 or 2.
package tart

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flotilla-ci/flotilla/nesting"
)

// Config is the backend's Init config (JSON).
type Config struct {
	// Tart is the tart executable: a path, or a name looked up in PATH. Default "tart".
	Tart string `json:"tart"`
	// MaxVMs is how many VMs may run at once: 1 or 2 (Apple's limit). Default 2.
	MaxVMs int `json:"max_vms"`
	// SSHPort is the port the images' SSH servers listen on. Default 22.
	SSHPort int `json:"ssh_port"`
	// IPTimeout is how long a new VM may take to get an IP address (`tart ip --wait`,
	// whole seconds up to 65535), as a Go duration such as "2m". Default 2m.
	IPTimeout time.Duration `json:"-"`
}

// DefaultConfig is the config of an empty Init.
func DefaultConfig() Config {
	return Config{Tart: "tart", MaxVMs: 2, SSHPort: 22, IPTimeout: 2 * time.Minute}
}

// appleMaxVMs is how many macOS VMs Apple's licence (and Virtualization.framework)
// allows on one Mac.
const appleMaxVMs = 2

// namePrefix starts the name of every VM this backend makes; nothing else in `tart
// list` is touched.
const namePrefix = "flotilla-nesting-"

// nameRE parses a VM name: slot ("x" for none), creation time (base-36 Unix ms) and a
// random part.
var nameRE = regexp.MustCompile(`^` + namePrefix + `(\d+|x)-([0-9a-z]+)-([0-9a-f]{8})$`)

// Backend is a nesting.Hypervisor that runs VMs with Tart. It is safe for concurrent
// use.
type Backend struct {
	log *slog.Logger

	mu   sync.Mutex
	cfg  Config
	tart string // cfg.Tart, resolved
	info nesting.Info
	vms  map[string]*known
}

// known is what this daemon knows of a VM beyond `tart list`.
type known struct {
	image string
	addr  string
	run   *runProc // the VM's `tart run`, if this daemon started it
}

// New returns a Backend; Init configures it.
func New(log *slog.Logger) *Backend {
	if log == nil {
		log = slog.Default()
	}
	return &Backend{log: log, vms: map[string]*known{}}
}

var _ nesting.Hypervisor = (*Backend)(nil)

// Init applies config (see Config), reporting every problem at once, and checks that
// tart can be run.
func (b *Backend) Init(_ context.Context, config []byte) (nesting.Info, error) {
	cfg, err := ParseConfig(config)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	path, lerr := exec.LookPath(cfg.Tart)
	if lerr != nil {
		errs = append(errs, tartMissing(lerr))
	}
	if err := errors.Join(errs...); err != nil {
		return nesting.Info{}, err
	}
	info := nesting.Info{Name: "tart", Accelerator: "virtualization.framework", MaxVMs: cfg.MaxVMs}
	b.mu.Lock()
	b.cfg, b.tart, b.info = cfg, path, info
	b.mu.Unlock()
	return info, nil
}

// ParseConfig reads a Config from JSON, with defaults for what it leaves out. An error
// names every bad or unknown key with its line and wraps nesting.ErrInvalid.
func ParseConfig(data []byte) (Config, error) {
	cfg := DefaultConfig()
	if len(bytes.TrimSpace(data)) == 0 {
		return cfg, nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	line := func() int { return 1 + bytes.Count(data[:dec.InputOffset()], []byte("\n")) }
	syntax := func(err error) (Config, error) {
		return DefaultConfig(), fmt.Errorf("%w: tart config: line %d: %v (the config is a JSON object)", nesting.ErrInvalid, line(), err)
	}
	if tok, err := dec.Token(); err != nil {
		return syntax(err)
	} else if tok != json.Delim('{') {
		return syntax(fmt.Errorf("found %v, not an object", tok))
	}
	var problems []string
	bad := func(l int, key, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("line %d: %s: %s", l, key, fmt.Sprintf(format, args...)))
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntax(err)
		}
		key, _ := tok.(string)
		l := line()
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return syntax(err)
		}
		switch key {
		case "tart":
			if err := json.Unmarshal(raw, &cfg.Tart); err != nil || cfg.Tart == "" {
				bad(l, key, "%s is not the tart executable: give a path or a name in PATH, or leave it out for \"tart\"", raw)
				cfg.Tart = DefaultConfig().Tart
			}
		case "max_vms":
			if err := json.Unmarshal(raw, &cfg.MaxVMs); err != nil || cfg.MaxVMs < 1 {
				bad(l, key, "%s is not a number of VMs: give 1 or 2", raw)
			} else if cfg.MaxVMs > appleMaxVMs {
				bad(l, key, "%d is more than Apple allows: the macOS licence permits at most %d macOS VMs per host "+
					"(and Virtualization.framework refuses more); give 1 or 2", cfg.MaxVMs, appleMaxVMs)
			}
		case "ssh_port":
			if err := json.Unmarshal(raw, &cfg.SSHPort); err != nil || cfg.SSHPort < 1 || cfg.SSHPort > 65535 {
				bad(l, key, "%s is not a TCP port (1 to 65535)", raw)
			}
		case "ip_timeout":
			var s string
			d, err := time.Duration(0), json.Unmarshal(raw, &s)
			if err == nil {
				d, err = time.ParseDuration(s)
			}
			switch {
			case err != nil:
				bad(l, key, "%s is not a duration: give one such as \"2m\" or \"90s\"", raw)
			case d < time.Second || d > 65535*time.Second:
				bad(l, key, "%s is out of range: `tart ip --wait` takes 1 to 65535 seconds", s)
			default:
				cfg.IPTimeout = d
			}
		default:
			bad(l, strconv.Quote(key), "unknown key (the tart backend knows tart, max_vms, ssh_port and ip_timeout)")
		}
	}
	if _, err := dec.Token(); err != nil {
		return syntax(err)
	}
	if len(problems) > 0 {
		return cfg, fmt.Errorf("%w: tart config: %s", nesting.ErrInvalid, strings.Join(problems, "; "))
	}
	return cfg, nil
}

// Info returns what Init last returned.
func (b *Backend) Info() nesting.Info {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.info
}

// current returns the config and the tart executable; before Init, the defaults, so
// that List finds a predecessor's VMs.
func (b *Backend) current() (Config, string, error) {
	b.mu.Lock()
	cfg, path := b.cfg, b.tart
	b.mu.Unlock()
	if path != "" {
		return cfg, path, nil
	}
	cfg = DefaultConfig()
	path, err := exec.LookPath(cfg.Tart)
	if err != nil {
		return cfg, "", tartMissing(err)
	}
	return cfg, path, nil
}

// tartMissing is the error of a tart executable that cannot be found.
func tartMissing(err error) error {
	return fmt.Errorf("%w: %v: the tart backend drives Tart, which runs on macOS on Apple Silicon; "+
		"install it with `brew install cirruslabs/cli/tart`, or set \"tart\" in the config to its path", nesting.ErrUnavailable, err)
}

// Create clones image into a new VM, runs it and waits for its IP address.
func (b *Backend) Create(ctx context.Context, image string, slot int) (nesting.VM, error) {
	b.mu.Lock()
	cfg, tart := b.cfg, b.tart
	b.mu.Unlock()
	if tart == "" {
		return nesting.VM{}, nesting.ErrNotInitialized
	}
	if image == "" {
		return nesting.VM{}, fmt.Errorf("%w: no image: give a Tart VM name or an OCI image such as ghcr.io/cirruslabs/macos-sequoia-base:latest", nesting.ErrInvalid)
	}
	created := time.Now()
	name := vmName(slot, created)

	// The clone is the VM's record: once it exists, `tart list` shows it to this daemon
	// and to the next, so nothing started after it can leak.
	if _, err := runTart(ctx, tart, "clone", image, name); err != nil {
		var te *tartError
		if errors.As(err, &te) && te.imageMissing() {
			return nesting.VM{}, fmt.Errorf("%w: %q: tart clone says: %s (images are Tart VMs, see `tart list`, or OCI images such as ghcr.io/cirruslabs/macos-sequoia-base:latest)",
				nesting.ErrImageNotFound, image, te.out)
		}
		return nesting.VM{}, err
	}
	b.mu.Lock()
	k := &known{image: image}
	b.vms[name] = k
	b.mu.Unlock()

	run, err := startRun(tart, name)
	if err == nil {
		b.mu.Lock()
		k.run = run
		b.mu.Unlock()
		var ip string
		ip, err = waitIP(ctx, tart, name, cfg.IPTimeout, run)
		if err == nil {
			run.dropOutput()
			addr := net.JoinHostPort(ip, strconv.Itoa(cfg.SSHPort))
			b.mu.Lock()
			k.addr = addr
			b.mu.Unlock()
			return nesting.VM{ID: name, Name: name, Addr: addr, Image: image, Slot: slot, CreatedAt: created}, nil
		}
	}
	// Remove the VM even if the caller has given up: it must not stay behind. A VM that
	// runs but got no address in time is stopped first.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	derr := error(nil)
	if run != nil {
		defer run.dropOutput()
		if !run.ended() {
			derr = stop(cctx, tart, name)
		}
	}
	if derr == nil {
		derr = b.remove(cctx, tart, name)
	}
	if derr != nil {
		b.log.Error("could not remove a VM that failed to start", "vm", name, "error", derr)
		return nesting.VM{}, fmt.Errorf("%w (and removing %s failed: %v)", err, name, derr)
	}
	return nesting.VM{}, err
}

// vmName is the name of a new VM in slot.
func vmName(slot int, created time.Time) string {
	s := "x"
	if slot != nesting.NoSlot {
		s = strconv.Itoa(slot)
	}
	return namePrefix + s + "-" + strconv.FormatInt(created.UnixMilli(), 36) + "-" + hex.EncodeToString(randomBytes(4))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// parseName returns the slot and creation time of a VM this backend named.
func parseName(name string) (slot int, created time.Time, ok bool) {
	m := nameRE.FindStringSubmatch(name)
	if m == nil {
		return 0, time.Time{}, false
	}
	slot = nesting.NoSlot
	if m[1] != "x" {
		n, err := strconv.Atoi(m[1])
		if err != nil {
			return 0, time.Time{}, false
		}
		slot = n
	}
	ms, err := strconv.ParseInt(m[2], 36, 64)
	if err != nil {
		return 0, time.Time{}, false
	}
	return slot, time.UnixMilli(ms), true
}

// runProc is a VM's `tart run`, started by this daemon. Its output goes to a file,
// not a pipe, so that it keeps running when the daemon dies; the file is unlinked
// once the VM has started, and read if it stops before.
type runProc struct {
	cmd     *exec.Cmd
	out     *os.File
	outOnce sync.Once
	done    chan struct{}
	err     error // set before done is closed
}

// startRun starts `tart run --no-graphics name` in its own session, so that it outlives
// this daemon and no signal to the daemon's process group reaches it.
func startRun(tart, name string) (*runProc, error) {
	out, err := os.CreateTemp("", "flotilla-tart-run-*.log")
	if err != nil {
		return nil, fmt.Errorf("start VM %s: %w", name, err)
	}
	cmd := exec.Command(tart, "run", "--no-graphics", name)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(out.Name())
		out.Close()
		return nil, fmt.Errorf("start VM %s: %w", name, err)
	}
	p := &runProc{cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// dropOutput removes the output file: the VM runs, or its failure was reported.
func (p *runProc) dropOutput() {
	p.outOnce.Do(func() {
		os.Remove(p.out.Name())
		p.out.Close()
	})
}

// ended says whether the `tart run` has ended.
func (p *runProc) ended() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exited describes a `tart run` that ended, with what it printed.
func (p *runProc) exited(name string) error {
	data, _ := os.ReadFile(p.out.Name())
	p.dropOutput()
	msg := strings.TrimSpace(string(data))
	if msg == "" {
		msg = "no output"
	}
	return fmt.Errorf("VM %s stopped as it started: `tart run --no-graphics %s` exited (%v): %s", name, name, p.err, msg)
}

// waitIP waits for the VM's IP address, or for its `tart run` to end.
func waitIP(ctx context.Context, tart, name string, timeout time.Duration, run *runProc) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-run.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	secs := strconv.Itoa(int((timeout + time.Second - 1) / time.Second))
	out, err := runTart(ctx, tart, "ip", "--wait", secs, name)
	select {
	case <-run.done:
		return "", run.exited(name)
	default:
	}
	if err != nil {
		return "", fmt.Errorf("wait for the IP address of VM %s: %w", name, err)
	}
	fields := strings.Fields(string(out))
	if len(fields) == 0 || net.ParseIP(fields[len(fields)-1]) == nil {
		return "", fmt.Errorf("wait for the IP address of VM %s: `tart ip` printed %q, not an IP address", name, out)
	}
	return fields[len(fields)-1], nil
}

// Delete stops the VM and deletes it.
func (b *Backend) Delete(ctx context.Context, id string) error {
	_, tart, err := b.current()
	if err != nil {
		return err
	}
	vms, err := listTart(ctx, tart)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(vms, func(v tartVM) bool { return v.Name == id })
	if _, _, ours := parseName(id); !ours || i < 0 {
		return fmt.Errorf("%w: %s: `tart list` has no VM of this daemon by that name", nesting.ErrVMNotFound, id)
	}
	if vms[i].Running {
		if err := stop(ctx, tart, id); err != nil {
			return err
		}
	}
	return b.remove(ctx, tart, id)
}

// stop stops a VM. One that stopped meanwhile is no error: Tart exits 2 for a VM that
// is not running.
func stop(ctx context.Context, tart, name string) error {
	_, err := runTart(ctx, tart, "stop", name)
	var te *tartError
	if errors.As(err, &te) && te.code == 2 && !strings.Contains(te.out, "does not exist") {
		return nil
	}
	return err
}

// remove deletes a stopped VM, once the `tart run` this daemon started for it ended.
func (b *Backend) remove(ctx context.Context, tart, name string) error {
	b.mu.Lock()
	k := b.vms[name]
	b.mu.Unlock()
	if k != nil && k.run != nil {
		select {
		case <-k.run.done:
		case <-ctx.Done():
			return fmt.Errorf("delete VM %s: its `tart run` (pid %d) did not end: %w", name, k.run.cmd.Process.Pid, ctx.Err())
		}
	}
	if _, err := runTart(ctx, tart, "delete", name); err != nil {
		return err
	}
	b.mu.Lock()
	delete(b.vms, name)
	b.mu.Unlock()
	return nil
}

// List returns the VMs this backend named that `tart list` shows, also those of a
// previous daemon. A VM that is not running has no address.
func (b *Backend) List(ctx context.Context) ([]nesting.VM, error) {
	cfg, tart, err := b.current()
	if err != nil {
		return nil, err
	}
	vms, err := listTart(ctx, tart)
	if err != nil {
		return nil, err
	}
	out := []nesting.VM{}
	for _, v := range vms {
		slot, created, ok := parseName(v.Name)
		if !ok {
			continue
		}
		b.mu.Lock()
		k := b.vms[v.Name]
		if k == nil {
			k = &known{}
			b.vms[v.Name] = k
		}
		image, addr := k.image, k.addr
		b.mu.Unlock()
		if !v.Running {
			addr = ""
		} else if addr == "" {
			// A predecessor's VM: ask where it is.
			ipOut, err := runTart(ctx, tart, "ip", v.Name)
			if f := strings.Fields(string(ipOut)); err == nil && len(f) > 0 && net.ParseIP(f[len(f)-1]) != nil {
				addr = net.JoinHostPort(f[len(f)-1], strconv.Itoa(cfg.SSHPort))
				b.mu.Lock()
				k.addr = addr
				b.mu.Unlock()
			} else {
				b.log.Warn("no address for a running VM", "vm", v.Name, "error", err)
			}
		}
		out = append(out, nesting.VM{ID: v.Name, Name: v.Name, Addr: addr, Image: image, Slot: slot, CreatedAt: created})
	}
	return out, nil
}

// tartVM is an entry of `tart list --format json`.
type tartVM struct {
	Name    string `json:"Name"`
	Running bool   `json:"Running"`
}

func listTart(ctx context.Context, tart string) ([]tartVM, error) {
	out, err := runTart(ctx, tart, "list", "--source", "local", "--format", "json")
	if err != nil {
		return nil, err
	}
	var vms []tartVM
	if err := json.Unmarshal(out, &vms); err != nil {
		return nil, fmt.Errorf("`tart list --source local --format json`: %v: %q", err, out)
	}
	return vms, nil
}

// tartError is a tart command that failed, with what it printed.
type tartError struct {
	args []string
	code int
	out  string
}

func (e *tartError) Error() string {
	return fmt.Sprintf("`tart %s` failed (exit status %d): %s", strings.Join(e.args, " "), e.code, e.out)
}

// imageMissing says whether a failed `tart clone` means its source does not exist:
// Tart exits 2 for a VM that does not exist ("the specified VM … does not exist"), and
// a registry answers "manifest unknown" for an OCI image it does not have.
func (e *tartError) imageMissing() bool {
	return e.code == 2 || strings.Contains(e.out, "does not exist") || strings.Contains(strings.ToLower(e.out), "manifest unknown")
}

// runTart runs tart with args and returns its standard output.
func runTart(ctx context.Context, tart string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, tart, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("`tart %s`: %w", strings.Join(args, " "), ctx.Err())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return nil, fmt.Errorf("`tart %s`: %w", strings.Join(args, " "), err)
	}
	msg := strings.TrimSpace(stderr.String() + "\n" + stdout.String())
	if msg == "" {
		msg = "no output"
	}
	return stdout.Bytes(), &tartError{args: args, code: ee.ExitCode(), out: msg}
}
