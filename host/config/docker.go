package config

import (
	"fmt"
	"math/big"
	"net"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/docker/go-units"
)

// DefaultWaitForServicesTimeout is GitLab Runner's wait_for_services_timeout when the
// key is unset or 0.
const DefaultWaitForServicesTimeout = 30 * time.Second

// MinMemory is the smallest memory limit Docker accepts (it refuses a container create
// below it); a smaller memory or service_memory is a config error instead of a failed
// job.
const MinMemory = 6 << 20

// sizeHint explains the size syntax of memory, memory_swap and memory_reservation.
const sizeHint = `write a size such as "512m" or "2g" (units b, k, m, g, t, p; powers of 1024)`

// ParseMemory parses a Docker memory size as GitLab Runner does (docker's
// RAMInBytes: "512m", "1g", "1024" bytes); "" is 0, no limit. swap allows "-1",
// unlimited swap (memory_swap).
func ParseMemory(s string, swap bool) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if swap && s == "-1" {
		return -1, nil
	}
	n, err := units.RAMInBytes(s)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("negative size %q", s)
	}
	return n, nil
}

// ParseCPUs parses a CPU count ("1.5", "2") into Docker's NanoCPUs, as `docker run
// --cpus` does; "" is 0, no limit.
func ParseCPUs(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	if r.Sign() <= 0 {
		return 0, fmt.Errorf("%q is not a positive number", s)
	}
	nano := r.Mul(r, big.NewRat(1e9, 1))
	if !nano.IsInt() {
		return 0, fmt.Errorf("%q is more precise than a billionth of a CPU", s)
	}
	if !nano.Num().IsInt64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return nano.Num().Int64(), nil
}

// Device is one entry of [runners.docker] devices: a device of the instance made
// available in the job's containers.
type Device struct {
	PathOnHost, PathInContainer, CgroupPermissions string
}

// ParseDevice parses "/dev/host[:/dev/container[:perms]]" as GitLab Runner does: the
// container path defaults to the host path and perms (a combination of r, w and m) to
// "rwm".
func ParseDevice(s string) (Device, error) {
	parts := strings.Split(s, ":")
	if len(parts) > 3 {
		return Device{}, fmt.Errorf("%q has too many colons", s)
	}
	d := Device{PathOnHost: parts[0], PathInContainer: parts[0], CgroupPermissions: "rwm"}
	if len(parts) > 1 {
		d.PathInContainer = parts[1]
	}
	if len(parts) > 2 {
		d.CgroupPermissions = parts[2]
	}
	if !path.IsAbs(d.PathOnHost) {
		return Device{}, fmt.Errorf("%q: the device on the instance must be an absolute path", s)
	}
	if !path.IsAbs(d.PathInContainer) {
		return Device{}, fmt.Errorf("%q: the path in the container must be absolute", s)
	}
	if p := d.CgroupPermissions; p == "" || strings.Trim(p, "rwm") != "" {
		return Device{}, fmt.Errorf("%q: permissions %q are not a combination of r, w and m", s, p)
	}
	return d, nil
}

// Ulimits returns [runners.docker.ulimit] ("nofile" = "1024:2048", "rtprio" = "99") as
// Docker's ulimits, sorted by name; values may also be TOML integers.
func (d *Docker) Ulimits() ([]*units.Ulimit, error) {
	if d.Ulimit == nil {
		return nil, nil
	}
	m, ok := d.Ulimit.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("ulimit must be a table of name = \"soft[:hard]\", got %T", d.Ulimit)
	}
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []*units.Ulimit
	for _, name := range names {
		var v string
		switch x := m[name].(type) {
		case string:
			v = x
		case int64:
			v = fmt.Sprint(x)
		default:
			return nil, fmt.Errorf("ulimit %q: want \"soft[:hard]\", got %v", name, m[name])
		}
		u, err := units.ParseUlimit(name + "=" + v)
		if err != nil {
			return nil, fmt.Errorf("ulimit %q: %w", name, err)
		}
		out = append(out, u)
	}
	return out, nil
}

// WaitForServices is how long a job waits for its services' ports before the script,
// from wait_for_services_timeout in seconds as GitLab Runner reads it: unset or 0 is
// DefaultWaitForServicesTimeout, -1 (any negative) is 0, no waiting.
func (d *Docker) WaitForServices() time.Duration {
	switch t := d.WaitForServicesTimeout; {
	case t == 0:
		return DefaultWaitForServicesTimeout
	case t < 0:
		return 0
	default:
		return time.Duration(t) * time.Second
	}
}

// UserAllowed reports whether the job's containers may run as user: allowed_users
// empty allows any, and "" (the image's own user) is always allowed, as in GitLab
// Runner.
func (d *Docker) UserAllowed(user string) bool {
	return user == "" || len(d.AllowedUsers) == 0 || slices.Contains(d.AllowedUsers, user)
}

