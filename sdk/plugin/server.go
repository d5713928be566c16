package plugin

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/flotilla-ci/flotilla/sdk/internal/pb/fleeting/v1"
	"github.com/flotilla-ci/flotilla/sdk/internal/wire"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// server adapts a provider.InstanceGroup to the generated gRPC service.
type server struct {
	pb.UnimplementedInstanceGroupServer
	impl   provider.InstanceGroup
	logger hclog.Logger

	mu          sync.Mutex
	initialized bool
	shutdown    *shutdownOnce

	// inUse is set once Init has succeeded: from then on a host depends on this
	// plugin. It is read by the signal handler, which must not wait for an Init in
	// progress (mu).
	inUse atomic.Bool
	// afterShutdown, if set, runs after a Shutdown call of the host has succeeded.
	afterShutdown func()

	stopMu   sync.Mutex
	grpc     *grpc.Server // set by newGRPCServer, once go-plugin has its listener
	stopping bool         // stopServing was called
	// served, if set, is closed when goplugin.Serve has returned; stopServing exits the
	// process if it has not within serveStopBound.
	served chan struct{}
}

// serveStopBound is how long stopServing waits for goplugin.Serve to return before it
// exits the process itself: an orphaned plugin must end even if serving does not.
const serveStopBound = 10 * time.Second

// newGRPCServer is go-plugin's GRPCServer factory. It keeps the server so that
// stopServing can end serving the way the host's Kill does.
func (s *server) newGRPCServer(opts []grpc.ServerOption) *grpc.Server {
	g := grpc.NewServer(append(opts, grpc.ChainUnaryInterceptor(recoverPanics(s.logger)))...)
	s.stopMu.Lock()
	s.grpc = g
	stopping := s.stopping
	s.stopMu.Unlock()
	if stopping {
		// Asked to stop before go-plugin started serving: a stopped gRPC server
		// closes the listener it is given and returns at once.
		g.Stop()
	}
	return g
}

// stopServing makes goplugin.Serve return, as go-plugin's controller does when the
// host kills the plugin: it stops the gRPC server, which closes go-plugin's listener,
// and closing it removes the listener's unix socket file (named plugin* in
// PLUGIN_UNIX_SOCKET_DIR or the temporary directory). A plugin that called os.Exit
// while serving would leave that file behind.
func (s *server) stopServing() {
	s.stopMu.Lock()
	g := s.grpc
	first := !s.stopping
	s.stopping = true
	s.stopMu.Unlock()
	if !first {
		return
	}
	if g != nil {
		g.Stop()
	}
	if s.served != nil {
		go func() {
			select {
			case <-s.served:
			case <-time.After(serveStopBound):
				s.logger.Error(fmt.Sprintf("serving did not end %s after it was stopped; exiting", serveStopBound))
				os.Exit(shutdownCode(s.logger, s.shutdown))
			}
		}()
	}
}

// shutdownOnce makes the plugin's Shutdown run once, however many of the RPC, SIGTERM
// and the end of serving ask for it; later callers get the first result.
type shutdownOnce struct {
	once sync.Once
	impl provider.InstanceGroup
	err  error
}

func (s *shutdownOnce) do(ctx context.Context) error {
	s.once.Do(func() { s.err = s.impl.Shutdown(ctx) })
	return s.err
}

func (s *server) ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.initialized {
		return status.Error(codes.FailedPrecondition, "plugin not initialized: Init must be called first")
	}
	return nil
}

func (s *server) Init(ctx context.Context, req *pb.InitRequest) (*pb.InitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.initialized {
		return nil, status.Error(codes.FailedPrecondition, "plugin already initialized: Init is called once")
	}
	if err := DecodeConfig(req.GetConfig(), s.impl); err != nil {
		return nil, wire.ToStatus(err)
	}
	info, err := s.impl.Init(ctx, s.logger, provider.Settings{ConnectorConfig: wire.ConnectorFromPB(req.GetConnectorConfig())})
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	info.Capabilities = capabilities(s.impl, info.Capabilities, s.logger)
	s.initialized = true
	s.inUse.Store(true)
	return &pb.InitResponse{Info: wire.InfoToPB(info)}, nil
}

