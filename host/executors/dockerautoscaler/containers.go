package dockerautoscaler

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"

	"github.com/flotilla-ci/flotilla/host/config"
)

// ContainerOptions are the [runners.docker] settings of the job's containers, in
// Docker's units, with GitLab Runner's meaning: each key sets the HostConfig field of
// the same name. Every container of the job gets them: the script steps, the source
// copy, pre/post_get_sources_script, and the cache and artifact transfers.
type ContainerOptions struct {
	CapAdd, CapDrop []string
	Devices         []container.DeviceMapping
	// DNS and DNSSearch are the containers' resolvers and search domains; ExtraHosts
	// are "name:ip" lines added to /etc/hosts.
	DNS                   []netip.Addr
	DNSSearch, ExtraHosts []string
	// Memory, MemorySwap (-1 = unlimited swap) and MemoryReservation are bytes;
	// NanoCPUs is CPUs × 10⁹.
	Memory, MemorySwap, MemoryReservation int64
	NanoCPUs                              int64
	CPUSetCPUs, CPUSetMems                string
	CPUShares                             int64
	// ShmSize is the size of /dev/shm in bytes (0 = Docker's 64 MiB).
	ShmSize     int64
	SecurityOpt []string
	// Sysctls are namespaced kernel parameters; Tmpfs mounts tmpfs file systems (path →
	// mount options).
	Sysctls, Tmpfs map[string]string
	OOMKillDisable bool
	// OOMScoreAdj is oom_score_adjust: how readily the kernel kills the job first.
	OOMScoreAdj int
	GroupAdd    []string
	// Runtime is the OCI runtime (e.g. sysbox-runc); Hostname the containers' host
	// name (Docker's default, the container ID, when empty); UsernsMode "host" leaves
	// user-namespace remapping.
	Runtime, Hostname, UsernsMode string
	Ulimits                       []*container.Ulimit
}

// ServiceOptions are the settings of the service containers that differ from the job's:
// GitLab Runner gives services the job's dns, dns_search, extra_hosts, runtime,
// userns_mode and shm_size, but their own limits (service_memory, service_cpus, …),
// services_tmpfs and services_privileged, and none of cap_add, devices, sysctls or
// the job's memory and cpus.
type ServiceOptions struct {
	Memory, MemorySwap, MemoryReservation int64
	NanoCPUs, CPUShares                   int64
	CPUSetCPUs                            string
	Tmpfs                                 map[string]string
	// Privileged is services_privileged; nil follows privileged.
	Privileged *bool
}

// optionsFromConfig converts [runners.docker] into the options of the job's and the
// services' containers. The values were checked when the configuration was loaded, so
// an error here means a Runner that did not come from config.Load.
func optionsFromConfig(d *config.Docker) (ContainerOptions, ServiceOptions, error) {
	var errs []error
	mem := func(key, s string, swap bool) int64 {
		n, err := config.ParseMemory(s, swap)
		if err != nil {
			errs = append(errs, fmt.Errorf("[runners.docker] %s: %w", key, err))
		}
		return n
	}
	cpus := func(key, s string) int64 {
		n, err := config.ParseCPUs(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("[runners.docker] %s: %w", key, err))
		}
		return n
	}
	c := ContainerOptions{
		CapAdd: d.CapAdd, CapDrop: d.CapDrop,
		ExtraHosts:        d.ExtraHosts,
		Memory:            mem("memory", d.Memory, false),
		MemorySwap:        mem("memory_swap", d.MemorySwap, true),
		MemoryReservation: mem("memory_reservation", d.MemoryReservation, false),
		NanoCPUs:          cpus("cpus", d.CPUs),
		CPUSetCPUs:        d.CPUSetCPUs, CPUSetMems: d.CPUSetMems, CPUShares: d.CPUShares,
		ShmSize: d.ShmSize, SecurityOpt: d.SecurityOpt,
		Sysctls: maps.Clone(d.Sysctls), Tmpfs: maps.Clone(d.Tmpfs),
		OOMKillDisable: d.OOMKillDisable, OOMScoreAdj: d.OOMScoreAdjust, GroupAdd: d.GroupAdd,
		Runtime: d.Runtime, Hostname: d.Hostname, UsernsMode: d.UsernsMode,
	}
	// GitLab's own example has dns_search = [""]: an empty domain means none.
	c.DNSSearch = slices.DeleteFunc(slices.Clone(d.DNSSearch), func(s string) bool { return s == "" })
	for _, s := range d.DNS {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("[runners.docker] dns: %w", err))
			continue
		}
		c.DNS = append(c.DNS, ip)
	}
	for _, s := range d.Devices {
		dev, err := config.ParseDevice(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("[runners.docker] devices: %w", err))
			continue
		}
		c.Devices = append(c.Devices, container.DeviceMapping{PathOnHost: dev.PathOnHost, PathInContainer: dev.PathInContainer,
			CgroupPermissions: dev.CgroupPermissions})
	}
	ulimits, err := d.Ulimits()
	if err != nil {
		errs = append(errs, fmt.Errorf("[runners.docker] %w", err))
	}
	c.Ulimits = ulimits
	s := ServiceOptions{
		Memory:            mem("service_memory", d.ServiceMemory, false),
		MemorySwap:        mem("service_memory_swap", d.ServiceMemorySwap, true),
		MemoryReservation: mem("service_memory_reservation", d.ServiceMemoryReservation, false),
		NanoCPUs:          cpus("service_cpus", d.ServiceCPUs),
		CPUShares:         d.ServiceCPUShares, CPUSetCPUs: d.ServiceCPUSetCPUs,
		Tmpfs: maps.Clone(d.ServicesTmpfs), Privileged: d.ServicesPrivileged,
	}
	if len(errs) > 0 {
		return ContainerOptions{}, ServiceOptions{}, errors.Join(errs...)
	}
	return c, s, nil
}

