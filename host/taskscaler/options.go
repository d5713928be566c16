package taskscaler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Library defaults. As in GitLab's taskscaler, a zero value in Options means "use the
// default" for the intervals, retries and thresholds.
const (
	DefaultCapacityPerInstance         = 1
	DefaultInstanceAcquireTimeout      = 15 * time.Minute
	DefaultUpdateInterval              = time.Minute
	DefaultUpdateIntervalWhenExpecting = 2 * time.Second
	DefaultDeletionRetryInterval       = time.Minute
	DefaultShutdownDeletionInterval    = 10 * time.Second
	DefaultShutdownDeletionRetries     = 3
	DefaultFailureThreshold            = 3
	DefaultScaleThrottleLimit          = 100
	DefaultHeartbeatInterval           = 5 * time.Minute
	DefaultReadyTimeout                = 10 * time.Minute
	DefaultPendingCreationTimeout      = 15 * time.Minute
	DefaultUnknownInstanceGrace        = 5 * time.Minute
	DefaultOperationTimeout            = time.Minute
	DefaultBreakerThreshold            = 3
	DefaultBreakerBackoff              = 10 * time.Second
	DefaultBreakerMaxBackoff           = 10 * time.Minute
	// DefaultPeriod is the cron expression of a policy without periods: always.
	DefaultPeriod = "* * * * *"
)

// Limits on Options. Whatever a configuration says, the scaler must not busy-loop on
// the plugin or allocate without bound.
const (
	// MinUpdateInterval is the shortest update_interval and
	// update_interval_when_expecting: each cycle calls the plugin's Update.
	MinUpdateInterval = 10 * time.Millisecond
	// MaxCapacityPerInstance is the largest capacity_per_instance (jobs on one
	// instance).
	MaxCapacityPerInstance = 10000
)

// InstanceInfo describes an instance to the host's ready and probe functions.
type InstanceInfo struct {
	// Instance is the instance's record when the call started. Its Cause is "created"
	// (requested by this scaler) or "adopted" (recorded by a previous run of the host
	// and found again).
	state.Instance
	// Restored is true for an instance recorded by a previous run of the host.
	Restored bool
	// ConnectInfo was fetched from the plugin just before the call.
	ConnectInfo provider.ConnectInfo
}

// ReadyFunc makes a new running instance ready for jobs: the host runs
// instance_ready_command through the connector here. An error removes the instance
// and counts as a provisioning failure for the circuit breaker.
type ReadyFunc func(ctx context.Context, inst InstanceInfo) error

// ProbeFunc is an optional health command run before a slot is handed out (after the
// plugin's Heartbeat). An error counts as a health failure.
type ProbeFunc func(ctx context.Context, inst InstanceInfo) error

// ScaleThrottle is [runners.autoscaler.scale_throttle]: a token bucket on instance
// creation. Limit is the refill per second (0 = 100, -1 = unlimited); Burst is the
// bucket size (0 = max_instances when set, else Limit).
type ScaleThrottle struct {
	Limit int
	Burst int
}

// Policy is one [[runners.autoscaler.policy]].
type Policy struct {
	// Periods are 5-field cron expressions; the policy is active during every minute
	// one of them matches. Empty means always ("* * * * *").
	Periods []string
	// Timezone is an IANA zone name for Periods; empty means the local zone.
	Timezone string
	// IdleCount is the idle capacity to keep, in job slots (not instances).
	IdleCount int
	// IdleTime is how long an instance may stay idle before it is removable.
	IdleTime time.Duration
	// ScaleFactor adds idle capacity as a factor of the in-use capacity.
	ScaleFactor float64
	// ScaleFactorLimit caps what ScaleFactor yields (0 = no cap).
	ScaleFactorLimit int
	// PreemptiveMode: on, Reserve succeeds only with an idle ready slot; off, it
	// succeeds whenever capacity could be created. Unset means IdleCount > 0 for a
	// fixed policy and off for a forecast one.
	PreemptiveMode *bool
	// Mode is the kind of policy: ModeFixed (GitLab's, the default) or ModeForecast.
	Mode string
	// TargetWait and TargetPercentile are a forecast policy's goal: TargetPercentile
	// percent of jobs get a slot within TargetWait (0: 5s and 95).
	TargetWait       time.Duration
	TargetPercentile float64
}