// implemented maps each capability the SDK derives to whether impl has it. A fleeting
// plugin of an earlier generation has neither: it is served as it is, and the host is
// told what it lacks.
func implemented(impl provider.InstanceGroup) map[provider.Capability]bool {
	_, hb := impl.(provider.Heartbeater)
	_, sr := impl.(provider.Suspender)
	return map[provider.Capability]bool{provider.CapabilityHeartbeat: hb, provider.CapabilitySuspendResume: sr}
}

// capabilities returns what the plugin announced, with the capabilities the SDK derives
// set from what impl implements: added when implemented (a ported fleeting plugin lists
// none), removed when not (the host would otherwise call what answers ErrNotSupported).
func capabilities(impl provider.InstanceGroup, announced []provider.Capability, logger hclog.Logger) []provider.Capability {
	has := implemented(impl)
	var out []provider.Capability
	for _, c := range announced {
		switch ok, derived := has[c]; {
		case !derived:
			out = append(out, c)
		case !ok:
			logger.Warn(fmt.Sprintf("ProviderInfo announces %q but the plugin does not implement it; not announced", c))
		}
	}
	for _, c := range []provider.Capability{provider.CapabilityHeartbeat, provider.CapabilitySuspendResume} {
		if has[c] && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	_, suspend := impl.(interface {
		Suspend(context.Context, []string) ([]string, error)
	})
	_, resume := impl.(interface {
		Resume(context.Context, []string) ([]string, error)
	})
	if suspend != resume {
		logger.Warn("the plugin implements only one of Suspend and Resume; both answer not supported")
	}
	return out
}

// errNoHeartbeat is what Heartbeat answers for a plugin without one.
var errNoHeartbeat = fmt.Errorf("heartbeat: the plugin does not implement it: %w", provider.ErrNotSupported)

func (s *server) Update(ctx context.Context, _ *pb.UpdateRequest) (*pb.UpdateResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	resp := &pb.UpdateResponse{}
	var bad []string
	err := s.impl.Update(ctx, func(id string, state provider.State) {
		st, ok := wire.StateToPB(state)
		if !ok {
			bad = append(bad, fmt.Sprintf("%s=%q", id, state))
			return
		}
		resp.Instances = append(resp.Instances, &pb.Instance{Id: id, State: st})
	})
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	if len(bad) > 0 {
		// A state the protocol cannot carry is a plugin bug; failing the whole listing
		// is safer than silently dropping instances, which the host would take as gone.
		return nil, status.Errorf(codes.Internal, "plugin reported instances in invalid states: %v", bad)
	}
	return resp, nil
}

func (s *server) Increase(ctx context.Context, req *pb.IncreaseRequest) (*pb.IncreaseResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	if req.GetDelta() < 1 {
		return nil, status.Errorf(codes.InvalidArgument, "increase by %d: delta must be at least 1", req.GetDelta())
	}
	n, err := s.impl.Increase(ctx, int(req.GetDelta()))
	if err != nil && n == 0 {
		return nil, wire.ToStatus(err)
	}
	return &pb.IncreaseResponse{Succeeded: int64(n), Failures: wire.DetailFromError(err)}, nil
}

// batch runs one of the calls that act on a list of instances and may succeed in part.
func (s *server) batch(ctx context.Context, ids []string, call func(context.Context, []string) ([]string, error)) ([]string, *pb.ErrorDetail, error) {
	if err := s.ready(); err != nil {
		return nil, nil, err
	}
	done, err := call(ctx, ids)
	if err != nil && len(done) == 0 {
		return nil, nil, wire.ToStatus(err)
	}
	return done, wire.DetailFromError(err), nil
}

func (s *server) Decrease(ctx context.Context, req *pb.DecreaseRequest) (*pb.DecreaseResponse, error) {
	done, failures, err := s.batch(ctx, req.GetInstances(), s.impl.Decrease)
	if err != nil {
		return nil, err
	}
	return &pb.DecreaseResponse{Succeeded: done, Failures: failures}, nil
}

// suspender returns the implementation's Suspend and Resume, or calls that answer
// ErrNotSupported for a plugin without them.
func (s *server) suspender() provider.Suspender {
	if sr, ok := s.impl.(provider.Suspender); ok {
		return sr
	}
	return noSuspend{}
}

// noSuspend answers Suspend and Resume of a plugin that is not a provider.Suspender.
type noSuspend struct{}

func (noSuspend) Suspend(context.Context, []string) ([]string, error) {
	return nil, provider.ErrSuspendResumeNotSupported
}

func (noSuspend) Resume(context.Context, []string) ([]string, error) {
	return nil, provider.ErrSuspendResumeNotSupported
}

func (s *server) Suspend(ctx context.Context, req *pb.SuspendRequest) (*pb.SuspendResponse, error) {
	done, failures, err := s.batch(ctx, req.GetInstances(), s.suspender().Suspend)
	if err != nil {
		return nil, err
	}
	return &pb.SuspendResponse{Succeeded: done, Failures: failures}, nil
}

func (s *server) Resume(ctx context.Context, req *pb.ResumeRequest) (*pb.ResumeResponse, error) {
	done, failures, err := s.batch(ctx, req.GetInstances(), s.suspender().Resume)
	if err != nil {
		return nil, err
	}
	return &pb.ResumeResponse{Succeeded: done, Failures: failures}, nil
}

func (s *server) ConnectInfo(ctx context.Context, req *pb.ConnectInfoRequest) (*pb.ConnectInfoResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	info, err := s.impl.ConnectInfo(ctx, req.GetInstance())
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	return wire.ConnectInfoToPB(info), nil
}

func (s *server) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	hb, ok := s.impl.(provider.Heartbeater)
	if !ok {
		return nil, wire.ToStatus(errNoHeartbeat)
	}
	if err := hb.Heartbeat(ctx, req.GetInstance()); err != nil {
		return nil, wire.ToStatus(err)
	}
	return &pb.HeartbeatResponse{}, nil
}

