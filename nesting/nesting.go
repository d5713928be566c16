// Package nesting is Flotilla's VM-on-demand service: a daemon in front of one
// hypervisor (QEMU on Linux, Tart on macOS) that creates and deletes pre-configured VMs
// for isolated, short-lived workloads, one CI job each. It speaks the versioned gRPC
// protocol of proto/nesting/v1 on a unix socket, with the calls and meaning of GitLab's
// nesting daemon: Init, Create (image, slot), Delete, List, Shutdown.
//
// This package holds what both sides share: the Hypervisor interface a backend
// implements (nesting/qemu, nesting/tart), Serve, which puts a Hypervisor on a socket
// with the slot rules, and Client, which the runner and fleeting-plugin-nesting use.
package nesting

import (
	"context"
	"errors"
	"time"
)

// VM is one VM of a nesting daemon.
type VM struct {
	// ID is unique on the host, also across restarts of the daemon.
	ID string `json:"id"`
	// Name is the hypervisor's name for the VM.
	Name string `json:"name"`
	// Addr is host:port of the VM's SSH server, reachable from the daemon's host.
	Addr  string `json:"addr"`
	Image string `json:"image"`
	// Slot is the VM's slot (0 … MaxVMs-1), or -1 for a VM created without one.
	Slot      int       `json:"slot"`
	CreatedAt time.Time `json:"created_at"`
}

// NoSlot is the Slot of a VM created without one.
const NoSlot = -1

// Info says what runs a daemon's VMs.
type Info struct {
	// Name is the hypervisor: "qemu" or "tart".
	Name string `json:"name"`
	// Accelerator is how VMs run: "kvm" or "tcg" for qemu.
	Accelerator string `json:"accelerator"`
	// MaxVMs is how many VMs may run at once; slots are 0 … MaxVMs-1.
	MaxVMs int `json:"max_vms"`
}

// Hypervisor is a backend of the daemon. Serve calls it from one request at a time per
// VM but concurrently across VMs; an implementation is safe for concurrent use. Slots
// are Serve's business: a Hypervisor records the slot it is given with the VM (so that
// a restarted daemon knows it) and checks nothing about it.
type Hypervisor interface {
	// Init applies config (JSON, the backend's own keys), reporting every problem at
	// once; it is called again when a client sends a config.
	Init(ctx context.Context, config []byte) (Info, error)
	// Create starts a VM from image in slot (NoSlot for none) and returns it once its
	// address is known. An unknown image is ErrImageNotFound, wrapped with what images
	// there are.
	Create(ctx context.Context, image string, slot int) (VM, error)
	// Delete stops the VM and removes everything of it; ErrVMNotFound if there is no
	// such VM.
	Delete(ctx context.Context, id string) error
	// List returns every VM of the backend on this host, also those of a previous run.
	List(ctx context.Context) ([]VM, error)
	// Info is what Init last returned (the zero Info before Init).
	Info() Info
}

// Errors of the protocol. Serve turns them into gRPC codes and Client turns those back,
// so errors.Is works on both sides of the socket.
var (
	// ErrNotInitialized: Init was not called yet.
	ErrNotInitialized = errors.New("nesting: not initialized (call Init with the hypervisor's config first)")
	// ErrImageNotFound: the image does not exist.
	ErrImageNotFound = errors.New("image not found")
	// ErrVMNotFound: no VM has the id.
	ErrVMNotFound = errors.New("vm not found")
	// ErrInvalid: a bad request or configuration.
	ErrInvalid = errors.New("invalid")
	// ErrCapacity: the host runs as many VMs as it may.
	ErrCapacity = errors.New("no capacity")
	// ErrUnavailable: the hypervisor cannot run here (the message says why).
	ErrUnavailable = errors.New("hypervisor unavailable")
)
