package provider

import (
	"context"

	"github.com/hashicorp/go-hclog"
)

// InstanceGroup is implemented by every provider plugin. Its methods are those of the
// first generation of GitLab's fleeting provider.InstanceGroup, so a fleeting plugin of
// any generation builds against it by changing its imports. What later generations
// added is optional and detected on the implementation: Heartbeater (Heartbeat) and
// Suspender (Suspend and Resume). A plugin's exported, JSON-tagged struct fields are its
// configuration: the SDK fills them from plugin_config before Init.
//
// All methods may be called concurrently once Init has returned. Every method must
// honour ctx: when it is cancelled the call returns promptly with ctx.Err() (or an
// error wrapping it).
type InstanceGroup interface {
	// Init is called once, after the configuration has been decoded and validated. It
	// builds the cloud client, may provision credentials, and returns the group's
	// identity. An error wrapping ErrInvalidConfig means the user must change the
	// configuration; retrying will not help.
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

	// Shutdown frees the plugin's own resources (uploaded keys, clients). It never
	// deletes instances: the host does that when configured to. It is idempotent.
	Shutdown(ctx context.Context) error
}

// Heartbeater is implemented by a plugin that can tell whether an instance is healthy
// (GitLab's fleeting added Heartbeat in its second generation). The SDK announces
// CapabilityHeartbeat for it. A plugin without it answers ErrNotSupported, and the host
// then counts its instances healthy and judges them by connecting to them.
type Heartbeater interface {
	// Heartbeat reports whether an instance is healthy: nil if it is, else an error
	// wrapping ErrInstanceUnhealthy (or ErrNotFound for an unknown ID).
	Heartbeat(ctx context.Context, instance string) error
}

// Suspender is implemented by a plugin that can stop instances without deleting them
// and start them again (GitLab's fleeting third generation). A plugin must implement
// both methods: one with only Suspend or only Resume is not a Suspender. The SDK
// announces CapabilitySuspendResume for it; a plugin without it answers ErrNotSupported.
type Suspender interface {
	// Suspend stops the named running instances without deleting them. Return values
	// are as for Decrease.
	Suspend(ctx context.Context, instances []string) ([]string, error)

	// Resume starts suspended instances again, under the same rules as Suspend.
	Resume(ctx context.Context, instances []string) ([]string, error)
}

// Validator is implemented by a plugin whose configuration needs checks beyond JSON
// decoding. Validate returns every problem at once (errors.Join), each naming its key.
type Validator interface {
	Validate() error
}

// NoSuspend was embedded by plugins without suspend and resume when InstanceGroup
// required Suspend and Resume.
//
// Deprecated: a plugin without suspend and resume simply does not implement Suspender;
// the SDK answers both calls with ErrNotSupported. NoSuspend has no methods any more and
// is kept so that plugins embedding it still build.
type NoSuspend struct{}
