package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// ErrNothingToMigrate is returned by Migrate when no runner uses docker+machine.
var ErrNothingToMigrate = errors.New("no docker+machine runner to migrate")

// MigrateResult is a migrated config.toml and what could not carry over.
type MigrateResult struct {
	// Output is the new config.toml. It loads without errors.
	Output []byte
	// Warnings name each setting whose meaning changed or was lost, prefixed with the
	// runner ("runners[1] "dynamic-scaler": …").
	Warnings []string
	// Migrated counts the converted runners.
	Migrated int
}

// migratedAutoscaler is written in place of [runners.machine]; a struct (not a map) so
// the keys come out in this order.
type migratedAutoscaler struct {
	Plugin              string            `toml:"plugin"`
	CapacityPerInstance int               `toml:"capacity_per_instance"`
	MaxUseCount         int               `toml:"max_use_count"`
	MaxInstances        int               `toml:"max_instances,omitempty"`
	PluginConfig        map[string]string `toml:"plugin_config"`
	ConnectorConfig     map[string]any    `toml:"connector_config,omitempty"`
	ScaleThrottle       *ScaleThrottle    `toml:"scale_throttle,omitempty"`
	Policy              []migratedPolicy  `toml:"policy"`
}

type migratedPolicy struct {
	Periods          []string `toml:"periods"`
	Timezone         string   `toml:"timezone,omitempty"`
	IdleCount        int      `toml:"idle_count"`
	IdleTime         string   `toml:"idle_time"`
	ScaleFactor      float64  `toml:"scale_factor,omitempty"`
	ScaleFactorLimit int      `toml:"scale_factor_limit,omitempty"`
}

// driverPlugins maps a Docker Machine driver to the fleeting plugin for the same cloud,
// and the MachineOptions that carry over into plugin_config and connector_config.
var driverPlugins = map[string]struct {
	plugin      string
	group       string // what the instance group is called in that cloud
	pluginKeys  map[string]string
	userOption  string
	defaultUser string
	privateOpts []string
}{
	"amazonec2": {plugin: "aws", group: "AWS Auto Scaling group",
		pluginKeys: map[string]string{"amazonec2-region": "region"},
		userOption: "amazonec2-ssh-user", defaultUser: "ubuntu",
		privateOpts: []string{"amazonec2-use-private-address", "amazonec2-private-address-only"}},
	"google": {plugin: "googlecloud", group: "Google Cloud instance group",
		pluginKeys: map[string]string{"google-project": "project", "google-zone": "zone"},
		userOption: "google-username", defaultUser: "docker-user",
		privateOpts: []string{"google-use-internal-ip", "google-use-internal-ip-only"}},
	"azure": {plugin: "azure", group: "Azure scale set",
		pluginKeys: map[string]string{"azure-subscription-id": "subscription_id", "azure-resource-group": "resource_group_name"},
		userOption: "azure-ssh-user", defaultUser: "docker-user",
		privateOpts: []string{"azure-use-private-ip"}},
}