// dockerContainers checks the [runners.docker] keys that shape the job's and the
// services' containers, so that a bad value fails at load time naming its key rather
// than every job at container create.
func (v *validator) dockerContainers(path string, d *Docker) {
	mem := map[string]int64{}
	for _, k := range []struct {
		key   string
		value string
		swap  bool
	}{
		{"memory", d.Memory, false}, {"memory_swap", d.MemorySwap, true}, {"memory_reservation", d.MemoryReservation, false},
		{"service_memory", d.ServiceMemory, false}, {"service_memory_swap", d.ServiceMemorySwap, true},
		{"service_memory_reservation", d.ServiceMemoryReservation, false},
	} {
		n, err := ParseMemory(k.value, k.swap)
		if err != nil {
			hint := sizeHint
			if k.swap {
				hint += `, or "-1" for unlimited swap`
			}
			v.errorf(path+"."+k.key, hint, "invalid %s %q: %v", k.key, k.value, err)
			continue
		}
		mem[k.key] = n
	}
	for _, prefix := range []string{"", "service_"} {
		m, swap, res := mem[prefix+"memory"], mem[prefix+"memory_swap"], mem[prefix+"memory_reservation"]
		if m > 0 && m < MinMemory {
			v.errorf(path+"."+prefix+"memory", `Docker's minimum memory limit is "6m"`, "%smemory = %d bytes is below Docker's minimum of 6 MiB",
				prefix, m)
		}
		if swap > 0 && m == 0 {
			v.errorf(path+"."+prefix+"memory_swap", "set "+prefix+"memory too: memory_swap is memory plus swap",
				"%smemory_swap needs %smemory", prefix, prefix)
		} else if swap > 0 && swap < m {
			v.errorf(path+"."+prefix+"memory_swap", "memory_swap is memory plus swap: make it at least "+prefix+"memory, or \"-1\" for unlimited swap",
				"%smemory_swap is below %smemory", prefix, prefix)
		}
		if m > 0 && res > m {
			v.errorf(path+"."+prefix+"memory_reservation", "the reservation is a soft limit below "+prefix+"memory",
				"%smemory_reservation is above %smemory", prefix, prefix)
		}
	}
	for _, k := range []struct{ key, value string }{{"cpus", d.CPUs}, {"service_cpus", d.ServiceCPUs}} {
		if _, err := ParseCPUs(k.value); err != nil {
			v.errorf(path+"."+k.key, `a number of CPUs such as "1.5" or "2"`, "invalid %s: %v", k.key, err)
		}
	}
	for _, k := range []struct {
		key    string
		shares int64
	}{{"cpu_shares", d.CPUShares}, {"service_cpu_shares", d.ServiceCPUShares}} {
		if k.shares < 0 {
			v.errorf(path+"."+k.key, "a relative CPU weight, e.g. 1024 (Docker's default); 0 for the default",
				"%s must not be negative, got %d", k.key, k.shares)
		}
	}
	if d.ShmSize < 0 {
		v.errorf(path+".shm_size", "the size of /dev/shm in bytes, e.g. 268435456 for 256 MiB; 0 for Docker's default (64 MiB)",
			"shm_size must not be negative, got %d", d.ShmSize)
	}
	for i, s := range d.Devices {
		if _, err := ParseDevice(s); err != nil {
			v.errorf(indexPath(path+".devices", i), `write "/dev/host_device[:/dev/container_device[:rwm]]", e.g. "/dev/net/tun" or "/dev/kvm:/dev/kvm:rw"`,
				"invalid device %v", err)
		}
	}
	for i, h := range d.ExtraHosts {
		name, ip, ok := strings.Cut(h, ":")
		if !ok {
			name, ip, ok = strings.Cut(h, "=")
		}
		ip = strings.TrimSuffix(strings.TrimPrefix(ip, "["), "]")
		if !ok || name == "" || (net.ParseIP(ip) == nil && ip != "host-gateway") {
			v.errorf(indexPath(path+".extra_hosts", i), `write "name:ip", e.g. "db.internal:10.0.0.5" or "host.docker.internal:host-gateway"`,
				"invalid extra host %q", h)
		}
	}
	for i, s := range d.DNS {
		if net.ParseIP(s) == nil {
			v.errorf(indexPath(path+".dns", i), `an IP address of a DNS server, e.g. "1.1.1.1"`, "invalid dns server %q", s)
		}
	}
	for _, t := range []struct {
		key string
		m   map[string]string
	}{{"tmpfs", d.Tmpfs}, {"services_tmpfs", d.ServicesTmpfs}} {
		for _, p := range sortedKeys(t.m) {
			if !strings.HasPrefix(p, "/") {
				v.errorf(path+"."+t.key, `key each mount by its absolute path in the container, e.g. "/var/lib/mysql" = "rw,noexec"`,
					"%s mount point %q is not an absolute path", t.key, p)
			}
		}
	}
	if _, err := d.Ulimits(); err != nil {
		v.errorf(path+".ulimit", `write name = "soft[:hard]", e.g. nofile = "1024:2048"`, "invalid %v", err)
	}
	if d.OOMScoreAdjust < -1000 || d.OOMScoreAdjust > 1000 {
		v.errorf(path+".oom_score_adjust", "from -1000 (never killed first) to 1000 (killed first)",
			"oom_score_adjust = %d is out of range", d.OOMScoreAdjust)
	}
	if d.WaitForServicesTimeout < -1 {
		v.errorf(path+".wait_for_services_timeout", "seconds to wait for services; 0 for the default (30), -1 not to wait",
			"wait_for_services_timeout must be -1 or more, got %d", d.WaitForServicesTimeout)
	}
	if !d.UserAllowed(d.User) {
		v.errorf(path+".user", "add it to allowed_users or pick one of "+strings.Join(d.AllowedUsers, ", "),
			"user %q is not in allowed_users", d.User)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
