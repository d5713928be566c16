package config

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // timezone checks must not depend on the host's zoneinfo files

	"github.com/robfig/cron/v3"
)

// knownExecutors are GitLab Runner's executor names. Flotilla runs only the autoscaled
// ones; the others load with a warning so that a shared config.toml still works.
var knownExecutors = []string{"instance", "docker-autoscaler", "docker+machine", "docker", "docker-windows",
	"shell", "ssh", "kubernetes", "custom", "parallels", "virtualbox", "docker-ssh", "docker-ssh+machine"}

var knownShells = []string{"bash", "sh", "powershell", "pwsh"}

var knownPullPolicies = []string{"always", "if-not-present", "never"}

var knownLogLevels = []string{"debug", "info", "warn", "warning", "error", "fatal", "panic"}

var knownProtocols = []string{"ssh", "winrm", "winrm+https"}

// cronParser reads the 5-field periods of autoscaler policies.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow)

// ParsePeriod parses one policy period (5-field cron: minute hour day-of-month month
// day-of-week; names such as mon-fri allowed).
func ParsePeriod(expr string) (cron.Schedule, error) {
	if strings.HasPrefix(strings.TrimSpace(expr), "@") {
		return nil, fmt.Errorf("descriptors such as %q are not supported; write 5 fields", expr)
	}
	return cronParser.Parse(expr)
}

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
	if c.LogLevel != "" && !slices.Contains(knownLogLevels, c.LogLevel) {
		v.errorf("log_level", "one of "+strings.Join(knownLogLevels, ", "), "unknown log_level %q", c.LogLevel)
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
		want += n
	}
	if want > 0 && c.ConcurrentOrDefault() < want {
		at := "concurrent"
		if !v.set(at) {
			at = first // point at what asks for more than the default allows
		}
		v.add(Warning, v.at(at), "concurrent",
			fmt.Sprintf("concurrent = %d caps the jobs below what the autoscaled runners can run (%d)", c.ConcurrentOrDefault(), want),
			fmt.Sprintf("set concurrent = %d (max_instances × capacity_per_instance, summed over runners)", want))
	}
}

// runner checks one [[runners]] entry and returns its job capacity (0 = unbounded or
// not autoscaled) for the concurrent check.
func (v *validator) runner(path string, r *Runner) int {
	v.nonNegative(path+".limit", r.Limit)
	v.nonNegative(path+".request_concurrency", r.RequestConcurrency)
	v.nonNegative(path+".output_limit", r.OutputLimit)
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
		v.warnf(path, "set executor = \"instance\" or \"docker-autoscaler\"", "no executor set; this runner cannot run jobs")
	case !slices.Contains(knownExecutors, r.Executor):
		v.errorf(path+".executor", "use \"instance\" or \"docker-autoscaler\"", "unknown executor %q", r.Executor)
	case r.Executor == ExecutorDockerMachine:
		v.warnf(path+".executor", "run `runner config migrate` to convert it to docker-autoscaler",
			"executor %q is not run by Flotilla", r.Executor)
	case !r.NeedsAutoscaler():
		v.warnf(path+".executor", "use \"instance\" or \"docker-autoscaler\"", "executor %q is not run by Flotilla", r.Executor)
	}
	if r.NeedsAutoscaler() && r.Autoscaler == nil {
		v.errorf(path+".executor", "add a [runners.autoscaler] table with plugin = \"…\"", "executor requires autoscaler config")
	}
	if r.Machine != nil && r.Executor != ExecutorDockerMachine {
		v.warnf(path+".machine", "remove [runners.machine]", "[runners.machine] is only read for executor \"docker+machine\"")
	}
	v.docker(path+".docker", &r.Docker)
	capacity := 0
	if a := r.Autoscaler; a != nil {
		capacity = v.autoscaler(path+".autoscaler", a, r)
		if !r.NeedsAutoscaler() && r.Executor != "" {
			v.warnf(path+".autoscaler", "use executor \"instance\" or \"docker-autoscaler\"",
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
}

func (v *validator) autoscaler(path string, a *Autoscaler, r *Runner) int {
	if a.Plugin == "" && r.NeedsAutoscaler() {
		v.errorf(path, "set plugin = \"local\", \"aws\", \"googlecloud\", \"azure\" or a plugin binary name",
			"autoscaler plugin is not set")
	}
	v.nonNegative(path+".capacity_per_instance", a.CapacityPerInstance)
	v.nonNegative(path+".max_use_count", a.MaxUseCount)
	v.nonNegative(path+".max_instances", a.MaxInstances)
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
	if a.VMIsolation.Enabled && r.Executor == ExecutorDockerAutoscaler {
		v.warnf(path+".vm_isolation.enabled", "use executor \"instance\" for nesting VMs",
			"vm_isolation applies to the instance executor only")
	}
	for i := range a.Policy {
		v.policy(indexPath(path+".policy", i), &a.Policy[i])
	}
	if a.MaxInstances > 0 {
		return a.MaxInstances * a.CapacityPerInstanceOrDefault()
	}
	return 0
}

func (v *validator) connector(path string, cc *ConnectorConfig) {
	if cc.Protocol != "" && !slices.Contains(knownProtocols, cc.Protocol) {
		v.errorf(path+".protocol", "one of "+strings.Join(knownProtocols, ", "), "unknown protocol %q", cc.Protocol)
	}
	if cc.ProtocolPort < 0 || cc.ProtocolPort > 65535 {
		v.errorf(path+".protocol_port", "a TCP port 1-65535, or 0 for the protocol's default",
			"protocol_port %d is out of range", cc.ProtocolPort)
	}
}

func (v *validator) policy(path string, p *Policy) {
	v.nonNegative(path+".idle_count", p.IdleCount)
	v.nonNegative(path+".scale_factor_limit", p.ScaleFactorLimit)
	if p.ScaleFactor < 0 {
		v.errorf(path+".scale_factor", "use 0 (off) or a positive factor", "scale_factor must not be negative, got %g", p.ScaleFactor)
	}
	if v.set(path+".idle_time") && p.IdleTime.Duration < time.Second {
		v.errorf(path+".idle_time", "idle_time must be at least 1s, e.g. \"20m0s\"",
			"idle_time %s is below the minimum of 1s", p.IdleTime.Duration)
	}
	for i, expr := range p.Periods {
		if _, err := ParsePeriod(expr); err != nil {
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