func (s *server) Shutdown(ctx context.Context, _ *pb.ShutdownRequest) (*pb.ShutdownResponse, error) {
	s.mu.Lock()
	initialized := s.initialized
	s.mu.Unlock()
	if !initialized {
		return &pb.ShutdownResponse{}, nil // nothing was set up, so nothing to free
	}
	if err := s.shutdown.do(ctx); err != nil {
		return nil, wire.ToStatus(err)
	}
	if s.afterShutdown != nil {
		s.afterShutdown()
	}
	return &pb.ShutdownResponse{}, nil
}

// recoverPanics turns a panic in a plugin method into an INTERNAL error, so that one
// bad call does not take the plugin process (and every instance it tracks) down.
func recoverPanics(logger hclog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				logger.Error("plugin panicked", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				resp, err = nil, status.Errorf(codes.Internal, "plugin panicked in %s: %v", info.FullMethod, r)
			}
		}()
		return handler(ctx, req)
	}
}

// grpcPlugin is the go-plugin glue on the plugin side.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	srv *server
}

func (p *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	pb.RegisterInstanceGroupServer(s, p.srv)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *goplugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, fmt.Errorf("the plugin side has no client")
}

// serveConfig builds the go-plugin configuration shared by Main and ServeInProcess.
func serveConfig(srv *server) *goplugin.ServeConfig {
	return &goplugin.ServeConfig{
		HandshakeConfig: wire.Handshake,
		VersionedPlugins: map[int]goplugin.PluginSet{
			wire.ProtocolVersion: {wire.PluginName: &grpcPlugin{srv: srv}},
		},
		GRPCServer: srv.newGRPCServer,
		Logger:     srv.logger,
	}
}
