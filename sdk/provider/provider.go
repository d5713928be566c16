package provider

import (
	"context"

	"github.com/hashicorp/go-hclog"
)

// InstanceGroup is implemented by every provider plugin. A plugin's exported, JSON-tagged
// struct fields are its configuration: the SDK fills them from plugin_config before Init.
//
// All methods may be called concurrently once Init has returned. Every method must
// honour ctx: when it is cancelled the call returns promptly with ctx.Err() (or an
// error wrapping it).
type InstanceGroup interface {
	// Init is called once, after the configuration has been decoded and validated. It
	// builds the cloud client, may provision credentials, and returns the group's
	// identity and capabilities. An error wrapping ErrInvalidConfig means the user must
	// change the configuration; retrying will not help.
	Init(ctx context.Context, logger hclog.Logger, settings Settings) (ProviderInfo, error)

	// Update calls fn once for every instance the group owns, with its current state.
	// An instance that is not reported is gone. An error means the listing failed: the
	// host then keeps what it knew, it never concludes that instances vanished.
	Update(ctx context.Context, fn func(instance string, state State)) error

	// Increase requests delta new instances. It returns how many were accepted; on
	// partial success that count comes with an error (errors.Join of the failures). No
	// IDs are returned: new instances appear in later Updates, usually as creating.
	// An error wrapping ErrCapacity means the cloud has no room now.
	Increase(ctx context.Context, delta int) (int, error)

	// Decrease deletes the named instances and returns the subset whose deletion was
	// accepted, plus an error for the rest. It must never touch an instance it was not
	// given. Unknown IDs are not deleted and are not reported as succeeded. An empty
	// list returns nil, nil.
	Decrease(ctx context.Context, instances []string) ([]string, error)

	// ConnectInfo returns how to reach an instance now. It is called before every
	// connection, so it must not return addresses cached across a stop/start. An
	// unknown ID gives an error wrapping ErrNotFound.
	ConnectInfo(ctx context.Context, instance string) (ConnectInfo, error)

	// Heartbeat reports whether an instance is healthy: nil if it is, else an error
	// wrapping ErrInstanceUnhealthy (or ErrNotFound for an unknown ID).
	Heartbeat(ctx context.Context, instance string) error

	// Suspend stops the named instances without deleting them. It is called only when
	// ProviderInfo.Capabilities has CapabilitySuspendResume; otherwise it returns an
	// error wrapping ErrNotSupported. Return values are as for Decrease.
	Suspend(ctx context.Context, instances []string) ([]string, error)

	// Resume starts suspended instances again, under the same rules as Suspend.
	Resume(ctx context.Context, instances []string) ([]string, error)

	// Shutdown frees the plugin's own resources (uploaded keys, clients). It never
	// deletes instances: the host does that when configured to. It is idempotent.
	Shutdown(ctx context.Context) error
}

// Validator is implemented by a plugin whose configuration needs checks beyond JSON
// decoding. Validate returns every problem at once (errors.Join), each naming its key.
type Validator interface {
	Validate() error
}

// NoSuspend can be embedded in a plugin that does not support suspend and resume; it
// answers both with ErrSuspendResumeNotSupported, as the contract requires.
type NoSuspend struct{}

// Suspend reports that suspend is not supported.
func (NoSuspend) Suspend(context.Context, []string) ([]string, error) {
	return nil, ErrSuspendResumeNotSupported
}

// Resume reports that resume is not supported.
func (NoSuspend) Resume(context.Context, []string) ([]string, error) {
	return nil, ErrSuspendResumeNotSupported
}