// Migrate converts every docker+machine runner of a config.toml into a
// docker-autoscaler runner, following the mapping in docs/configuration.md: executor,
// MaxBuilds → max_use_count, limit → max_instances, IdleCount/IdleTime/IdleScaleFactor
// and each [[runners.machine.autoscaling]] (and legacy OffPeak*) → policies with 5-field
// periods, MaxGrowthRate → scale_throttle, MachineDriver → plugin, MachineOptions
// engine-registry-mirror → [runners.docker] registry_mirrors. Other runners and
// keys are kept; comments are not. The input must load without errors.
func Migrate(file string, data []byte) (*MigrateResult, error) {
	cfg, _, err := Parse(file, data)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", file, err)
	}
	generic, _ := doc["runners"].([]any)
	res := &MigrateResult{}
	for i := range cfg.Runners {
		r := &cfg.Runners[i]
		if r.Executor != ExecutorDockerMachine || i >= len(generic) {
			continue
		}
		m, ok := generic[i].(map[string]any)
		if !ok {
			continue
		}
		prefix := indexPath("runners", i)
		if r.Name != "" {
			prefix += " " + strconv.Quote(r.Name)
		}
		warn := func(format string, args ...any) {
			res.Warnings = append(res.Warnings, prefix+": "+fmt.Sprintf(format, args...))
		}
		a := migrateRunner(r, warn)
		migrateMirrors(r, m, warn)
		m["executor"] = ExecutorDockerAutoscaler
		delete(m, "machine")
		m["autoscaler"] = a
		res.Migrated++
	}
	if res.Migrated == 0 {
		return nil, ErrNothingToMigrate
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "# Migrated from docker+machine by `runner config migrate` from %s.\n", file)
	buf.WriteString("# The instance groups named in plugin_config must be created in the cloud outside the runner.\n")
	buf.WriteString("# Comments of the original file are not kept.\n\n")
	enc := toml.NewEncoder(&buf)
	enc.SetIndentTables(true)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("encoding migrated config: %w", err)
	}
	res.Output = buf.Bytes()

	// The output must be something this package accepts; anything else is a bug here.
	// Its warnings (concurrent below the new capacity, keys left unknown) are passed on.
	_, diags, err := Parse(file, res.Output)
	if err != nil {
		return nil, fmt.Errorf("migrated config does not load (please report this): %w", err)
	}
	for _, d := range diags {
		res.Warnings = append(res.Warnings, "migrated config: "+d.String())
	}
	return res, nil
}

func migrateRunner(r *Runner, warn func(string, ...any)) migratedAutoscaler {
	mc := r.Machine
	if mc == nil {
		mc = &Machine{}
		warn("executor docker+machine without [runners.machine]; using an empty configuration")
	}
	a := migratedAutoscaler{
		CapacityPerInstance: 1, // docker+machine runs one job per machine
		MaxUseCount:         mc.MaxBuilds,
		MaxInstances:        r.Limit,
		PluginConfig:        map[string]string{},
	}
	if r.Limit == 0 {
		warn("limit = 0 (no limit on machines): max_instances is left unset, so the instance group is not capped by the runner")
	}
	migrateDriver(mc, &a, warn)

	if mc.MaxGrowthRate > 0 {
		a.ScaleThrottle = &ScaleThrottle{Limit: 1, Burst: mc.MaxGrowthRate}
		warn("MaxGrowthRate = %d became scale_throttle {limit = 1, burst = %d}: not equivalent (docker+machine caps machines "+
			"being created at once, the autoscaler limits creations per second with a token bucket)", mc.MaxGrowthRate, mc.MaxGrowthRate)
	}
	if mc.MaxRemovalAttempts > 0 {
		warn("MaxRemovalAttempts = %d has no equivalent: the autoscaler retries deletion every deletion_retry_interval", mc.MaxRemovalAttempts)
	}

	// The root values are the fallback, so they become the first, always-active policy:
	// the last matching policy wins, as the last matching autoscaling period did.
	a.Policy = append(a.Policy, idlePolicy("root values", []string{taskscaler.DefaultPeriod}, "",
		mc.IdleCount, mc.IdleCountMin, mc.IdleScaleFactor, mc.IdleTime, warn))
	if len(mc.OffPeakPeriods) > 0 {
		warn("OffPeak* settings have been ignored by GitLab Runner since 14.0; they are carried over as policy[%d], "+
			"remove it to keep today's behaviour", len(a.Policy))
		if p, ok := periodsPolicy("OffPeakPeriods", mc.OffPeakPeriods, mc.OffPeakTimezone,
			mc.OffPeakIdleCount, 0, 0, mc.OffPeakIdleTime, warn); ok {
			a.Policy = append(a.Policy, p)
		}
	}
	for i, as := range mc.Autoscaling {
		what := fmt.Sprintf("autoscaling[%d]", i)
		if p, ok := periodsPolicy(what, as.Periods, as.Timezone, as.IdleCount, as.IdleCountMin,
			as.IdleScaleFactor, as.IdleTime, warn); ok {
			a.Policy = append(a.Policy, p)
		}
	}
	return a
}

