// Package nestingtest has a Hypervisor that keeps its VMs in memory, and Serve, which
// runs the real nesting server on a unix socket in the test's process: for tests of the
// server and of its clients (fleeting-plugin-nesting, the runner's vm_isolation) where
// what matters is the protocol, not a real VM.
package nestingtest

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/nesting"
)

// Config is the fake's Init config.
type Config struct {
	// MaxVMs is how many VMs may run at once; default 2.
	MaxVMs int `json:"max_vms"`
	// Images are the images it knows; default ["debian"].
	Images []string `json:"images"`
}

// Hypervisor is an in-memory nesting.Hypervisor. Every VM's Addr is Addr (a test
// points it at an SSH server of its own), or "127.0.0.1:<n>" when Addr is empty.
type Hypervisor struct {
	Addr string

	mu     sync.Mutex
	cfg    Config
	info   nesting.Info
	vms    map[string]nesting.VM
	nextID int
	calls  map[string]int
}

// New returns an uninitialised fake.
func New() *Hypervisor {
	return &Hypervisor{vms: map[string]nesting.VM{}, calls: map[string]int{}}
}

func (h *Hypervisor) call(name string) { h.calls[name]++ }

// Calls returns how often method was called.
func (h *Hypervisor) Calls(method string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[method]
}

// Init applies a Config.
func (h *Hypervisor) Init(_ context.Context, config []byte) (nesting.Info, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.call("Init")
	cfg := Config{MaxVMs: 2, Images: []string{"debian"}}
	if len(config) > 0 {
		if err := json.Unmarshal(config, &cfg); err != nil {
			return nesting.Info{}, fmt.Errorf("%w: config: %v", nesting.ErrInvalid, err)
		}
	}
	h.cfg = cfg
	h.info = nesting.Info{Name: "fake", Accelerator: "none", MaxVMs: cfg.MaxVMs}
	return h.info, nil
}

// Info returns what Init returned.
func (h *Hypervisor) Info() nesting.Info {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.info
}

// Create records a VM.
func (h *Hypervisor) Create(_ context.Context, image string, slot int) (nesting.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.call("Create")
	if !slices.Contains(h.cfg.Images, image) {
		return nesting.VM{}, fmt.Errorf("%w: %q (images: %q)", nesting.ErrImageNotFound, image, h.cfg.Images)
	}
	h.nextID++
	id := "fake-" + strconv.Itoa(h.nextID)
	addr := h.Addr
	if addr == "" {
		addr = "127.0.0.1:" + strconv.Itoa(20000+h.nextID)
	}
	vm := nesting.VM{ID: id, Name: id, Addr: addr, Image: image, Slot: slot, CreatedAt: time.Now()}
	h.vms[id] = vm
	return vm, nil
}

// Delete forgets a VM.
func (h *Hypervisor) Delete(_ context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.call("Delete")
	if _, ok := h.vms[id]; !ok {
		return fmt.Errorf("%w: %s", nesting.ErrVMNotFound, id)
	}
	delete(h.vms, id)
	return nil
}

// List returns the VMs by ID.
func (h *Hypervisor) List(context.Context) ([]nesting.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.call("List")
	out := make([]nesting.VM, 0, len(h.vms))
	for _, vm := range h.vms {
		out = append(out, vm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Daemon is a nesting server of a Hypervisor on a unix socket, in the test's process.
type Daemon struct {
	// Path is the socket; Host is it as a nesting_host ("unix://" + Path).
	Path, Host string
	// Done is closed when the server has stopped (after Stop, or a client's Shutdown).
	Done <-chan struct{}
	stop func()
}

// Serve serves h on a new socket until the test ends; initialized says whether h was
// already initialized, as by `nesting serve --config`.
func Serve(t testing.TB, h nesting.Hypervisor, initialized bool) *Daemon {
	t.Helper()
	return ServeAt(t, filepath.Join(t.TempDir(), "nesting.sock"), h, initialized)
}

// ServeAt is Serve on the socket path (a test restarts a daemon on its socket).
func ServeAt(t testing.TB, path string, h nesting.Hypervisor, initialized bool) *Daemon {
	t.Helper()
	sock, err := nesting.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := nesting.NewServer(h, initialized, nil).Serve(ctx, sock); err != nil {
			t.Errorf("nesting server: %v", err)
		}
		sock.Close()
	}()
	d := &Daemon{Path: path, Host: "unix://" + path, Done: done, stop: func() { cancel(); <-done }}
	t.Cleanup(d.Stop)
	return d
}

// Stop stops the server (its VMs stay, as when a daemon is stopped with SIGTERM).
func (d *Daemon) Stop() { d.stop() }
