package nesting

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/flotilla-ci/flotilla/nesting/internal/pb/nesting/v1"
)

// Socket is a daemon's unix socket, held with a lock file next to it for as long as the
// daemon lives: a second daemon is refused while the first lives, and takes over the
// socket of one that died.
type Socket struct {
	net.Listener
	lock *os.File
	path string
}

// Listen takes the unix socket at path. If a live daemon holds it, Listen refuses and
// says so; a socket left by a daemon that died is removed and taken over.
func Listen(path string) (*Socket, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		pid, _ := os.ReadFile(path + ".lock")
		lock.Close()
		return nil, fmt.Errorf("listen %s: a nesting daemon (pid %s) is serving on it; stop it with `nesting shutdown` or give another --socket",
			path, strings.TrimSpace(string(pid)))
	}
	// Whoever held the lock is gone: its socket, if any, is stale.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		lock.Close()
		return nil, fmt.Errorf("listen %s: remove stale socket: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	// Only this user may create and delete VMs.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		lock.Close()
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	_ = lock.Truncate(0)
	_, _ = lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return &Socket{Listener: ln, lock: lock, path: path}, nil
}

// Close stops listening and removes the socket and its lock.
func (s *Socket) Close() error {
	err := s.Listener.Close()
	_ = os.Remove(s.path)
	_ = os.Remove(s.path + ".lock")
	_ = s.lock.Close()
	return err
}

// Server serves one Hypervisor. It owns the slot rules: a slot is in range, at most one
// VM holds it (Create in a held slot deletes the holder first, "stomping" it), and no
// more than MaxVMs run at once.
type Server struct {
	h   Hypervisor
	log *slog.Logger

	mu          sync.Mutex
	initialized bool
	creating    map[int]bool // slots being created (NoSlot counts in pending)
	pending     int          // creations under way, which count against MaxVMs
	stop        chan struct{}
	stopOnce    sync.Once
}

// NewServer returns a server of h. initialized says whether h.Init was already called
// (`nesting serve --config F` does it before serving); otherwise every call but Init
// and List fails with ErrNotInitialized until a client calls Init.
func NewServer(h Hypervisor, initialized bool, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{h: h, log: log, initialized: initialized, creating: map[int]bool{}, stop: make(chan struct{})}
}

// Serve answers on ln until ctx ends (the VMs stay, for the next daemon to adopt) or a
// client calls Shutdown (the VMs are deleted first). It closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	g := grpc.NewServer()
	pb.RegisterNestingServer(g, &service{s: s})
	done := make(chan error, 1)
	go func() { done <- g.Serve(ln) }()
	select {
	case <-ctx.Done():
	case <-s.stop:
	case err := <-done:
		return err
	}
	g.GracefulStop()
	<-done
	return nil
}

func (s *Server) ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.initialized {
		return ErrNotInitialized
	}
	return nil
}

// Init applies config.
func (s *Server) Init(ctx context.Context, config []byte) (Info, error) {
	info, err := s.h.Init(ctx, config)
	if err != nil {
		return Info{}, err
	}
	s.mu.Lock()
	s.initialized = true
	s.mu.Unlock()
	s.log.Info("hypervisor initialized", "hypervisor", info.Name, "accelerator", info.Accelerator, "max_vms", info.MaxVMs)
	return info, nil
}

// Create starts a VM from image, in slot unless it is NoSlot; it returns the VM and
// the ID of the VM it deleted from the slot, if any.
func (s *Server) Create(ctx context.Context, image string, slot int) (VM, string, error) {
	if err := s.ready(); err != nil {
		return VM{}, "", err
	}
	max := s.h.Info().MaxVMs
	if slot != NoSlot && (slot < 0 || slot >= max) {
		return VM{}, "", fmt.Errorf("%w: slot %d is out of range: this host has slots 0 to %d (max_vms = %d)", ErrInvalid, slot, max-1, max)
	}
	s.mu.Lock()
	if slot != NoSlot && s.creating[slot] {
		s.mu.Unlock()
		return VM{}, "", fmt.Errorf("%w: slot %d: a VM is being created in it", ErrInvalid, slot)
	}
	vms, err := s.h.List(ctx)
	if err != nil {
		s.mu.Unlock()
		return VM{}, "", fmt.Errorf("list VMs: %w", err)
	}
	stomp := ""
	if slot != NoSlot {
		if i := slices.IndexFunc(vms, func(v VM) bool { return v.Slot == slot }); i >= 0 {
			stomp = vms[i].ID
			vms = slices.Delete(vms, i, i+1)
		}
	}
	// A backend lists a VM as soon as it has recorded it, before Create returns: a
	// creation under way whose VM is listed counts once, not twice.
	held := len(vms) + s.pending
	for _, v := range vms {
		if v.Slot != NoSlot && s.creating[v.Slot] {
			held--
		}
	}
	if held >= max {
		s.mu.Unlock()
		return VM{}, "", fmt.Errorf("%w: %d VMs run or are being created, and max_vms is %d", ErrCapacity, held, max)
	}
	s.pending++
	if slot != NoSlot {
		s.creating[slot] = true
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.pending--
		delete(s.creating, slot)
		s.mu.Unlock()
	}()
	if stomp != "" {
		s.log.Info("deleting the VM in the slot first", "slot", slot, "vm", stomp)
		if err := s.h.Delete(ctx, stomp); err != nil && !errors.Is(err, ErrVMNotFound) {
			return VM{}, "", fmt.Errorf("delete VM %s in slot %d: %w", stomp, slot, err)
		}
	}
	vm, err := s.h.Create(ctx, image, slot)
	if err != nil {
		return VM{}, stomp, err
	}
	s.log.Info("VM created", "vm", vm.ID, "image", image, "slot", slot, "addr", vm.Addr)
	return vm, stomp, nil
}