func periodsPolicy(what string, periods []string, tz string, idleCount, idleCountMin int, factor float64,
	idleTime int, warn func(string, ...any)) (migratedPolicy, bool) {
	var out []string
	for _, p := range periods {
		conv, notes, err := ConvertPeriod(p)
		for _, n := range notes {
			warn("%s period %q: %s", what, p, n)
		}
		if err != nil {
			warn("%s period %q cannot be converted and is dropped: %v", what, p, err)
			continue
		}
		out = append(out, conv)
	}
	if len(out) == 0 {
		warn("%s has no usable period and is dropped", what)
		return migratedPolicy{}, false
	}
	return idlePolicy(what, out, tz, idleCount, idleCountMin, factor, idleTime, warn), true
}

// idlePolicy maps docker+machine idle settings onto a policy. With capacity 1 per
// instance, idle machines and idle job slots are the same count.
func idlePolicy(what string, periods []string, tz string, idleCount, idleCountMin int, factor float64,
	idleTime int, warn func(string, ...any)) migratedPolicy {
	p := migratedPolicy{Periods: periods, Timezone: tz, IdleCount: idleCount, IdleTime: "1s"}
	if idleTime > 0 {
		p.IdleTime = Duration{secondsDuration(idleTime)}.String()
	}
	switch {
	case factor > 0 && idleCount <= 0:
		warn("%s: IdleScaleFactor = %g has no effect with IdleCount = 0 in docker+machine; not carried over", what, factor)
	case factor > 0:
		// IdleCount is the cap when a factor is used, IdleCountMin (at least 1) the floor.
		p.ScaleFactor = factor
		p.ScaleFactorLimit = idleCount
		p.IdleCount = max(idleCountMin, 1)
		warn("%s: IdleScaleFactor = %g: docker+machine rounds in-use × factor down, the autoscaler rounds up; "+
			"idle capacity may be one higher", what, factor)
	}
	return p
}

// ConvertPeriod turns a docker+machine period (gorhill/cronexpr: 5 to 7 fields,
// "[second] minute hour day-of-month month day-of-week [year]", or @daily-style
// descriptors) into the 5-field form of autoscaler policies. notes say what was lost
// (a seconds or year restriction); err is set when the result is still not a valid
// 5-field period.
func ConvertPeriod(expr string) (period string, notes []string, err error) {
	f := strings.Fields(strings.ToLower(expr))
	if len(f) == 1 && strings.HasPrefix(f[0], "@") {
		descriptors := map[string]string{
			"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
			"@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
		}
		d, ok := descriptors[f[0]]
		if !ok {
			return "", nil, fmt.Errorf("unknown descriptor %q", f[0])
		}
		// A docker+machine period is active while it matches; "@daily" matches one minute.
		return d, nil, nil
	}
	switch len(f) {
	case 5:
	case 6:
		if f[5] != "*" {
			notes = append(notes, fmt.Sprintf("year restriction %q dropped (policies have no year field)", f[5]))
		}
		f = f[:5]
	case 7:
		if f[0] != "*" {
			notes = append(notes, fmt.Sprintf("seconds field %q dropped: the policy is active for whole minutes", f[0]))
		}
		if f[6] != "*" {
			notes = append(notes, fmt.Sprintf("year restriction %q dropped (policies have no year field)", f[6]))
		}
		f = f[1:6]
	default:
		return "", notes, fmt.Errorf("want 5 to 7 fields, got %d", len(f))
	}
	for i := range f {
		// cronexpr's "?" (no specific value) is "*" in 5-field cron.
		if f[i] == "?" {
			f[i] = "*"
		}
	}
	period = strings.Join(f, " ")
	if _, err := taskscaler.ParsePeriod(period); err != nil {
		return "", notes, err
	}
	return period, notes, nil
}

