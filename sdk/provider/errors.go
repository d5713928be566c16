package provider

import (
	"errors"
	"fmt"
)

// The sentinel errors of the contract. A plugin returns errors wrapping them
// (fmt.Errorf("…: %w", provider.ErrNotFound)); the SDK carries the kind across the
// process boundary so that errors.Is works in the host.
var (
	// ErrInstanceUnhealthy: the instance exists but must not be given jobs.
	ErrInstanceUnhealthy = errors.New("instance unhealthy")
	// ErrNotSupported: the plugin does not implement this call.
	ErrNotSupported = errors.New("not supported")
	// ErrNotFound: the named instance is not in the group.
	ErrNotFound = errors.New("instance not found")
	// ErrCapacity: the cloud has no capacity for new instances now.
	ErrCapacity = errors.New("insufficient capacity")
	// ErrInvalidConfig: the configuration is wrong; retrying will not help.
	ErrInvalidConfig = errors.New("invalid configuration")
)

// ErrSuspendResumeNotSupported is what Suspend and Resume answer for a plugin that does
// not implement Suspender. It wraps ErrNotSupported.
var ErrSuspendResumeNotSupported = fmt.Errorf("suspend/resume: %w", ErrNotSupported)

// Sentinels maps each sentinel to the stable name the wire protocol uses for it.
var Sentinels = map[string]error{
	"INSTANCE_UNHEALTHY": ErrInstanceUnhealthy,
	"NOT_SUPPORTED":      ErrNotSupported,
	"NOT_FOUND":          ErrNotFound,
	"CAPACITY":           ErrCapacity,
	"INVALID_CONFIG":     ErrInvalidConfig,
}
