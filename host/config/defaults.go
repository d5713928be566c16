package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// GitLab's defaults, applied by the accessor methods below when a key is unset (0).
// Keeping 0 in the struct lets the consumer tell "unset" from an explicit value. The
// defaults of [runners.autoscaler] keys are the taskscaler's own (taskscaler.Default…):
// defined once, where they take effect, and shown here by the accessors.
const (
	DefaultConcurrent    = 1
	DefaultCheckInterval = 3 * time.Second
	// DefaultStateStorageDir is relative to the directory of config.toml.
	DefaultStateStorageDir = ".taskscaler"
	// DefaultShell is the shell of the instance executor.
	DefaultShell = "bash"
)

// Executor names: the two Flotilla runs, and GitLab's docker+machine, which `runner
// config migrate` converts.
const (
	ExecutorInstance         = "instance"
	ExecutorDockerAutoscaler = "docker-autoscaler"
	ExecutorDockerMachine    = "docker+machine"
)

// Executors are the executors Flotilla runs, in the order help texts name them. Each
// has a registered executors.Kind (a test of the pool ties the two).
var Executors = []string{ExecutorInstance, ExecutorDockerAutoscaler}

// ExecutorChoice names the executors Flotilla runs for messages and help texts:
// `"instance" or "docker-autoscaler"` (quoted) or `instance or docker-autoscaler`.
func ExecutorChoice(quoted bool) string {
	names := make([]string, len(Executors))
	for i, e := range Executors {
		names[i] = e
		if quoted {
			names[i] = strconv.Quote(e)
		}
	}
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

// ConcurrentOrDefault is concurrent, or 1 when unset.
func (c *Config) ConcurrentOrDefault() int {
	if c.Concurrent <= 0 {
		return DefaultConcurrent
	}
	return c.Concurrent
}

// CheckIntervalOrDefault is check_interval as a duration, 3s when unset.
func (c *Config) CheckIntervalOrDefault() time.Duration {
	if c.CheckInterval <= 0 {
		return DefaultCheckInterval
	}
	return time.Duration(c.CheckInterval) * time.Second
}

// Dir is the directory of the configuration file; relative paths in it (key_path,
// state_storage.dir) are resolved against it. "." when parsed from bytes.
func (c *Config) Dir() string {
	if c.Path == "" {
		return "."
	}
	return filepath.Dir(c.Path)
}

// ShellOrDefault is shell, or bash when unset.
func (r *Runner) ShellOrDefault() string {
	if r.Shell == "" {
		return DefaultShell
	}
	return r.Shell
}

// NeedsAutoscaler reports whether the executor runs on autoscaled instances.
func (r *Runner) NeedsAutoscaler() bool {
	return slices.Contains(Executors, r.Executor)
}

// HostCacheDisabled reports whether [runners.docker] disable_cache turns off the job
// cache kept on the runner host (docker-autoscaler only; a [runners.cache] store still
// applies, as GitLab's disable_cache only turns off the local cache).
func (r *Runner) HostCacheDisabled() bool {
	return r.Executor == ExecutorDockerAutoscaler && r.Docker.DisableCache
}

// CapacityPerInstanceOrDefault is capacity_per_instance, 1 when unset.
func (a *Autoscaler) CapacityPerInstanceOrDefault() int {
	if a.CapacityPerInstance <= 0 {
		return taskscaler.DefaultCapacityPerInstance
	}
	return a.CapacityPerInstance
}

func durOr(d Duration, def time.Duration) time.Duration {
	if d.Duration <= 0 {
		return def
	}
	return d.Duration
}

// InstanceAcquireTimeoutOrDefault is instance_acquire_timeout, 15m when unset.
func (a *Autoscaler) InstanceAcquireTimeoutOrDefault() time.Duration {
	return durOr(a.InstanceAcquireTimeout, taskscaler.DefaultInstanceAcquireTimeout)
}

// UpdateIntervalOrDefault is update_interval, 1m when unset.
func (a *Autoscaler) UpdateIntervalOrDefault() time.Duration {
	return durOr(a.UpdateInterval, taskscaler.DefaultUpdateInterval)
}

// UpdateIntervalWhenExpectingOrDefault is update_interval_when_expecting, 2s when unset.
func (a *Autoscaler) UpdateIntervalWhenExpectingOrDefault() time.Duration {
	return durOr(a.UpdateIntervalWhenExpecting, taskscaler.DefaultUpdateIntervalWhenExpecting)
}

// DeletionRetryIntervalOrDefault is deletion_retry_interval, 1m when unset.
func (a *Autoscaler) DeletionRetryIntervalOrDefault() time.Duration {
	return durOr(a.DeletionRetryInterval, taskscaler.DefaultDeletionRetryInterval)
}

// ShutdownDeletionIntervalOrDefault is shutdown_deletion_interval, 10s when unset.
func (a *Autoscaler) ShutdownDeletionIntervalOrDefault() time.Duration {
	return durOr(a.ShutdownDeletionInterval, taskscaler.DefaultShutdownDeletionInterval)
}

// ShutdownDeletionRetriesOrDefault is shutdown_deletion_retries, 3 when unset.
func (a *Autoscaler) ShutdownDeletionRetriesOrDefault() int {
	if a.ShutdownDeletionRetries <= 0 {
		return taskscaler.DefaultShutdownDeletionRetries
	}
	return a.ShutdownDeletionRetries
}

// FailureThresholdOrDefault is failure_threshold, 3 when unset.
func (a *Autoscaler) FailureThresholdOrDefault() int {
	if a.FailureThreshold <= 0 {
		return taskscaler.DefaultFailureThreshold
	}
	return a.FailureThreshold
}

// ReservationThrottlingEnabled is reservation_throttling, on when unset.
func (a *Autoscaler) ReservationThrottlingEnabled() bool {
	return a.ReservationThrottling == nil || *a.ReservationThrottling
}

// ScaleThrottleLimit is creations per second: 100 when unset, 0 meaning unlimited
// when configured as -1.
func (a *Autoscaler) ScaleThrottleLimit() (perSecond int, unlimited bool) {
	switch {
	case a.ScaleThrottle.Limit < 0:
		return 0, true
	case a.ScaleThrottle.Limit == 0:
		return taskscaler.DefaultScaleThrottleLimit, false
	}
	return a.ScaleThrottle.Limit, false
}

// ScaleThrottleBurst is the token bucket size: burst, else max_instances, else the
// limit.
func (a *Autoscaler) ScaleThrottleBurst() int {
	if a.ScaleThrottle.Burst > 0 {
		return a.ScaleThrottle.Burst
	}
	if a.MaxInstances > 0 {
		return a.MaxInstances
	}
	l, _ := a.ScaleThrottleLimit()
	return max(l, 1)
}

// StateStorageDir is state_storage.dir resolved against configDir, defaulting to
// <configDir>/.taskscaler.
func (a *Autoscaler) StateStorageDir(configDir string) string {
	d := a.StateStorage.Dir
	if d == "" {
		d = DefaultStateStorageDir
	}
	if filepath.IsAbs(d) {
		return d
	}
	return filepath.Join(configDir, d)
}

// PluginConfigJSON is plugin_config encoded as the JSON object the plugin receives;
// "{}" when the table is absent.
func (a *Autoscaler) PluginConfigJSON() ([]byte, error) {
	return tableJSON(a.PluginConfig, "plugin_config")
}

// NestingConfigJSON is vm_isolation.nesting_config as the JSON nesting's Init receives.
func (v *VMIsolation) NestingConfigJSON() ([]byte, error) {
	return tableJSON(v.NestingConfig, "nesting_config")
}

func tableJSON(m map[string]any, what string) ([]byte, error) {
	if m == nil {
		return []byte("{}"), nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %s as JSON: %w", what, err)
	}
	return b, nil
}

// PoliciesOrDefault returns the policies; with none configured, one always-active
// policy with no idle capacity, which is what GitLab applies.
func (a *Autoscaler) PoliciesOrDefault() []Policy {
	if len(a.Policy) == 0 {
		return []Policy{{Periods: []string{taskscaler.DefaultPeriod}}}
	}
	return a.Policy
}

// PeriodsOrDefault is periods, or ["* * * * *"] when unset.
func (p *Policy) PeriodsOrDefault() []string {
	if len(p.Periods) == 0 {
		return []string{taskscaler.DefaultPeriod}
	}
	return p.Periods
}

// Location is the policy's timezone; time.Local when unset.
func (p *Policy) Location() (*time.Location, error) {
	if p.Timezone == "" {
		return time.Local, nil
	}
	loc, err := time.LoadLocation(p.Timezone)
	if err != nil {
		return nil, fmt.Errorf("policy timezone %q: %w", p.Timezone, err)
	}
	return loc, nil
}

// Preemptive is preemptive_mode, defaulting to idle_count > 0 (off for a forecast
// policy).
func (p *Policy) Preemptive() bool {
	if p.PreemptiveMode != nil {
		return *p.PreemptiveMode
	}
	return p.IdleCount > 0 && p.Mode != taskscaler.ModeForecast
}

// ReadKey reads key_path (relative paths against configDir). It returns nil and no
// error when key_path is unset.
func (cc *ConnectorConfig) ReadKey(configDir string) ([]byte, error) {
	if cc.KeyPath == "" {
		return nil, nil
	}
	p := cc.KeyPath
	if !filepath.IsAbs(p) {
		p = filepath.Join(configDir, p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("reading instance group connector key: %w", err)
	}
	return b, nil
}

// Provider converts the table into the provider.ConnectorConfig a plugin receives,
// reading key_path into Key. UseExternalAddr is not part of it: it is a dial option.
func (cc *ConnectorConfig) Provider(configDir string) (provider.ConnectorConfig, error) {
	key, err := cc.ReadKey(configDir)
	if err != nil {
		return provider.ConnectorConfig{}, err
	}
	return provider.ConnectorConfig{
		OS:                   cc.OS,
		Arch:                 cc.Arch,
		Protocol:             provider.Protocol(cc.Protocol),
		ProtocolPort:         cc.ProtocolPort,
		Username:             cc.Username,
		Password:             cc.Password,
		Key:                  key,
		UseStaticCredentials: cc.UseStaticCredentials,
		Keepalive:            cc.Keepalive.Duration,
		Timeout:              cc.Timeout.Duration,
	}, nil
}

// RequestConcurrencyOrDefault is request_concurrency, 1 when unset.
func (r *Runner) RequestConcurrencyOrDefault() int {
	if r.RequestConcurrency <= 0 {
		return 1
	}
	return r.RequestConcurrency
}

// ScalerOptions maps every key of the [runners.autoscaler] table to taskscaler
// options: the one mapping, used by the runner's pools and by `runner simulate`, so a
// simulated policy is the policy that runs. The caller adds what is not configuration
// (owner, store, hooks).
func (a *Autoscaler) ScalerOptions() taskscaler.Options {
	limit, unlimited := a.ScaleThrottleLimit()
	if unlimited {
		limit = -1
	}
	return taskscaler.Options{
		CapacityPerInstance:          a.CapacityPerInstanceOrDefault(),
		MaxUseCount:                  a.MaxUseCount,
		MaxInstances:                 a.MaxInstances,
		DeleteInstancesOnShutdown:    a.DeleteInstancesOnShutdown,
		InstanceAcquireTimeout:       a.InstanceAcquireTimeoutOrDefault(),
		UpdateInterval:               a.UpdateIntervalOrDefault(),
		UpdateIntervalWhenExpecting:  a.UpdateIntervalWhenExpectingOrDefault(),
		DeletionRetryInterval:        a.DeletionRetryIntervalOrDefault(),
		ShutdownDeletionInterval:     a.ShutdownDeletionIntervalOrDefault(),
		ShutdownDeletionRetries:      a.ShutdownDeletionRetriesOrDefault(),
		FailureThreshold:             a.FailureThresholdOrDefault(),
		ScaleThrottle:                taskscaler.ScaleThrottle{Limit: limit, Burst: a.ScaleThrottleBurst()},
		ReservationThrottling:        a.ReservationThrottling,
		Policies:                     a.ScalerPolicies(),
		KeepInstanceWithAcquisitions: a.StateStorage.KeepInstanceWithAcquisitions,
	}
}

// ScalerPolicies maps [[runners.autoscaler.policy]] to taskscaler policies; a config
// reload applies them with Scaler.ConfigureSchedule.
func (a *Autoscaler) ScalerPolicies() []taskscaler.Policy {
	var out []taskscaler.Policy
	for _, p := range a.Policy {
		out = append(out, taskscaler.Policy{Periods: p.Periods, Timezone: p.Timezone, IdleCount: p.IdleCount,
			IdleTime: p.IdleTime.Duration, ScaleFactor: p.ScaleFactor, ScaleFactorLimit: p.ScaleFactorLimit, PreemptiveMode: p.PreemptiveMode,
			Mode: p.Mode, TargetWait: p.TargetWait.Duration, TargetPercentile: p.TargetPercentile})
	}
	return out
}