// Policy modes.
const (
	// ModeFixed keeps idle_count (raised by scale_factor) idle slots: GitLab's policy.
	ModeFixed = "fixed"
	// ModeForecast keeps the idle slots that the jobs expected within a boot time are
	// worth, to meet a target wait; see forecastPolicy.
	ModeForecast = "forecast"
)

// Breaker configures the provisioning circuit breaker (a Flotilla addition).
type Breaker struct {
	// Threshold is how many consecutive provisioning failures open the breaker
	// (0 = 3, -1 = never open).
	Threshold int
	// Backoff is the first open period; it doubles with every further failure up to
	// MaxBackoff. 0 means 10s and 10m.
	Backoff    time.Duration
	MaxBackoff time.Duration
}

// Metrics receives the scaler's measurements; host/metrics implements it with
// Prometheus collectors. Every method must be cheap and must not call the scaler.
type Metrics interface {
	// TaskOperation counts a slot operation: reserve, reserve_available_capacity_failure,
	// reserve_iop_capacity_failure, unreserve, acquire, acquire_failure, release.
	TaskOperation(op string)
	// ScaleOperation counts a scaling decision: up, down.
	ScaleOperation(op string)
	// InstanceOperation counts instance operations (create, delete, and their
	// _failure forms) and InternalOperation plugin calls (increase, decrease, update,
	// heartbeat, connect_info, and their _failure forms).
	InstanceOperation(op string)
	InternalOperation(op string)
	// MissedUpdate counts a reconcile cycle whose Update failed.
	MissedUpdate()
	// ObserveInstance records a duration: "creation" (request → first seen),
	// "is_running" (request → running), "deletion" (Decrease → gone), "life" (first seen
	// → gone) and "readiness" (running → ready).
	ObserveInstance(kind string, d time.Duration)
	// SetGauges publishes the current counts after every cycle.
	SetGauges(g Gauges)
}

// Gauges are the current values behind the gauge metrics.
type Gauges struct {
	Tasks               TaskCounts
	Instances           InstanceCounts
	Desired             int
	MaxInstances        int
	MaxTasksPerInstance int
	MaxUseCount         int
}

// Held is one slot held on a recorded instance when a scaler starts.
type Held struct {
	// Key is the acquisition's key; Release(Key) frees the slot.
	Key        string
	InstanceID string
	Slot       int
}

// Options configures a Scaler: every [runners.autoscaler] key as a typed value, plus
// the host's hooks. Zero values mean the library default (see the Default constants).
type Options struct {
	// Owner is this scaler's key in the state store ("<URL>|<runner ID>"). Empty means
	// the ProviderInfo.ID.
	Owner string
	// Settings and PluginLogger are passed to group.Init. Info, when set, means the
	// group is already initialised and Init is not called.
	Settings     provider.Settings
	PluginLogger hclog.Logger
	Info         *provider.ProviderInfo

	CapacityPerInstance         int
	MaxUseCount                 int
	MaxInstances                int
	DeleteInstancesOnShutdown   bool
	InstanceAcquireTimeout      time.Duration
	UpdateInterval              time.Duration
	UpdateIntervalWhenExpecting time.Duration
	DeletionRetryInterval       time.Duration
	ShutdownDeletionInterval    time.Duration
	ShutdownDeletionRetries     int
	FailureThreshold            int
	ScaleThrottle               ScaleThrottle
	// ReservationThrottling is on when nil.
	ReservationThrottling *bool
	Policies              []Policy
	// KeepInstanceWithAcquisitions keeps a restored instance that had jobs in flight
	// when the host stopped (state_storage.keep_instance_with_acquisitions).
	KeepInstanceWithAcquisitions bool
	// Held are the slots other processes hold on recorded instances when the scaler
	// starts: a new leader of a pool shared by several runner managers takes over the
	// acquisitions the managers hold, so their instances are kept and the slots stay
	// taken until Release (see host/coord).
	Held []Held
	// LostJobsGrace, when set, gives jobs recorded in flight but not held (their runner
	// manager is gone) that long to have stopped before their instance is removed: a
	// manager cut off from a shared pool's etcd stops its jobs about when its lease
	// expires, which is when a new leader starts. Zero removes such an instance at once.
	LostJobsGrace time.Duration

	// Ready runs instance_ready_command (nil: instances are ready once running).
	Ready ReadyFunc
	// Probe is an optional health command run before a slot is handed out.
	Probe ProbeFunc
	// OnGone, if set, is called in its own goroutine with the ID of every instance the
	// scaler forgets (deleted, timed out, vanished), so that the host can close its
	// connection and drop its host-key pin.
	OnGone func(id string)

	// HeartbeatInterval is how often idle and unhealthy instances get a Heartbeat.
	HeartbeatInterval time.Duration
	// ReadyTimeout bounds one Ready call.
	ReadyTimeout time.Duration
	// PendingCreationTimeout is how long requested instances may take to appear in an
	// Update before the request is written off (and counted as a failure).
	PendingCreationTimeout time.Duration
	// UnknownInstanceGrace is how long an instance the host cannot vouch for (in the
	// group, not in the inventory, no creation pending) is left alone before deletion.
	UnknownInstanceGrace time.Duration
	// OperationTimeout bounds each plugin call made by the scaler itself.
	OperationTimeout time.Duration
	Breaker          Breaker

	// Clock defaults to the wall clock; Store to an in-memory store; Logger to
	// slog.Default(); Metrics to none.
	Clock   clock.Clock
	Store   state.Store
	Logger  *slog.Logger
	Metrics Metrics
	// Manual disables the background loop: the caller drives the scaler with
	// Reconcile, and Ready runs inline. Simulators and tests use it.
	Manual bool
}

