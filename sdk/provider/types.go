package provider

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"
)

// State is the lifecycle state of an instance as the plugin reports it.
type State string

// The states an instance can be in. A plugin never reports any other value: instances
// whose cloud state cannot be mapped are logged and skipped.
const (
	// StateCreating: requested or booting; not usable yet.
	StateCreating State = "creating"
	// StateRunning: ready to be connected to.
	StateRunning State = "running"
	// StateDeleting: deletion has been requested and is in progress.
	StateDeleting State = "deleting"
	// StateDeleted: gone. Reporting it is optional; an unreported instance is gone too.
	StateDeleted State = "deleted"
	// StateTimeout: the plugin gave up on the instance. The host forgets it without
	// calling Decrease, so the plugin must clean it up itself.
	StateTimeout State = "timeout"
	// StateSuspending, StateSuspended and StateResuming are used only by plugins that
	// implement Suspender.
	StateSuspending State = "suspending"
	StateSuspended  State = "suspended"
	StateResuming   State = "resuming"
)

// States lists every valid State, in lifecycle order.
var States = []State{StateCreating, StateRunning, StateDeleting, StateDeleted, StateTimeout,
	StateSuspending, StateSuspended, StateResuming}

// Valid reports whether s is one of States.
func (s State) Valid() bool { return slices.Contains(States, s) }

// Protocol names how the host talks to an instance.
type Protocol string

// The protocols a ConnectorConfig can name.
const (
	ProtocolSSH        Protocol = "ssh"
	ProtocolWinRM      Protocol = "winrm"
	ProtocolWinRMHTTPS Protocol = "winrm+https"
)

// DefaultProtocolPorts are the ports used when an address has none and ProtocolPort is 0.
var DefaultProtocolPorts = map[Protocol]int{
	ProtocolSSH:        22,
	ProtocolWinRM:      5985,
	ProtocolWinRMHTTPS: 5986,
}

// ConnectorConfig is how to log in to an instance. The host fills it from
// [runners.autoscaler.connector_config]; a plugin may complete it per instance.
type ConnectorConfig struct {
	OS                   string        `json:"os"`
	Arch                 string        `json:"arch"`
	Protocol             Protocol      `json:"protocol"`
	ProtocolPort         int           `json:"protocol_port"`
	Username             string        `json:"username"`
	Password             string        `json:"password"`
	Key                  []byte        `json:"key"`
	UseStaticCredentials bool          `json:"use_static_credentials"`
	Keepalive            time.Duration `json:"keepalive"`
	Timeout              time.Duration `json:"timeout"`
}

// Settings is what the host passes to Init besides the plugin's own configuration.
type Settings struct {
	ConnectorConfig
}

// ConnectInfo is how to reach one instance now.
type ConnectInfo struct {
	ConnectorConfig

	// ID is the instance ID, as reported by Update.
	ID string `json:"id"`
	// ExternalAddr and InternalAddr are a host or host:port. Either may be empty.
	ExternalAddr string `json:"external_addr"`
	InternalAddr string `json:"internal_addr"`
	// HostKey is the instance's SSH host public key in authorized_keys form
	// ("ssh-ed25519 AAAA…"). When set, the host accepts no other key; when empty, the
	// host pins the first key it sees for this instance ID (trust on first use).
	HostKey []byte `json:"host_key"`
}

// Addr returns the address the host should dial: the internal one unless
// useExternal is set and an external one exists, falling back to whichever is set.
// A port-less address gets ProtocolPort, else the protocol's default port.
func (c ConnectInfo) Addr(useExternal bool) (string, error) {
	addr := c.InternalAddr
	if (useExternal && c.ExternalAddr != "") || addr == "" {
		addr = c.ExternalAddr
	}
	if addr == "" {
		return "", fmt.Errorf("instance %q: plugin reported no internal or external address", c.ID)
	}
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr, nil
	}
	port := c.ProtocolPort
	if port == 0 {
		proto := c.Protocol
		if proto == "" {
			proto = ProtocolSSH
		}
		port = DefaultProtocolPorts[proto]
	}
	return net.JoinHostPort(addr, strconv.Itoa(port)), nil
}

// Capability is an optional feature a plugin announces in ProviderInfo.
type Capability string

// The capabilities the SDK announces for a plugin, from the optional interfaces its
// implementation has: a plugin need not list them itself (sdk/plugin adds the ones it
// implements and removes the ones it does not).
const (
	// CapabilityHeartbeat: the plugin implements Heartbeater.
	CapabilityHeartbeat Capability = "heartbeat"
	// CapabilitySuspendResume: the plugin implements Suspender.
	CapabilitySuspendResume Capability = "suspend_resume"
)

// ProviderInfo describes an initialised instance group.
type ProviderInfo struct {
	// ID is stable across restarts: "<provider>/<region>/<name>".
	ID string `json:"id"`
	// MaxSize is the most instances the group can hold; 0 means no limit of its own.
	MaxSize int `json:"max_size"`
	// Version and BuildInfo identify the plugin build.
	Version   string `json:"version"`
	BuildInfo string `json:"build_info"`
	// Capabilities lists optional features. Absent means none. The SDK sets
	// CapabilityHeartbeat and CapabilitySuspendResume from what the plugin implements.
	Capabilities []Capability `json:"capabilities"`
}

// HasCapability reports whether c is announced.
func (p ProviderInfo) HasCapability(c Capability) bool { return slices.Contains(p.Capabilities, c) }
