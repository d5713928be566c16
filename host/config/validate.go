package config

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // timezone checks must not depend on the host's zoneinfo files

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// knownExecutors are GitLab Runner's executor names. Flotilla runs only the autoscaled
// ones; the others load with a warning so that a shared config.toml still works.
var knownExecutors = []string{ExecutorInstance, ExecutorDockerAutoscaler, ExecutorDockerMachine, "docker", "docker-windows",
	"shell", "ssh", "kubernetes", "custom", "parallels", "virtualbox", "docker-ssh", "docker-ssh+machine"}

var knownShells = []string{"bash", "sh", "powershell", "pwsh"}

var knownPullPolicies = []string{"always", "if-not-present", "never"}

var knownLogLevels = []string{"debug", "info", "warn", "warning", "error", "fatal", "panic"}

// knownLogFormats are GitLab Runner's log_format values.
var knownLogFormats = []string{"runner", "text", "json"}

var knownProtocols = []string{"ssh", "winrm", "winrm+https"}

// Bounds on the counts and intervals of [runners.autoscaler]. GitLab Runner sets none;
// these are far above any real fleet, and low enough that the autoscaler's arithmetic
// cannot overflow (max_instances × capacity_per_instance ≤ 10⁸, idle capacity ≤ 10⁶
// slots, scale_factor × busy slots ≤ 10¹¹) and that no loop spins.
const (
	// MaxCapacityPerInstance bounds capacity_per_instance: job slots on one instance.
	MaxCapacityPerInstance = 1000
	// MaxInstancesBound bounds max_instances.
	MaxInstancesBound = 100_000
	// MaxIdleSlots bounds idle_count and scale_factor_limit, which count job slots.
	MaxIdleSlots = 1_000_000
	// MaxScaleFactor bounds scale_factor, idle slots kept per busy slot.
	MaxScaleFactor = 1000
	// MinLoopInterval is the shortest interval of a loop: update_interval,
	// update_interval_when_expecting, deletion_retry_interval,
	// shutdown_deletion_interval and connector keepalive: the taskscaler's own bound.
	MinLoopInterval = taskscaler.MinUpdateInterval
	// MaxOutputLimit bounds output_limit (kilobytes): 1 TiB of log.
	MaxOutputLimit = 1 << 30
)

// validator checks values after decoding; positions come from the checker's index.
type validator struct {
	*checker
	cfg *Config
}