// jobHostConfig is the HostConfig of every container of the job but the services.
func (e *Env) jobHostConfig() *container.HostConfig {
	c := e.opts.Container
	var oomKillDisable *bool
	if c.OOMKillDisable {
		oomKillDisable = &c.OOMKillDisable
	}
	h := &container.HostConfig{
		Binds:      append([]string{e.volume + ":" + e.paths.BuildsDir}, e.opts.Volumes...),
		Privileged: e.opts.Privileged,
		Resources: container.Resources{
			Memory: c.Memory, MemorySwap: c.MemorySwap, MemoryReservation: c.MemoryReservation,
			NanoCPUs: c.NanoCPUs, CpusetCpus: c.CPUSetCPUs, CpusetMems: c.CPUSetMems, CPUShares: c.CPUShares,
			Devices: c.Devices, OomKillDisable: oomKillDisable, Ulimits: c.Ulimits,
		},
		CapAdd: c.CapAdd, CapDrop: c.CapDrop,
		DNS: c.DNS, DNSSearch: c.DNSSearch, ExtraHosts: c.ExtraHosts,
		ShmSize: c.ShmSize, SecurityOpt: c.SecurityOpt, Sysctls: c.Sysctls, Tmpfs: c.Tmpfs,
		OomScoreAdj: c.OOMScoreAdj, GroupAdd: c.GroupAdd, Runtime: c.Runtime, UsernsMode: container.UsernsMode(c.UsernsMode),
		NetworkMode: container.NetworkMode(e.networkMode),
	}
	if !h.NetworkMode.IsUserDefined() {
		h.Links = e.links // legacy links of the default bridge
	}
	return h
}

// jobNetworking gives the job's containers their links to the services on a
// user-defined network_mode, where Docker takes them per network.
func (e *Env) jobNetworking() *network.NetworkingConfig {
	if len(e.links) == 0 || !container.NetworkMode(e.networkMode).IsUserDefined() {
		return nil
	}
	return &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{e.networkMode: {Links: e.links}}}
}

// userAllowed refuses a job whose containers would run as a user outside
// allowed_users, as GitLab Runner does.
func (e *Env) userAllowed() error {
	u := e.user()
	if u == "" || len(e.opts.AllowedUsers) == 0 || slices.Contains(e.opts.AllowedUsers, u) {
		return nil
	}
	return fmt.Errorf("user %q is not an allowed user: [runners.docker] allowed_users is %s", u, strings.Join(e.opts.AllowedUsers, ", "))
}

// user is who the job's containers run as: the job's image:docker:user, else
// [runners.docker] user ("" = the image's own user).
func (e *Env) user() string {
	if e.job.Image.User != "" {
		return e.job.Image.User
	}
	return e.opts.User
}

// serviceHostConfig is the HostConfig of a service container.
func (e *Env) serviceHostConfig() *container.HostConfig {
	c, s := e.opts.Container, e.opts.Service
	privileged := e.opts.Privileged
	if s.Privileged != nil {
		privileged = *s.Privileged
	}
	return &container.HostConfig{
		NetworkMode: container.NetworkMode(e.networkMode),
		Privileged:  privileged,
		Resources: container.Resources{
			Memory: s.Memory, MemorySwap: s.MemorySwap, MemoryReservation: s.MemoryReservation,
			NanoCPUs: s.NanoCPUs, CpusetCpus: s.CPUSetCPUs, CPUShares: s.CPUShares,
		},
		DNS: c.DNS, DNSSearch: c.DNSSearch, ExtraHosts: c.ExtraHosts,
		Runtime: c.Runtime, UsernsMode: container.UsernsMode(c.UsernsMode), ShmSize: c.ShmSize,
		Tmpfs: s.Tmpfs,
	}
}