func migrateDriver(mc *Machine, a *migratedAutoscaler, warn func(string, ...any)) {
	group := strings.Trim(strings.ReplaceAll(mc.MachineName, "%s", ""), "-_.")
	if group == "" {
		group = "runner-instances"
	}
	d, known := driverPlugins[mc.MachineDriver]
	if !known {
		a.Plugin = "REPLACE-ME"
		warn("MachineDriver %q has no known fleeting plugin: set plugin to the plugin for that platform", mc.MachineDriver)
		for _, o := range mc.MachineOptions {
			if k, _, _ := strings.Cut(o, "="); k != engineRegistryMirror {
				warn("MachineOptions %q has no autoscaler equivalent", o)
			}
		}
	} else {
		a.Plugin = d.plugin
		user, private := d.defaultUser, false
		for _, o := range mc.MachineOptions {
			k, v, _ := strings.Cut(o, "=")
			switch {
			case d.pluginKeys[k] != "":
				a.PluginConfig[d.pluginKeys[k]] = v
			case k == d.userOption:
				user = v
			case slices.Contains(d.privateOpts, k):
				private = private || v == "" || v == "true"
			case k == engineRegistryMirror: // migrateMirrors
			default:
				warn("MachineOptions %q has no autoscaler equivalent: set it on the %s (template, image, network) instead", o, d.group)
			}
		}
		a.ConnectorConfig = map[string]any{"username": user}
		if !private {
			a.ConnectorConfig["use_external_addr"] = true
		}
		warn("create the %s %q outside the runner (docker+machine created machines itself); plugin_config.name refers to it",
			d.group, group)
	}
	a.PluginConfig["name"] = group
	for _, o := range mc.MachineOptionsWithName {
		warn("MachineOptionsWithName %q has no autoscaler equivalent", o)
	}
}

func secondsDuration(n int) time.Duration { return time.Duration(n) * time.Second }

// engineRegistryMirror is the Docker Machine option that started each machine's
// Docker Engine with --registry-mirror.
const engineRegistryMirror = "engine-registry-mirror"

// migrateMirrors carries every MachineOptions engine-registry-mirror=URL into
// registry_mirrors of the runner's [runners.docker] (m is the runner's table), after
// the mirrors already there: the docker-autoscaler executor then pulls Docker Hub
// images through them. Only a plain-HTTP mirror elsewhere than on loopback is worth a
// warning: the instances' Docker Engine must be told it may use HTTP there, which
// --registry-mirror did by itself.
func migrateMirrors(r *Runner, m map[string]any, warn func(string, ...any)) {
	if r.Machine == nil {
		return
	}
	mirrors := slices.Clone(r.Docker.RegistryMirrors)
	var hosts []string
	for _, mirror := range mirrors {
		h, _ := RegistryMirrorHost(mirror)
		hosts = append(hosts, h)
	}
	added := false
	for _, o := range r.Machine.MachineOptions {
		k, v, _ := strings.Cut(o, "=")
		if k != engineRegistryMirror {
			continue
		}
		host, err := RegistryMirrorHost(v)
		if err != nil {
			warn("MachineOptions %q is not carried over to registry_mirrors: %v", o, err)
			continue
		}
		if slices.Contains(hosts, host) {
			continue
		}
		mirrors, hosts, added = append(mirrors, v), append(hosts, host), true
		if strings.HasPrefix(strings.ToLower(v), "http://") && !loopbackHost(host) {
			warn("MachineOptions %q became [runners.docker] registry_mirrors; the instances' Docker Engine pulls from it over "+
				"HTTPS unless %q is in its insecure-registries (daemon.json)", o, host)
		}
	}
	if !added {
		return
	}
	docker := tableIgnoringCase(m, "docker")
	for k := range docker {
		if strings.EqualFold(k, "registry_mirrors") {
			delete(docker, k)
		}
	}
	docker["registry_mirrors"] = mirrors
}

// loopbackHost says whether a registry host[:port] is on loopback, where Docker
// allows plain HTTP without configuration.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	return host == "localhost" || net.ParseIP(host).IsLoopback()
}

// tableIgnoringCase returns m's table under key, matched ignoring case as the loader
// does, adding an empty one when there is none.
func tableIgnoringCase(m map[string]any, key string) map[string]any {
	for k, v := range m {
		if t, ok := v.(map[string]any); ok && strings.EqualFold(k, key) {
			return t
		}
	}
	t := map[string]any{}
	m[key] = t
	return t
}