// Delete deletes the VM id.
func (s *Server) Delete(ctx context.Context, id string) error {
	if err := s.ready(); err != nil {
		return err
	}
	if err := s.h.Delete(ctx, id); err != nil {
		return err
	}
	s.log.Info("VM deleted", "vm", id)
	return nil
}

// List lists the VMs.
func (s *Server) List(ctx context.Context) ([]VM, Info, error) {
	vms, err := s.h.List(ctx)
	if err != nil {
		return nil, Info{}, err
	}
	slices.SortFunc(vms, func(a, b VM) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return vms, s.h.Info(), nil
}

// Shutdown deletes every VM, then stops Serve. VMs that could not be deleted are
// named in the error, and Serve goes on, so that the client can try again.
func (s *Server) Shutdown(ctx context.Context) error {
	vms, err := s.h.List(ctx)
	if err != nil {
		return fmt.Errorf("list VMs: %w", err)
	}
	var errs []error
	for _, vm := range vms {
		if err := s.h.Delete(ctx, vm.ID); err != nil && !errors.Is(err, ErrVMNotFound) {
			errs = append(errs, fmt.Errorf("delete VM %s: %w", vm.ID, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.log.Info("shut down", "vms_deleted", len(vms))
	s.stopOnce.Do(func() { close(s.stop) })
	return nil
}

// service adapts Server to the generated gRPC interface.
type service struct {
	pb.UnimplementedNestingServer
	s *Server
}

func (v *service) Init(ctx context.Context, r *pb.InitRequest) (*pb.InitResponse, error) {
	info, err := v.s.Init(ctx, r.GetConfig())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.InitResponse{Hypervisor: infoToPB(info)}, nil
}

func (v *service) Create(ctx context.Context, r *pb.CreateRequest) (*pb.CreateResponse, error) {
	slot := NoSlot
	if r.Slot != nil {
		slot = int(r.GetSlot())
		if slot < 0 {
			return nil, toStatus(fmt.Errorf("%w: slot %d is negative", ErrInvalid, slot))
		}
	}
	vm, stomped, err := v.s.Create(ctx, r.GetImage(), slot)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.CreateResponse{Vm: vmToPB(vm)}
	if stomped != "" {
		resp.StompedVmId = &stomped
	}
	return resp, nil
}

func (v *service) Delete(ctx context.Context, r *pb.DeleteRequest) (*pb.DeleteResponse, error) {
	if err := v.s.Delete(ctx, r.GetId()); err != nil {
		return nil, toStatus(err)
	}
	return &pb.DeleteResponse{}, nil
}

func (v *service) List(ctx context.Context, _ *pb.ListRequest) (*pb.ListResponse, error) {
	vms, info, err := v.s.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ListResponse{Hypervisor: infoToPB(info)}
	for _, vm := range vms {
		resp.Vms = append(resp.Vms, vmToPB(vm))
	}
	return resp, nil
}

func (v *service) Shutdown(ctx context.Context, _ *pb.ShutdownRequest) (*pb.ShutdownResponse, error) {
	if err := v.s.Shutdown(ctx); err != nil {
		return nil, toStatus(err)
	}
	return &pb.ShutdownResponse{}, nil
}

func vmToPB(vm VM) *pb.VM {
	out := &pb.VM{Id: vm.ID, Name: vm.Name, Addr: vm.Addr, Image: vm.Image, CreatedAt: timestamppb.New(vm.CreatedAt)}
	if vm.Slot != NoSlot {
		s := int32(vm.Slot)
		out.Slot = &s
	}
	return out
}

func infoToPB(i Info) *pb.Hypervisor {
	return &pb.Hypervisor{Name: i.Name, Accelerator: i.Accelerator, MaxVms: int32(i.MaxVMs)}
}

// codeOf is the gRPC code of each protocol error.
var codeOf = []struct {
	err  error
	code codes.Code
}{
	{ErrNotInitialized, codes.FailedPrecondition},
	{ErrUnavailable, codes.FailedPrecondition},
	{ErrImageNotFound, codes.NotFound},
	{ErrVMNotFound, codes.NotFound},
	{ErrInvalid, codes.InvalidArgument},
	{ErrCapacity, codes.ResourceExhausted},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

func toStatus(err error) error {
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return status.Error(c.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}