func orDuration(v, def time.Duration) time.Duration {
	if v == 0 {
		return def
	}
	return v
}

func orInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// validatePolicies checks policies for withDefaults and ConfigureSchedule, naming the
// policy and key of each error.
func validatePolicies(ps []Policy) []error {
	var errs []error
	for i, p := range ps {
		if p.IdleCount < 0 {
			errs = append(errs, fmt.Errorf("policy[%d].idle_count = %d: must not be negative", i, p.IdleCount))
		}
		if p.IdleTime < 0 {
			errs = append(errs, fmt.Errorf("policy[%d].idle_time = %s: must not be negative", i, p.IdleTime))
		}
		switch f := p.ScaleFactor; {
		case math.IsNaN(f) || math.IsInf(f, 0):
			errs = append(errs, fmt.Errorf("policy[%d].scale_factor = %g: must be a finite number (0 turns it off)", i, f))
		case f < 0:
			errs = append(errs, fmt.Errorf("policy[%d].scale_factor = %g: must not be negative", i, f))
		}
		if p.ScaleFactorLimit < 0 {
			errs = append(errs, fmt.Errorf("policy[%d].scale_factor_limit = %d: must not be negative", i, p.ScaleFactorLimit))
		}
		switch p.Mode {
		case "", ModeFixed, ModeForecast:
		default:
			errs = append(errs, fmt.Errorf("policy[%d].mode = %q: want %q (GitLab's idle_count) or %q", i, p.Mode, ModeFixed, ModeForecast))
		}
		if p.TargetWait < 0 {
			errs = append(errs, fmt.Errorf("policy[%d].target_wait = %s: must not be negative", i, p.TargetWait))
		}
		if tp := p.TargetPercentile; math.IsNaN(tp) || tp < 0 || tp >= 100 {
			errs = append(errs, fmt.Errorf("policy[%d].target_percentile = %g: want a percentile above 0 and below 100, e.g. 95", i, tp))
		}
	}
	return errs
}

