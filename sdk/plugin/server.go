package plugin

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"

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
	s.initialized = true
	s.inUse.Store(true)
	return &pb.InitResponse{Info: wire.InfoToPB(info)}, nil
}

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

func (s *server) Suspend(ctx context.Context, req *pb.SuspendRequest) (*pb.SuspendResponse, error) {
	done, failures, err := s.batch(ctx, req.GetInstances(), s.impl.Suspend)
	if err != nil {
		return nil, err
	}
	return &pb.SuspendResponse{Succeeded: done, Failures: failures}, nil
}

func (s *server) Resume(ctx context.Context, req *pb.ResumeRequest) (*pb.ResumeResponse, error) {
	done, failures, err := s.batch(ctx, req.GetInstances(), s.impl.Resume)
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
	if err := s.impl.Heartbeat(ctx, req.GetInstance()); err != nil {
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
	logger := srv.logger
	return &goplugin.ServeConfig{
		HandshakeConfig: wire.Handshake,
		VersionedPlugins: map[int]goplugin.PluginSet{
			wire.ProtocolVersion: {wire.PluginName: &grpcPlugin{srv: srv}},
		},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, grpc.ChainUnaryInterceptor(recoverPanics(logger)))...)
		},
		Logger: logger,
	}
}
