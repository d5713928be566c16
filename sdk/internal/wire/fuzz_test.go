package wire

import (
	"context"
	"errors"
	"slices"
	"testing"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/flotilla-ci/flotilla/sdk/internal/pb/fleeting/v1"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Kinds of answer FuzzDecodeResponses decodes, chosen by the first argument modulo
// decodeKinds.
const (
	kindInit = iota
	kindUpdate
	kindIncrease
	kindDecrease
	kindSuspend
	kindResume
	kindConnectInfo
	kindErrorDetail
	kindStatus
	decodeKinds
)

var fuzzRequested = []string{"i-1", "i-2", "i-3"}

// FuzzDecodeResponses feeds arbitrary bytes to the host's decoding of each answer a
// plugin can give (the response messages, their ErrorDetail, and the gRPC status of a
// failed call): it must never panic, and what it accepts must keep the contract the
// host relies on (valid states, counts within the request, only requested IDs).
func FuzzDecodeResponses(f *testing.F) {
	seed := func(kind int, m proto.Message) {
		data, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(kind), data)
	}
	detail := DetailFromError(errors.Join(errors.New("zone full: "+provider.ErrCapacity.Error()), provider.ErrNotFound))
	seed(kindInit, &pb.InitResponse{Info: InfoToPB(provider.ProviderInfo{ID: "aws/eu-west-1/ci", MaxSize: 10, Capabilities: []provider.Capability{"suspend_resume"}})})
	seed(kindInit, &pb.InitResponse{Info: &pb.ProviderInfo{MaxSize: -1}})
	seed(kindUpdate, &pb.UpdateResponse{Instances: []*pb.Instance{{Id: "i-1", State: pb.State_STATE_RUNNING}, {Id: "i-2", State: pb.State_STATE_CREATING}}})
	seed(kindUpdate, &pb.UpdateResponse{Instances: []*pb.Instance{{Id: "", State: pb.State_STATE_RUNNING}, {Id: "x", State: 99}}})
	seed(kindIncrease+decodeKinds*2, &pb.IncreaseResponse{Succeeded: 1, Failures: detail})
	seed(kindIncrease, &pb.IncreaseResponse{Succeeded: -5})
	seed(kindDecrease, &pb.DecreaseResponse{Succeeded: []string{"i-1", "i-1", "other"}, Failures: detail})
	seed(kindSuspend, &pb.SuspendResponse{Succeeded: []string{"i-2"}})
	seed(kindResume, &pb.ResumeResponse{Succeeded: []string{"i-3"}, Failures: &pb.ErrorDetail{}})
	seed(kindConnectInfo, ConnectInfoToPB(provider.ConnectInfo{ID: "i-1", InternalAddr: "10.0.0.5", ConnectorConfig: provider.ConnectorConfig{
		Protocol: provider.ProtocolSSH, ProtocolPort: 2222, Timeout: 30e9}}))
	seed(kindConnectInfo, &pb.ConnectInfoResponse{ExternalAddr: "[::1", ConnectorConfig: &pb.ConnectorConfig{ProtocolPort: -1,
		Keepalive: &durationpb.Duration{Seconds: 1 << 62, Nanos: -7}}})
	seed(kindErrorDetail, detail)
	seed(kindErrorDetail, &pb.ErrorDetail{Errors: []*pb.Error{{Kind: "NO_SUCH_KIND"}, nil, {Kind: "INVALID_CONFIG"}}})
	withDetail, _ := anypb.New(detail)
	seed(kindStatus, &spb.Status{Code: int32(codes.ResourceExhausted), Message: "full", Details: []*anypb.Any{withDetail}})
	seed(kindStatus, &spb.Status{Code: int32(codes.Unavailable), Details: []*anypb.Any{{TypeUrl: "type.googleapis.com/fleeting.v1.ErrorDetail", Value: []byte{0xff}}}})
	seed(kindStatus, &spb.Status{Code: 1 << 20})

	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		kind := int(which) % decodeKinds
		delta := int(which) / decodeKinds // 0..28
		switch kind {
		case kindInit:
			var m pb.InitResponse
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			if info, err := InfoFromInitPB(&m); err == nil && info.MaxSize < 0 {
				t.Fatalf("accepted max_size %d", info.MaxSize)
			}
		case kindUpdate:
			var m pb.UpdateResponse
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			list, err := InstancesFromPB(&m)
			if err != nil {
				return
			}
			if len(list) != len(m.GetInstances()) {
				t.Fatalf("accepted a listing of %d instances as %d", len(m.GetInstances()), len(list))
			}
			for _, in := range list {
				if in.ID == "" || !in.State.Valid() {
					t.Fatalf("accepted instance %+v", in)
				}
			}
		case kindIncrease:
			var m pb.IncreaseResponse
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			if n, _ := IncreaseFromPB(&m, delta); n < 0 || n > delta {
				t.Fatalf("Increase(%d) decoded as %d accepted", delta, n)
			}
		case kindDecrease, kindSuspend, kindResume:
			var m interface {
				proto.Message
				GetSucceeded() []string
				GetFailures() *pb.ErrorDetail
			}
			switch kind {
			case kindDecrease:
				m = &pb.DecreaseResponse{}
			case kindSuspend:
				m = &pb.SuspendResponse{}
			default:
				m = &pb.ResumeResponse{}
			}
			if proto.Unmarshal(data, m) != nil {
				return
			}
			done, _ := BatchFromPB(fuzzRequested, m.GetSucceeded(), m.GetFailures())
			seen := map[string]bool{}
			for _, id := range done {
				if !slices.Contains(fuzzRequested, id) || seen[id] {
					t.Fatalf("decoded %q as done for a request of %q", done, fuzzRequested)
				}
				seen[id] = true
			}
		case kindConnectInfo:
			var m pb.ConnectInfoResponse
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			ci := ConnectInfoFromPB(&m)
			_, _ = ci.Addr(false)
			_, _ = ci.Addr(true)
		case kindErrorDetail:
			var m pb.ErrorDetail
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			err := ErrorFromDetail(&m)
			if (err == nil) != (len(m.GetErrors()) == 0) {
				t.Fatalf("%d errors decoded as %v", len(m.GetErrors()), err)
			}
			if err != nil {
				_ = err.Error()
			}
		case kindStatus:
			var m spb.Status
			if proto.Unmarshal(data, &m) != nil {
				return
			}
			callErr := status.FromProto(&m).Err()
			err := FromStatus(context.Background(), "update", callErr)
			if (err == nil) != (callErr == nil) {
				t.Fatalf("status %v decoded as %v", callErr, err)
			}
			if err != nil {
				_ = err.Error()
			}
		}
	})
}