// withDefaults validates o and fills every zero with its default.
func (o Options) withDefaults() (Options, error) {
	var errs []error
	neg := func(key string, v int) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s = %d: must not be negative", key, v))
		}
	}
	negD := func(key string, v time.Duration) {
		if v < 0 {
			errs = append(errs, fmt.Errorf("%s = %s: must not be negative", key, v))
		}
	}
	neg("capacity_per_instance", o.CapacityPerInstance)
	neg("max_use_count", o.MaxUseCount)
	neg("max_instances", o.MaxInstances)
	neg("shutdown_deletion_retries", o.ShutdownDeletionRetries)
	neg("failure_threshold", o.FailureThreshold)
	neg("scale_throttle.burst", o.ScaleThrottle.Burst)
	if o.ScaleThrottle.Limit < -1 {
		errs = append(errs, fmt.Errorf("scale_throttle.limit = %d: use a positive rate, 0 for the default (100/s) or -1 for no limit", o.ScaleThrottle.Limit))
	}
	if o.CapacityPerInstance > MaxCapacityPerInstance {
		errs = append(errs, fmt.Errorf("capacity_per_instance = %d: at most %d jobs per instance are supported", o.CapacityPerInstance, MaxCapacityPerInstance))
	}
	negD("instance_acquire_timeout", o.InstanceAcquireTimeout)
	for _, iv := range []struct {
		key string
		v   time.Duration
	}{{"update_interval", o.UpdateInterval}, {"update_interval_when_expecting", o.UpdateIntervalWhenExpecting}} {
		switch {
		case iv.v < 0:
			negD(iv.key, iv.v)
		case iv.v > 0 && iv.v < MinUpdateInterval:
			errs = append(errs, fmt.Errorf("%s = %s: must be at least %s, since every interval calls the plugin's Update (0 means the default)",
				iv.key, iv.v, MinUpdateInterval))
		}
	}
	negD("deletion_retry_interval", o.DeletionRetryInterval)
	negD("shutdown_deletion_interval", o.ShutdownDeletionInterval)
	negD("HeartbeatInterval", o.HeartbeatInterval)
	negD("ReadyTimeout", o.ReadyTimeout)
	negD("PendingCreationTimeout", o.PendingCreationTimeout)
	negD("UnknownInstanceGrace", o.UnknownInstanceGrace)
	negD("OperationTimeout", o.OperationTimeout)
	negD("Breaker.Backoff", o.Breaker.Backoff)
	negD("Breaker.MaxBackoff", o.Breaker.MaxBackoff)
	errs = append(errs, validatePolicies(o.Policies)...)
	if err := errors.Join(errs...); err != nil {
		return o, err
	}
	o.CapacityPerInstance = orInt(o.CapacityPerInstance, DefaultCapacityPerInstance)
	o.InstanceAcquireTimeout = orDuration(o.InstanceAcquireTimeout, DefaultInstanceAcquireTimeout)
	o.UpdateInterval = orDuration(o.UpdateInterval, DefaultUpdateInterval)
	o.UpdateIntervalWhenExpecting = orDuration(o.UpdateIntervalWhenExpecting, DefaultUpdateIntervalWhenExpecting)
	o.DeletionRetryInterval = orDuration(o.DeletionRetryInterval, DefaultDeletionRetryInterval)
	o.ShutdownDeletionInterval = orDuration(o.ShutdownDeletionInterval, DefaultShutdownDeletionInterval)
	o.ShutdownDeletionRetries = orInt(o.ShutdownDeletionRetries, DefaultShutdownDeletionRetries)
	o.FailureThreshold = orInt(o.FailureThreshold, DefaultFailureThreshold)
	o.ScaleThrottle.Limit = orInt(o.ScaleThrottle.Limit, DefaultScaleThrottleLimit)
	if o.ScaleThrottle.Burst == 0 {
		if o.MaxInstances > 0 {
			o.ScaleThrottle.Burst = o.MaxInstances
		} else {
			o.ScaleThrottle.Burst = max(o.ScaleThrottle.Limit, 1)
		}
	}
	o.HeartbeatInterval = orDuration(o.HeartbeatInterval, DefaultHeartbeatInterval)
	o.ReadyTimeout = orDuration(o.ReadyTimeout, DefaultReadyTimeout)
	o.PendingCreationTimeout = orDuration(o.PendingCreationTimeout, DefaultPendingCreationTimeout)
	o.UnknownInstanceGrace = orDuration(o.UnknownInstanceGrace, DefaultUnknownInstanceGrace)
	o.OperationTimeout = orDuration(o.OperationTimeout, DefaultOperationTimeout)
	o.Breaker.Threshold = orInt(o.Breaker.Threshold, DefaultBreakerThreshold)
	o.Breaker.Backoff = orDuration(o.Breaker.Backoff, DefaultBreakerBackoff)
	o.Breaker.MaxBackoff = orDuration(o.Breaker.MaxBackoff, DefaultBreakerMaxBackoff)
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Store == nil {
		o.Store = state.NewMemory()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = noMetrics{}
	}
	if o.PluginLogger == nil {
		o.PluginLogger = hclog.NewNullLogger()
	}
	return o, nil
}

type noMetrics struct{}

func (noMetrics) TaskOperation(string)                  {}
func (noMetrics) ScaleOperation(string)                 {}
func (noMetrics) InstanceOperation(string)              {}
func (noMetrics) InternalOperation(string)              {}
func (noMetrics) MissedUpdate()                         {}
func (noMetrics) ObserveInstance(string, time.Duration) {}
func (noMetrics) SetGauges(Gauges)                      {}
