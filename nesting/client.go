package nesting

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/flotilla-ci/flotilla/nesting/internal/pb/nesting/v1"
)

// Client calls a nesting daemon.
type Client struct {
	conn *grpc.ClientConn
	api  pb.NestingClient
}

// SocketPath returns the path of a nesting_host value: "unix:///run/nesting.sock" or
// a plain path.
func SocketPath(host string) (string, error) {
	path, ok := strings.CutPrefix(host, "unix://")
	if !ok && strings.Contains(host, "://") {
		return "", fmt.Errorf("nesting host %q: only unix sockets are supported (unix:///path/to/nesting.sock)", host)
	}
	if path == "" {
		return "", fmt.Errorf("nesting host %q: no socket path", host)
	}
	return path, nil
}

// Dial returns a client of the daemon on the unix socket host names (see SocketPath)
// on this machine. Connections are made lazily: a daemon that is not there shows in
// the first call's error.
func Dial(host string) (*Client, error) {
	path, err := SocketPath(host)
	if err != nil {
		return nil, err
	}
	return NewClient(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	})
}

// NewClient returns a client whose connections dial opens: a daemon on another machine
// is reached through an SSH tunnel to its socket (connector.Client.DialUnix).
func NewClient(dial func(ctx context.Context) (net.Conn, error)) (*Client, error) {
	conn, err := grpc.NewClient("passthrough:///nesting",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return dial(ctx) }))
	if err != nil {
		return nil, fmt.Errorf("nesting client: %w", err)
	}
	return &Client{conn: conn, api: pb.NewNestingClient(conn)}, nil
}

// Close closes the client's connection.
func (c *Client) Close() error { return c.conn.Close() }

// Init configures the daemon's hypervisor with config (JSON).
func (c *Client) Init(ctx context.Context, config []byte) (Info, error) {
	r, err := c.api.Init(ctx, &pb.InitRequest{Config: config})
	if err != nil {
		return Info{}, fromStatus("init", err, nil)
	}
	return infoFromPB(r.GetHypervisor()), nil
}

// Create starts a VM from image in slot (NoSlot for none). It returns the VM and the ID
// of the VM the daemon deleted from that slot first ("" if there was none).
func (c *Client) Create(ctx context.Context, image string, slot int) (VM, string, error) {
	req := &pb.CreateRequest{Image: image}
	if slot != NoSlot {
		s := int32(slot)
		req.Slot = &s
	}
	r, err := c.api.Create(ctx, req)
	if err != nil {
		return VM{}, "", fromStatus("create VM from image "+image, err, ErrImageNotFound)
	}
	return vmFromPB(r.GetVm()), r.GetStompedVmId(), nil
}

// Delete deletes the VM id.
func (c *Client) Delete(ctx context.Context, id string) error {
	if _, err := c.api.Delete(ctx, &pb.DeleteRequest{Id: id}); err != nil {
		return fromStatus("delete VM "+id, err, ErrVMNotFound)
	}
	return nil
}

// List returns the daemon's VMs, oldest first, and what runs them.
func (c *Client) List(ctx context.Context) ([]VM, Info, error) {
	r, err := c.api.List(ctx, &pb.ListRequest{})
	if err != nil {
		return nil, Info{}, fromStatus("list VMs", err, nil)
	}
	var vms []VM
	for _, v := range r.GetVms() {
		vms = append(vms, vmFromPB(v))
	}
	return vms, infoFromPB(r.GetHypervisor()), nil
}

// Shutdown deletes every VM and stops the daemon.
func (c *Client) Shutdown(ctx context.Context) error {
	if _, err := c.api.Shutdown(ctx, &pb.ShutdownRequest{}); err != nil {
		return fromStatus("shutdown", err, nil)
	}
	return nil
}

func vmFromPB(v *pb.VM) VM {
	vm := VM{ID: v.GetId(), Name: v.GetName(), Addr: v.GetAddr(), Image: v.GetImage(), Slot: NoSlot}
	if v.Slot != nil {
		vm.Slot = int(v.GetSlot())
	}
	if v.GetCreatedAt() != nil {
		vm.CreatedAt = v.GetCreatedAt().AsTime()
	}
	return vm
}

func infoFromPB(h *pb.Hypervisor) Info {
	return Info{Name: h.GetName(), Accelerator: h.GetAccelerator(), MaxVMs: int(h.GetMaxVms())}
}

// remoteError is an error the daemon returned: its message as the daemon wrote it, and
// the protocol error it is (for errors.Is).
type remoteError struct {
	op, msg string
	kind    error
}

func (e *remoteError) Error() string { return "nesting: " + e.op + ": " + e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// fromStatus turns a gRPC error back into the protocol's error; notFound is the one
// NOT_FOUND means for the call.
func fromStatus(op string, err error, notFound error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("nesting: %s: %w", op, err)
	}
	var kind error
	switch st.Code() {
	case codes.NotFound:
		kind = notFound
	case codes.FailedPrecondition:
		kind = ErrUnavailable
		if strings.Contains(st.Message(), ErrNotInitialized.Error()) {
			kind = ErrNotInitialized
		}
	case codes.InvalidArgument:
		kind = ErrInvalid
	case codes.ResourceExhausted:
		kind = ErrCapacity
	case codes.Canceled:
		kind = context.Canceled
	case codes.DeadlineExceeded:
		kind = context.DeadlineExceeded
	case codes.Unavailable:
		return fmt.Errorf("nesting: %s: the daemon does not answer (is `nesting serve` running on that socket?): %w", op, errors.New(st.Message()))
	}
	return &remoteError{op: op, msg: st.Message(), kind: kind}
}
