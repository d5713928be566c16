package nesting_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/nestingtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// serve runs a server of h on a fresh socket and returns a client of it.
func serve(t *testing.T, h nesting.Hypervisor, initialized bool) (*nesting.Client, <-chan struct{}) {
	t.Helper()
	d := nestingtest.Serve(t, h, initialized)
	c, err := nesting.Dial(d.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, d.Done
}

func TestCallsBeforeInitAreRefused(t *testing.T) {
	c, _ := serve(t, nestingtest.New(), false)
	ctx := context.Background()
	if _, _, err := c.Create(ctx, "debian", nesting.NoSlot); !errors.Is(err, nesting.ErrNotInitialized) {
		t.Fatalf("Create before Init: %v, want ErrNotInitialized", err)
	}
	info, err := c.Init(ctx, []byte(`{"max_vms": 3}`))
	if err != nil || info.MaxVMs != 3 || info.Name != "fake" {
		t.Fatalf("Init = %+v, %v", info, err)
	}
	if _, _, err := c.Create(ctx, "debian", nesting.NoSlot); err != nil {
		t.Fatalf("Create after Init: %v", err)
	}
}

// TestSlots: slots are checked against max_vms, a VM created in a held slot deletes the
// holder first and says which one, and no more than max_vms VMs run.
func TestSlots(t *testing.T) {
	h := nestingtest.New()
	c, _ := serve(t, h, false)
	ctx := context.Background()
	if _, err := c.Init(ctx, []byte(`{"max_vms": 2}`)); err != nil {
		t.Fatal(err)
	}
	for _, slot := range []int{2, 7} {
		_, _, err := c.Create(ctx, "debian", slot)
		if !errors.Is(err, nesting.ErrInvalid) || !strings.Contains(err.Error(), "slots 0 to 1") {
			t.Errorf("Create in slot %d: %v, want an out-of-range error naming the slots", slot, err)
		}
	}
	first, stomped, err := c.Create(ctx, "debian", 0)
	if err != nil || stomped != "" || first.Slot != 0 {
		t.Fatalf("Create in slot 0 = %+v, %q, %v", first, stomped, err)
	}
	second, stomped, err := c.Create(ctx, "debian", 0)
	if err != nil || stomped != first.ID {
		t.Fatalf("Create again in slot 0: stomped %q, %v; want %s stomped", stomped, err, first.ID)
	}
	if _, _, err := c.Create(ctx, "debian", nesting.NoSlot); err != nil {
		t.Fatalf("Create without slot: %v", err)
	}
	if _, _, err := c.Create(ctx, "debian", 1); !errors.Is(err, nesting.ErrCapacity) {
		t.Errorf("third VM with max_vms 2: %v, want ErrCapacity", err)
	}
	vms, info, err := c.List(ctx)
	if err != nil || len(vms) != 2 || info.MaxVMs != 2 {
		t.Fatalf("List = %+v, %+v, %v", vms, info, err)
	}
	if vms[0].ID != second.ID || vms[0].Slot != 0 || vms[1].Slot != nesting.NoSlot {
		t.Errorf("List = %+v; want %s in slot 0, then one without a slot", vms, second.ID)
	}
}

func TestErrorsCrossTheSocket(t *testing.T) {
	c, _ := serve(t, nestingtest.New(), false)
	ctx := context.Background()
	if _, err := c.Init(ctx, []byte(`{"max_vms": "two"}`)); !errors.Is(err, nesting.ErrInvalid) {
		t.Errorf("Init with a bad config: %v, want ErrInvalid", err)
	}
	if _, err := c.Init(ctx, nil); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.Create(ctx, "windows", nesting.NoSlot)
	if !errors.Is(err, nesting.ErrImageNotFound) || !strings.Contains(err.Error(), `"windows"`) || !strings.Contains(err.Error(), "debian") {
		t.Errorf("unknown image: %v, want ErrImageNotFound naming the image and the images there are", err)
	}
	if err := c.Delete(ctx, "nope"); !errors.Is(err, nesting.ErrVMNotFound) {
		t.Errorf("Delete of an unknown VM: %v, want ErrVMNotFound", err)
	}
}

// TestShutdownDeletesEveryVMAndStops: Shutdown deletes the VMs and ends Serve, which
// removes the socket.
func TestShutdownDeletesEveryVMAndStops(t *testing.T) {
	h := nestingtest.New()
	c, done := serve(t, h, false)
	ctx := context.Background()
	if _, err := c.Init(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for slot := range 2 {
		if _, _, err := c.Create(ctx, "debian", slot); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after Shutdown")
	}
	if vms, _ := h.List(ctx); len(vms) != 0 {
		t.Errorf("VMs left after Shutdown: %+v", vms)
	}
}

// TestSocketOfALiveDaemonIsRefused and a stale one is taken over: a daemon that was
// killed leaves its socket file, which the next daemon replaces.
func TestSocketOfALiveDaemonIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nesting.sock")
	first, err := nesting.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nesting.Listen(path); err == nil || !strings.Contains(err.Error(), "is serving on it") ||
		!strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Listen on a live socket: %v, want a refusal naming the daemon's pid", err)
	}
	first.Close()

	// A daemon killed with SIGKILL: its socket stays, its lock goes with the process.
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperDaemon$")
	cmd.Env = append(os.Environ(), "NESTING_HELPER_SOCKET="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf[:5]) != "ready" {
		t.Fatalf("helper daemon: %q, %v", buf, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the killed daemon's socket should still be there: %v", err)
	}
	sock, err := nesting.Listen(path)
	if err != nil {
		t.Fatalf("Listen on a stale socket: %v", err)
	}
	sock.Close()
}

// TestHelperDaemon is the daemon TestSocketOfALiveDaemonIsRefused kills.
func TestHelperDaemon(t *testing.T) {
	path := os.Getenv("NESTING_HELPER_SOCKET")
	if path == "" {
		t.Skip("helper process only")
	}
	if _, err := nesting.Listen(path); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("ready\n")
	select {}
}

// heldCreate is a Hypervisor whose Create records the VM (as a backend does before it
// starts it) and then waits for release.
type heldCreate struct {
	*nestingtest.Hypervisor
	release chan struct{}
}

func (h heldCreate) Create(ctx context.Context, image string, slot int) (nesting.VM, error) {
	vm, err := h.Hypervisor.Create(ctx, image, slot)
	<-h.release
	return vm, err
}

// TestCreationUnderWayCountsOnce: a VM being created that the backend already lists
// counts once against max_vms, so that concurrent creations up to max_vms succeed.
func TestCreationUnderWayCountsOnce(t *testing.T) {
	h := heldCreate{nestingtest.New(), make(chan struct{})}
	c, _ := serve(t, h, false)
	ctx := context.Background()
	if _, err := c.Init(ctx, []byte(`{"max_vms": 2}`)); err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { _, _, err := c.Create(ctx, "debian", 0); first <- err }()
	eventually.True(t, "the first Create to reach the hypervisor", 10*time.Second, func() bool { return h.Calls("Create") == 1 })
	second := make(chan error, 1)
	go func() { _, _, err := c.Create(ctx, "debian", 1); second <- err }()
	eventually.True(t, "the second Create to reach the hypervisor", 10*time.Second, func() bool {
		select {
		case err := <-second:
			close(h.release)
			t.Fatalf("Create in slot 1 while slot 0 is being created, with max_vms 2: %v", err)
		default:
		}
		return h.Calls("Create") == 2
	})
	close(h.release)
	if err := <-first; err != nil {
		t.Errorf("first Create: %v", err)
	}
	if err := <-second; err != nil {
		t.Errorf("second Create: %v", err)
	}
}