// at returns where path (or its nearest written ancestor) is in the file.
func (v *validator) at(path string) pos {
	for p := path; p != ""; {
		if at, ok := v.where[p]; ok {
			return at
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	return pos{}
}

func (v *validator) set(path string) bool {
	_, ok := v.where[path]
	return ok
}

func (v *validator) errorf(path, hint, format string, args ...any) {
	v.add(Error, v.at(path), path, fmt.Sprintf(format, args...), hint)
}

func (v *validator) warnf(path, hint, format string, args ...any) {
	v.add(Warning, v.at(path), path, fmt.Sprintf(format, args...), hint)
}

func (v *validator) nonNegative(path string, n int) {
	if n < 0 {
		v.errorf(path, "use 0 for the default or a positive number", "%s must not be negative, got %d", lastKey(path), n)
	}
}

// count checks a count that must be 0 (the default) up to limit; what says what it
// counts, for the hint.
func (v *validator) count(path string, n, limit int, what string) {
	switch {
	case n < 0:
		v.nonNegative(path, n)
	case n > limit:
		v.errorf(path, fmt.Sprintf("use at most %d %s", limit, what),
			"%s = %d is out of range (at most %d)", lastKey(path), n, limit)
	}
}

// interval checks a duration that drives a loop: when set, at least MinLoopInterval.
func (v *validator) interval(path string, d Duration) {
	if d.Duration > 0 && d.Duration < MinLoopInterval {
		v.errorf(path, fmt.Sprintf("use at least %s, or leave it unset for the default", MinLoopInterval),
			"%s = %s would make the runner busy-loop (minimum %s)", lastKey(path), d.Duration, MinLoopInterval)
	}
}

// mulSat and addSat are n × m and n + m for non-negative ints, saturating at
// math.MaxInt instead of wrapping around.
func mulSat(n, m int) int {
	if n == 0 || m == 0 {
		return 0
	}
	if n > math.MaxInt/m {
		return math.MaxInt
	}
	return n * m
}

func addSat(n, m int) int {
	if n > math.MaxInt-m {
		return math.MaxInt
	}
	return n + m
}

// MinWebTokenLength is the shortest web_token accepted.
const MinWebTokenLength = 16

func (v *validator) validate() {
	c := v.cfg
	v.nonNegative("concurrent", c.Concurrent)
	v.nonNegative("check_interval", c.CheckInterval)
	v.nonNegative("shutdown_timeout", c.ShutdownTimeout)
	if c.ListenAddress != "" {
		if _, _, err := net.SplitHostPort(c.ListenAddress); err != nil {
			v.errorf("listen_address", "write host:port, e.g. \"127.0.0.1:9252\" or \":9252\"",
				"invalid listen_address %q: %v", c.ListenAddress, err)
		}
	}
	if c.WebToken != "" {
		// The value is never quoted back: it is a credential.
		if len(c.WebToken) < MinWebTokenLength {
			v.errorf("web_token", "use a random string of at least 16 characters, e.g. the output of `openssl rand -hex 20`",
				"web_token is too short (%d characters, at least %d): it guards the operator's page", len(c.WebToken), MinWebTokenLength)
		} else if strings.TrimSpace(c.WebToken) != c.WebToken {
			v.errorf("web_token", "remove the spaces around the value", "web_token has leading or trailing spaces")
		}
		if c.ListenAddress == "" {
			v.warnf("web_token", "set listen_address to serve the operator's page, or remove web_token",
				"web_token has no effect without listen_address")
		}
	}
	if c.Coordination != nil {
		v.coordination("coordination", c)
	}
	if c.LogLevel != "" && !slices.Contains(knownLogLevels, c.LogLevel) {
		v.errorf("log_level", "one of "+strings.Join(knownLogLevels, ", "), "unknown log_level %q", c.LogLevel)
	}
	if c.LogFormat != "" && !slices.Contains(knownLogFormats, c.LogFormat) {
		v.errorf("log_format", "one of "+strings.Join(knownLogFormats, ", "), "unknown log_format %q", c.LogFormat)
	}
	if len(c.Runners) == 0 && !v.set("runners") {
		v.warnf("", "add a [[runners]] table", "no [[runners]] configured")
	}
	want, first := 0, ""
	for i := range c.Runners {
		n := v.runner(indexPath("runners", i), &c.Runners[i])
		if n > 0 && first == "" {
			first = indexPath("runners", i) + ".autoscaler.max_instances"
		}
		want = addSat(want, n)
	}
	// With [coordination] each manager runs a share of the pool's slots: concurrent
	// caps one manager, and how many share the pool is not in this file.
	if want > 0 && c.ConcurrentOrDefault() < want && c.Coordination == nil {
		at := "concurrent"
		if !v.set(at) {
			at = first // point at what asks for more than the default allows
		}
		msg := fmt.Sprintf("concurrent = %d caps the jobs below what the autoscaled runners can run (%d)", c.ConcurrentOrDefault(), want)
		hint := fmt.Sprintf("set concurrent = %d (max_instances × capacity_per_instance, summed over runners)", want)
		if want == math.MaxInt {
			msg = fmt.Sprintf("concurrent = %d caps the jobs below what the autoscaled runners can run (max_instances × capacity_per_instance, summed over runners, is too large to count)", c.ConcurrentOrDefault())
			hint = "lower max_instances and capacity_per_instance to what the fleet can run, then set concurrent to their product"
		}
		v.add(Warning, v.at(at), "concurrent", msg, hint)
	}
}

// runner checks one [[runners]] entry and returns its job capacity (0 = unbounded or
// not autoscaled) for the concurrent check.
func (v *validator) runner(path string, r *Runner) int {
	v.nonNegative(path+".limit", r.Limit)
	v.nonNegative(path+".request_concurrency", r.RequestConcurrency)
	v.count(path+".output_limit", r.OutputLimit, MaxOutputLimit, "kilobytes")
	if r.URL != "" {
		if u, err := url.Parse(r.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.errorf(path+".url", "write the GitLab address, e.g. \"https://gitlab.com\"", "invalid url %q", r.URL)
		}
	}
	if r.Shell != "" && !slices.Contains(knownShells, r.Shell) {
		v.errorf(path+".shell", "one of "+strings.Join(knownShells, ", "), "unknown shell %q", r.Shell)
	}
	switch {
	case r.Executor == "":
		v.warnf(path, "set executor = "+ExecutorChoice(true), "no executor set; this runner cannot run jobs")
	case !slices.Contains(knownExecutors, r.Executor):
		v.errorf(path+".executor", "use "+ExecutorChoice(true), "unknown executor %q", r.Executor)
	case r.Executor == ExecutorDockerMachine:
		v.warnf(path+".executor", "run `runner config migrate` to convert it to docker-autoscaler",
			"executor %q is not run by Flotilla", r.Executor)
	case !r.NeedsAutoscaler():
		v.warnf(path+".executor", "use "+ExecutorChoice(true), "executor %q is not run by Flotilla", r.Executor)
	}
	if r.NeedsAutoscaler() && r.Autoscaler == nil {
		v.errorf(path+".executor", "add a [runners.autoscaler] table with plugin = \"…\"", "executor requires autoscaler config")
	}
	if r.Machine != nil && r.Executor != ExecutorDockerMachine {
		v.warnf(path+".machine", "remove [runners.machine]", "[runners.machine] is only read for executor \"docker+machine\"")
	}
	v.docker(path+".docker", &r.Docker)
	if r.Cache != nil {
		v.cache(path+".cache", r.Cache)
	}
	capacity := 0
	if a := r.Autoscaler; a != nil {
		capacity = v.autoscaler(path+".autoscaler", a, r)
		if !r.NeedsAutoscaler() && r.Executor != "" {
			v.warnf(path+".autoscaler", "use executor "+ExecutorChoice(true),
				"[runners.autoscaler] is ignored with executor %q", r.Executor)
		}
		if r.Instance.UseCommonBuildDir && !a.VMIsolation.Enabled && a.MaxUseCount != 1 {
			v.warnf(path+".instance.use_common_build_dir", "it applies only with vm_isolation or max_use_count = 1",
				"use_common_build_dir has no effect here")
		}
	}
	return capacity
}

func (v *validator) docker(path string, d *Docker) {
	v.registryMirrors(path+".registry_mirrors", d.RegistryMirrors)
	for i, p := range d.AllowedPullPolicies {
		if !slices.Contains(knownPullPolicies, p) {
			v.errorf(indexPath(path+".allowed_pull_policies", i), "one of "+strings.Join(knownPullPolicies, ", "),
				"unknown pull policy %q", p)
		}
	}
	for i, p := range d.PullPolicy {
		pp := path + ".pull_policy"
		if v.set(indexPath(pp, i)) {
			pp = indexPath(pp, i)
		}
		switch {
		case !slices.Contains(knownPullPolicies, p):
			v.errorf(pp, "one of "+strings.Join(knownPullPolicies, ", "), "unknown pull policy %q", p)
		case len(d.AllowedPullPolicies) > 0 && !slices.Contains(d.AllowedPullPolicies, p):
			v.errorf(pp, "add it to allowed_pull_policies or pick one of "+strings.Join(d.AllowedPullPolicies, ", "),
				"pull_policy %q is not in allowed_pull_policies", p)
		}
	}
	v.dockerContainers(path, d)
}

func (v *validator) autoscaler(path string, a *Autoscaler, r *Runner) int {
	if a.Plugin == "" && r.NeedsAutoscaler() {
		v.errorf(path, "set plugin = \"local\", \"aws\", \"googlecloud\", \"azure\" or a plugin binary name",
			"autoscaler plugin is not set")
	}
	v.count(path+".capacity_per_instance", a.CapacityPerInstance, MaxCapacityPerInstance, "job slots per instance")
	v.nonNegative(path+".max_use_count", a.MaxUseCount)
	v.count(path+".max_instances", a.MaxInstances, MaxInstancesBound, "instances")
	v.interval(path+".update_interval", a.UpdateInterval)
	v.interval(path+".update_interval_when_expecting", a.UpdateIntervalWhenExpecting)
	v.interval(path+".deletion_retry_interval", a.DeletionRetryInterval)
	v.interval(path+".shutdown_deletion_interval", a.ShutdownDeletionInterval)
	v.nonNegative(path+".shutdown_deletion_retries", a.ShutdownDeletionRetries)
	v.nonNegative(path+".failure_threshold", a.FailureThreshold)
	if a.ScaleThrottle.Limit < -1 {
		v.errorf(path+".scale_throttle.limit", "use -1 for unlimited, 0 for the default (100/s) or a positive rate",
			"scale_throttle.limit must be -1 or more, got %d", a.ScaleThrottle.Limit)
	}
	v.nonNegative(path+".scale_throttle.burst", a.ScaleThrottle.Burst)
	v.connector(path+".connector_config", &a.ConnectorConfig)
	if a.VMIsolation.Enabled || v.set(path+".vm_isolation.connector_config") {
		v.connector(path+".vm_isolation.connector_config", &a.VMIsolation.ConnectorConfig)
	}
	if a.VMIsolation.Enabled && a.VMIsolation.NestingHost == "" {
		v.errorf(path+".vm_isolation.nesting_host", "the nesting daemon's socket on the instance, e.g. \"unix:///run/nesting.sock\"",
			"vm_isolation is enabled but nesting_host is not set")
	}
	slots := 0 // job slots of the whole group; 0 = unbounded
	if a.MaxInstances > 0 {
		slots = mulSat(a.MaxInstances, a.CapacityPerInstanceOrDefault())
	}
	for i := range a.Policy {
		v.policy(indexPath(path+".policy", i), &a.Policy[i], slots)
		v.preemptiveCap(indexPath(path+".policy", i), &a.Policy[i], a.MaxUseCount)
	}
	return slots
}

// PreemptiveCapIdleCount and PreemptiveCapMaxUse bound when config check warns that
// a fixed policy in preemptive mode caps throughput: idle_count at most 2 on instances
// used up after at most 10 jobs. The check cannot know the arrival rate; these are
// where `runner simulate` shows jobs queueing in GitLab for more than a boot time on
// a CI-shaped day (with more reuse the cap mostly slows the fleet's growth).
const (
	PreemptiveCapIdleCount = 2
	PreemptiveCapMaxUse    = 10
)

// preemptiveCap warns about a fixed policy in preemptive mode whose idle_count caps the
// jobs that can start: the runner asks GitLab for a job only while an idle slot is
// ready, and a used slot is replaced one boot later.
func (v *validator) preemptiveCap(path string, p *Policy, maxUseCount int) {
	if p.Mode == taskscaler.ModeForecast || !p.Preemptive() || p.IdleCount < 0 || p.IdleCount > PreemptiveCapIdleCount {
		return
	}
	if p.IdleCount == 0 { // preemptive only because preemptive_mode = true
		v.warnf(path+".preemptive_mode", "set preemptive_mode = false, or idle_count above 0",
			"preemptive_mode = true with idle_count = 0: the runner asks GitLab for a job only while an idle slot is ready, and this policy keeps none, so no job starts while it is active")
		return
	}
	if maxUseCount < 1 || maxUseCount > PreemptiveCapMaxUse {
		return
	}
	mode := "preemptive mode (the default with idle_count > 0)"
	if p.PreemptiveMode != nil {
		mode = "preemptive_mode = true"
	}
	hint := `set preemptive_mode = false, or mode = "forecast", or raise idle_count; runner simulate shows the time jobs wait in GitLab's queue`
	jobs := "jobs"
	if p.IdleCount == 1 {
		jobs = "job"
	}
	if maxUseCount == 1 {
		v.warnf(path+".idle_count", hint,
			"%s with idle_count = %d caps throughput at %d %s per instance boot time: the runner asks GitLab for a job only while an idle slot is ready, and with max_use_count = 1 every job needs a new instance; other jobs wait in GitLab's queue",
			mode, p.IdleCount, p.IdleCount, jobs)
		return
	}
	v.warnf(path+".idle_count", hint,
		"%s with idle_count = %d lets at most %d %s start on new instances per instance boot time: the runner asks GitLab for a job only while an idle slot is ready, and with max_use_count = %d instances are used up after %d jobs; jobs beyond the free slots wait in GitLab's queue",
		mode, p.IdleCount, p.IdleCount, jobs, maxUseCount, maxUseCount)
}

func (v *validator) connector(path string, cc *ConnectorConfig) {
	if cc.Protocol != "" && !slices.Contains(knownProtocols, cc.Protocol) {
		v.errorf(path+".protocol", "one of "+strings.Join(knownProtocols, ", "), "unknown protocol %q", cc.Protocol)
	}
	if cc.ProtocolPort < 0 || cc.ProtocolPort > 65535 {
		v.errorf(path+".protocol_port", "a TCP port 1-65535, or 0 for the protocol's default",
			"protocol_port %d is out of range", cc.ProtocolPort)
	}
	v.interval(path+".keepalive", cc.Keepalive)
}

// policy checks one policy; slots is the job slots of the group (0 = unbounded), which
// idle capacity cannot exceed.
func (v *validator) policy(path string, p *Policy, slots int) {
	v.count(path+".idle_count", p.IdleCount, MaxIdleSlots, "job slots")
	v.count(path+".scale_factor_limit", p.ScaleFactorLimit, MaxIdleSlots, "job slots")
	switch sf := p.ScaleFactor; {
	case math.IsNaN(sf) || math.IsInf(sf, 0):
		v.errorf(path+".scale_factor", fmt.Sprintf("use 0 (off) or a factor up to %d, e.g. 0.5", MaxScaleFactor),
			"scale_factor must be a number, got %g", sf)
	case sf < 0:
		v.errorf(path+".scale_factor", "use 0 (off) or a positive factor", "scale_factor must not be negative, got %g", sf)
	case sf > MaxScaleFactor:
		v.errorf(path+".scale_factor", fmt.Sprintf("use at most %d idle slots per busy slot; 0.5 to 2 is usual", MaxScaleFactor),
			"scale_factor = %g is out of range (at most %d)", sf, MaxScaleFactor)
	}
	if slots > 0 && p.IdleCount > slots && p.IdleCount <= MaxIdleSlots {
		v.warnf(path+".idle_count", fmt.Sprintf("lower idle_count to %d or raise max_instances", slots),
			"idle_count = %d is more than the %d job slots of max_instances × capacity_per_instance; at most %d are kept idle",
			p.IdleCount, slots, slots)
	}
	switch p.Mode {
	case "", taskscaler.ModeFixed:
		for _, k := range []string{"target_wait", "target_percentile"} {
			if v.set(path + "." + k) {
				v.warnf(path+"."+k, `set mode = "forecast" to use it, or remove it`, "%s is read only by a forecast policy; this policy is fixed", k)
			}
		}
	case taskscaler.ModeForecast:
		if p.TargetWait.Duration < 0 {
			v.errorf(path+".target_wait", `a duration such as "5s"`, "target_wait must not be negative, got %s", p.TargetWait.Duration)
		}
		if tp := p.TargetPercentile; math.IsNaN(tp) || tp < 0 || tp >= 100 {
			v.errorf(path+".target_percentile", "a percentile above 0 and below 100, e.g. 95 (the default)", "target_percentile = %g is out of range", tp)
		}
	default:
		v.errorf(path+".mode", `"fixed" (GitLab's idle_count, the default) or "forecast"`, "unknown policy mode %q", p.Mode)
	}
	// "0s" is accepted, as GitLab Runner does (its plugins' examples use it for "remove
	// idle instances at once"); other values below 1s are mistakes.
	if v.set(path+".idle_time") && p.IdleTime.Duration > 0 && p.IdleTime.Duration < time.Second {
		v.errorf(path+".idle_time", "idle_time must be at least 1s, e.g. \"20m0s\", or \"0s\" to remove idle instances at once",
			"idle_time %s is below the minimum of 1s", p.IdleTime.Duration)
	}
	for i, expr := range p.Periods {
		if _, err := taskscaler.ParsePeriod(expr); err != nil {
			hint := "write 5 fields: minute hour day-of-month month day-of-week, e.g. \"* 8-18 * * mon-fri\""
			if n := len(strings.Fields(expr)); n == 6 || n == 7 {
				hint = "this looks like a docker+machine period with seconds or year; `runner config migrate` converts those"
			}
			v.errorf(indexPath(path+".periods", i), hint, "invalid period %q: %v", expr, err)
		}
	}
	if p.Timezone != "" {
		if _, err := time.LoadLocation(p.Timezone); err != nil {
			v.errorf(path+".timezone", "use an IANA zone name such as \"Europe/Amsterdam\" or \"UTC\"",
				"unknown timezone %q", p.Timezone)
		}
	}
}
