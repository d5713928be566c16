// Package wire holds everything both ends of the plugin protocol must agree on: the
// go-plugin handshake, the plugin-set name and protocol versions, conversions between
// sdk/provider types and the generated protobuf messages, and the error codec that lets
// sentinel errors survive the process boundary. Keeping them in one package means the
// host and the plugin SDK cannot drift apart.
package wire

import (
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/flotilla-ci/flotilla/sdk/internal/pb/fleeting/v1"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// ProtocolVersion is the newest protocol version this SDK speaks. go-plugin negotiates
// the highest version both sides support (versioned plugin sets); a host that only
// knows older versions still loads a newer plugin, and vice versa.
const ProtocolVersion = 1

// PluginName is the key of the instance-group plugin in every plugin set.
const PluginName = "instance_group"

// Handshake is the go-plugin handshake. The cookie is not a secret: it only stops a
// user from running a plugin binary by hand and wondering why it hangs.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "FLOTILLA_FLEETING_PLUGIN",
	MagicCookieValue: "a2a7d4f5-4b7e-4c8e-9b5d-fleeting-v1",
}

var stateToPB = map[provider.State]pb.State{
	provider.StateCreating:   pb.State_STATE_CREATING,
	provider.StateRunning:    pb.State_STATE_RUNNING,
	provider.StateDeleting:   pb.State_STATE_DELETING,
	provider.StateDeleted:    pb.State_STATE_DELETED,
	provider.StateTimeout:    pb.State_STATE_TIMEOUT,
	provider.StateSuspending: pb.State_STATE_SUSPENDING,
	provider.StateSuspended:  pb.State_STATE_SUSPENDED,
	provider.StateResuming:   pb.State_STATE_RESUMING,
}

// StateToPB converts a state; ok is false for a value outside provider.States.
func StateToPB(s provider.State) (pb.State, bool) {
	v, ok := stateToPB[s]
	return v, ok
}

// StateFromPB converts a state; ok is false for STATE_UNSPECIFIED and unknown values.
func StateFromPB(s pb.State) (provider.State, bool) {
	for k, v := range stateToPB {
		if v == s {
			return k, true
		}
	}
	return "", false
}

func durationToPB(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// ConnectorToPB converts connector settings.
func ConnectorToPB(c provider.ConnectorConfig) *pb.ConnectorConfig {
	return &pb.ConnectorConfig{
		Os: c.OS, Arch: c.Arch, Protocol: string(c.Protocol), ProtocolPort: int32(c.ProtocolPort),
		Username: c.Username, Password: c.Password, Key: c.Key,
		UseStaticCredentials: c.UseStaticCredentials,
		Keepalive:            durationToPB(c.Keepalive), Timeout: durationToPB(c.Timeout),
	}
}

// ConnectorFromPB converts connector settings; a nil message gives the zero value.
func ConnectorFromPB(c *pb.ConnectorConfig) provider.ConnectorConfig {
	if c == nil {
		return provider.ConnectorConfig{}
	}
	return provider.ConnectorConfig{
		OS: c.GetOs(), Arch: c.GetArch(), Protocol: provider.Protocol(c.GetProtocol()),
		ProtocolPort: int(c.GetProtocolPort()), Username: c.GetUsername(), Password: c.GetPassword(),
		Key: c.GetKey(), UseStaticCredentials: c.GetUseStaticCredentials(),
		Keepalive: c.GetKeepalive().AsDuration(), Timeout: c.GetTimeout().AsDuration(),
	}
}

// InfoToPB converts provider info.
func InfoToPB(i provider.ProviderInfo) *pb.ProviderInfo {
	caps := make([]string, len(i.Capabilities))
	for n, c := range i.Capabilities {
		caps[n] = string(c)
	}
	return &pb.ProviderInfo{Id: i.ID, MaxSize: int64(i.MaxSize), Version: i.Version,
		BuildInfo: i.BuildInfo, Capabilities: caps}
}

// InfoFromPB converts provider info.
func InfoFromPB(i *pb.ProviderInfo) provider.ProviderInfo {
	var caps []provider.Capability
	for _, c := range i.GetCapabilities() {
		caps = append(caps, provider.Capability(c))
	}
	return provider.ProviderInfo{ID: i.GetId(), MaxSize: int(i.GetMaxSize()), Version: i.GetVersion(),
		BuildInfo: i.GetBuildInfo(), Capabilities: caps}
}

// ConnectInfoToPB converts connect info.
func ConnectInfoToPB(c provider.ConnectInfo) *pb.ConnectInfoResponse {
	return &pb.ConnectInfoResponse{ConnectorConfig: ConnectorToPB(c.ConnectorConfig), Id: c.ID,
		ExternalAddr: c.ExternalAddr, InternalAddr: c.InternalAddr, HostKey: c.HostKey}
}

// ConnectInfoFromPB converts connect info.
func ConnectInfoFromPB(c *pb.ConnectInfoResponse) provider.ConnectInfo {
	return provider.ConnectInfo{ConnectorConfig: ConnectorFromPB(c.GetConnectorConfig()), ID: c.GetId(),
		ExternalAddr: c.GetExternalAddr(), InternalAddr: c.GetInternalAddr(), HostKey: c.GetHostKey()}
}
