package dockerautoscaler

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/dockertest"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// inspectingEnv records how the job's containers were made before Cleanup removes them.
type inspectingEnv struct {
	*Env
	local     *client.Client
	inspected []container.InspectResponse
}

func (e *inspectingEnv) Cleanup(ctx context.Context) error {
	e.mu.Lock()
	ids := slices.Clone(e.containers)
	e.mu.Unlock()
	for _, id := range ids {
		if res, err := e.local.ContainerInspect(ctx, id, client.ContainerInspectOptions{}); err == nil {
			e.inspected = append(e.inspected, res.Container)
		}
	}
	return e.Env.Cleanup(ctx)
}

// runInspected runs job and returns the result, the log and the job's containers as
// Docker made them (the script steps' and the services').
func runInspected(t *testing.T, local, cli *client.Client, job *jobs.Job, o Options) (executors.Result, string, []container.InspectResponse) {
	t.Helper()
	env, err := New(cli, job, o)
	if err != nil {
		t.Fatal(err)
	}
	ie := &inspectingEnv{Env: env, local: local}
	var log bytes.Buffer
	res := executors.Run(context.Background(), job, ie, &log, executors.RunOptions{Executor: "docker-autoscaler"})
	assertNothingLeft(t, local, job.ID)
	return res, log.String(), ie.inspected
}

// scriptContainer is the container that ran the job's script: the last one started
// with sh -s.
func scriptContainer(t *testing.T, cs []container.InspectResponse) container.InspectResponse {
	t.Helper()
	for i := len(cs) - 1; i >= 0; i-- {
		if c := cs[i]; c.Config != nil && slices.Equal(c.Config.Cmd, []string{"sh", "-s"}) {
			return c
		}
	}
	t.Fatalf("no script container among %d", len(cs))
	return container.InspectResponse{}
}

// TestContainerSettings: each group of [runners.docker] keys reaches the job's
// containers: the script sees it from inside (capabilities, resolv.conf, hosts, cgroup
// limits, mounts, sysctls, user) and Docker reports it in the HostConfig.
func TestContainerSettings(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	base := Options{Image: dockertest.Image, PullPolicy: []string{PullNever}}
	// A cgroup file of v2, else of v1 (the machines the tests run on may have either).
	cgroup := func(v2, v1 string) string {
		return "cat /sys/fs/cgroup/" + v2 + " 2>/dev/null || cat /sys/fs/cgroup/" + v1
	}
	tests := []struct {
		name    string
		opts    func(*Options)
		vars    jobs.Variables
		script  []string
		wantLog []string
		check   func(t *testing.T, c container.InspectResponse)
	}{
		{"cap_add and cap_drop",
			func(o *Options) { o.Container.CapAdd, o.Container.CapDrop = []string{"NET_ADMIN"}, []string{"CHOWN"} },
			nil,
			[]string{`caps=$(grep CapEff /proc/self/status | awk '{print $2}')`, `echo "net_admin=$(( (0x$caps >> 12) & 1 )) chown=$(( 0x$caps & 1 ))"`},
			[]string{"net_admin=1 chown=0"},
			func(t *testing.T, c container.InspectResponse) {
				if !slices.Equal(c.HostConfig.CapAdd, []string{"CAP_NET_ADMIN"}) || !slices.Equal(c.HostConfig.CapDrop, []string{"CAP_CHOWN"}) {
					t.Errorf("caps %v %v", c.HostConfig.CapAdd, c.HostConfig.CapDrop)
				}
			}},
		{"dns, dns_search and extra_hosts",
			func(o *Options) {
				o.Container.DNS = []netip.Addr{netip.MustParseAddr("192.0.2.53")}
				o.Container.DNSSearch = []string{"example.test"}
				o.Container.ExtraHosts = []string{"db.internal:192.0.2.10"}
			},
			nil,
			[]string{"cat /etc/resolv.conf", `echo "hosts=$(grep -c "^192.0.2.10[[:space:]]*db.internal" /etc/hosts)"`},
			[]string{"nameserver 192.0.2.53", "search example.test", "hosts=1"},
			nil},
		{"memory, memory_swap, memory_reservation, cpus, cpu_shares, cpuset_cpus",
			func(o *Options) {
				o.Container.Memory, o.Container.MemorySwap, o.Container.MemoryReservation = 512<<20, 1<<30, 256<<20
				o.Container.NanoCPUs, o.Container.CPUShares, o.Container.CPUSetCPUs = 1_500_000_000, 512, "0"
			},
			nil,
			[]string{`echo "memory=$(` + cgroup("memory.max", "memory/memory.limit_in_bytes") + `)"`,
				`echo "quota=$(` + cgroup("cpu.max", "cpu/cpu.cfs_quota_us") + `)"`},
			[]string{"memory=536870912", "quota=150000"},
			func(t *testing.T, c container.InspectResponse) {
				r := c.HostConfig.Resources
				if r.Memory != 512<<20 || r.MemorySwap != 1<<30 || r.MemoryReservation != 256<<20 || r.NanoCPUs != 1_500_000_000 ||
					r.CPUShares != 512 || r.CpusetCpus != "0" {
					t.Errorf("resources %+v", r)
				}
			}},
		{"shm_size and tmpfs",
			func(o *Options) {
				o.Container.ShmSize = 128 << 20
				o.Container.Tmpfs = map[string]string{"/scratch": "rw,size=64m"}
			},
			nil,
			[]string{"/bin/busybox df -k /dev/shm", "grep ' /scratch ' /proc/mounts"},
			[]string{"131072", "tmpfs /scratch tmpfs rw", "size=65536k"},
			nil},
		{"sysctls and security_opt",
			func(o *Options) {
				o.Container.Sysctls = map[string]string{"net.ipv4.ip_unprivileged_port_start": "80"}
				o.Container.SecurityOpt = []string{"no-new-privileges"}
			},
			nil,
			[]string{`echo "port_start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)"`, "grep NoNewPrivs /proc/self/status"},
			[]string{"port_start=80", "NoNewPrivs:\t1"},
			nil},
		{"user owns the project and temporary directories",
			func(o *Options) { o.User, o.AllowedUsers = "1000:1000", []string{"1000:1000"} },
			jobs.Variables{{Key: "KEY_FILE", Value: "secret", File: true}},
			[]string{`echo "uid=$(id -u)"`, `echo x > written && echo "wrote=$(cat written)"`, `cat "$KEY_FILE" && echo " read-file-variable"`},
			[]string{"uid=1000", "wrote=x", "secret read-file-variable"},
			func(t *testing.T, c container.InspectResponse) {
				if c.Config.User != "1000:1000" {
					t.Errorf("user %q", c.Config.User)
				}
			}},
		{"hostname, group_add, ulimit, devices, oom_kill_disable, oom_score_adjust, runtime, userns_mode",
			func(o *Options) {
				o.Container.Hostname, o.Container.GroupAdd = "build-host", []string{"4242"}
				o.Container.Ulimits = []*container.Ulimit{{Name: "nofile", Soft: 1024, Hard: 2048}}
				o.Container.Devices = []container.DeviceMapping{{PathOnHost: "/dev/null", PathInContainer: "/dev/flotilla-null", CgroupPermissions: "rwm"}}
				o.Container.OOMKillDisable, o.Container.Runtime, o.Container.UsernsMode = true, "io.containerd.runc.v2", "host"
				o.Container.Memory, o.Container.OOMScoreAdj = 64<<20, 500
			},
			nil,
			[]string{`echo "host=$(hostname) groups=$(id -G) nofile=$(ulimit -n) oom=$(cat /proc/self/oom_score_adj)"`, `echo "device=$(test -c /dev/flotilla-null && echo char)"`},
			[]string{"host=build-host", " 4242 nofile=1024 oom=500", "device=char"},
			func(t *testing.T, c container.InspectResponse) {
				h := c.HostConfig
				if h.OomKillDisable == nil || !*h.OomKillDisable || h.Runtime != "io.containerd.runc.v2" || h.UsernsMode != "host" {
					t.Errorf("oom_kill_disable %v runtime %q userns_mode %q", h.OomKillDisable, h.Runtime, h.UsernsMode)
				}
			}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			tt.opts(&o)
			job := jobs.Job{ID: "settings-" + string(rune('a'+i)), Script: tt.script, Variables: tt.vars,
				Source: jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
			res, log, cs := runInspected(t, local, cli, &job, o)
			if res.Status != executors.StatusSuccess {
				t.Fatalf("result %+v\n%s", res, log)
			}
			for _, w := range tt.wantLog {
				if !strings.Contains(log, w) {
					t.Errorf("log lacks %q:\n%s", w, log)
				}
			}
			if tt.check != nil {
				tt.check(t, scriptContainer(t, cs))
			}
		})
	}
}

// TestServiceContainerSettings: services get what GitLab Runner gives them of
// [runners.docker] (dns, extra_hosts, shm_size, runtime, their own service_* limits,
// services_tmpfs) and not the job's own (cap_add, memory, tmpfs).
func TestServiceContainerSettings(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	o := Options{Image: dockertest.Image, PullPolicy: []string{PullNever},
		Container: ContainerOptions{CapAdd: []string{"NET_ADMIN"}, Memory: 512 << 20, Tmpfs: map[string]string{"/scratch": "rw"},
			DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53")}, ExtraHosts: []string{"db.internal:192.0.2.10"}, ShmSize: 32 << 20,
			Runtime: "io.containerd.runc.v2"},
		Service: ServiceOptions{Memory: 256 << 20, NanoCPUs: 500_000_000, Tmpfs: map[string]string{"/var/lib/db": "rw"}}}
	job := jobs.Job{ID: "svc-settings", Script: []string{"true"}, Source: jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()},
		Services: []jobs.Image{{Name: dockertest.Image, Command: []string{"sleep", "60"}}}}
	res, log, cs := runInspected(t, local, cli, &job, o)
	if res.Status != executors.StatusSuccess {
		t.Fatalf("result %+v\n%s", res, log)
	}
	var svc *container.InspectResponse
	for i := range cs {
		if strings.Contains(cs[i].Name, "-svc-") {
			svc = &cs[i]
		}
	}
	if svc == nil {
		t.Fatalf("no service container among %d", len(cs))
	}
	h := svc.HostConfig
	if !slices.Equal(h.DNS, o.Container.DNS) || !slices.Equal(h.ExtraHosts, o.Container.ExtraHosts) || h.ShmSize != 32<<20 ||
		h.Runtime != "io.containerd.runc.v2" {
		t.Errorf("shared settings: dns %v extra_hosts %v shm_size %d runtime %q", h.DNS, h.ExtraHosts, h.ShmSize, h.Runtime)
	}
	if h.Memory != 256<<20 || h.NanoCPUs != 500_000_000 || len(h.Tmpfs) != 1 || h.Tmpfs["/var/lib/db"] != "rw" {
		t.Errorf("service settings: memory %d cpus %d tmpfs %v", h.Memory, h.NanoCPUs, h.Tmpfs)
	}
	if len(h.CapAdd) != 0 {
		t.Errorf("job's cap_add on the service: %v", h.CapAdd)
	}
	if job := scriptContainer(t, cs).HostConfig; job.Memory != 512<<20 || job.Tmpfs["/scratch"] != "rw" {
		t.Errorf("job container: memory %d tmpfs %v", job.Memory, job.Tmpfs)
	}
}

// TestServicesPrivileged: services_privileged, when set, overrides privileged for the
// services alone. (Privileged containers cannot start where the tests run, so this
// checks the HostConfig made.)
func TestServicesPrivileged(t *testing.T) {
	yes, no := true, false
	for _, tt := range []struct {
		privileged bool
		services   *bool
		want       bool
	}{{true, nil, true}, {false, nil, false}, {true, &no, false}, {false, &yes, true}} {
		e := &Env{opts: Options{Privileged: tt.privileged, Service: ServiceOptions{Privileged: tt.services}}}
		if got := e.serviceHostConfig().Privileged; got != tt.want {
			t.Errorf("privileged %v, services_privileged %v: service privileged %v, want %v", tt.privileged, tt.services, got, tt.want)
		}
	}
}

// TestUserNotAllowed: a job whose containers would run as a user outside allowed_users
// fails before any container is made.
// TestJobUser: a job's image:docker:user wins over [runners.docker] user, within
// allowed_users; a user outside it fails the job as the job's own doing
// (script_failure, not retried on another instance) before any container is made.
func TestJobUser(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	tests := []struct {
		name, config, job string
		allowed           []string
		want              string // in the log; "" = refused
	}{
		{"runner's user", "65534", "", nil, "uid=65534"},
		{"the job's wins", "65534", "1000:1000", []string{"1000:1000", "65534"}, "uid=1000"},
		{"runner's user not allowed", "root", "", []string{"1000", "build"}, ""},
		{"job's user not allowed", "65534", "0", []string{"65534"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := jobs.Job{ID: "user", Script: []string{"id"}, Image: jobs.Image{User: tt.job},
				Source: jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
			res, log, cs := runInspected(t, local, cli, &job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever},
				User: tt.config, AllowedUsers: tt.allowed})
			if tt.want != "" {
				if res.Status != executors.StatusSuccess || !strings.Contains(log, tt.want) {
					t.Fatalf("result %+v\n%s", res, log)
				}
				return
			}
			if res.Status != executors.StatusFailed || res.FailureReason != executors.ScriptFailure ||
				!strings.Contains(log, "is not an allowed user") || strings.Contains(log, "uid=") {
				t.Fatalf("result %+v\n%s", res, log)
			}
			if len(cs) != 0 {
				t.Errorf("%d containers made", len(cs))
			}
		})
	}
}

// TestNetworkMode: with network_mode the job's containers and its services join that
// network and no network of the job's own is made; the job still reaches each service
// by its alias: on a user-defined network its own service, not another job's of the
// same alias (a decoy that Docker's DNS would give every other time without links),
// and on the default bridge by legacy links.
func TestNetworkMode(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	ctx := context.Background()
	shared := "flotilla-test-shared-" + strings.ToLower(t.Name())
	if _, err := local.NetworkCreate(ctx, shared, client.NetworkCreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { local.NetworkRemove(context.Background(), shared, client.NetworkRemoveOptions{}) })
	decoy, err := local.ContainerCreate(ctx, client.ContainerCreateOptions{
		Config:           &container.Config{Image: dockertest.Image, Cmd: []string{"sh", "-c", "mkdir -p /srv && echo decoy-of-another-job > /srv/index.html && exec httpd -f -p 8080 -h /srv"}},
		HostConfig:       &container.HostConfig{NetworkMode: container.NetworkMode(shared)},
		NetworkingConfig: &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{shared: {Aliases: []string{"web"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		local.ContainerRemove(context.Background(), decoy.ID, client.ContainerRemoveOptions{Force: true})
	})
	if _, err := local.ContainerStart(ctx, decoy.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := jobs.Image{Name: dockertest.Image, Alias: "web",
		Command: []string{"sh", "-c", `mkdir -p /srv && echo "served by $CI_JOB_ID" > /srv/index.html && exec httpd -f -p 8080 -h /srv`}}
	// Wait for the service, then ask it a dozen times.
	fetch := `for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://web:8080/ >/dev/null && break; sleep 0.3; done
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do wget -qO- http://web:8080/; done`
	for _, mode := range []string{shared, "bridge"} {
		t.Run(mode, func(t *testing.T) {
			job := jobs.Job{ID: "netmode-" + mode, Services: []jobs.Image{svc}, Script: []string{fetch},
				Variables: jobs.Variables{{Key: "CI_JOB_ID", Value: "netmode-" + mode}},
				Source:    jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
			res, log, cs := runInspected(t, local, cli, &job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever}, NetworkMode: mode})
			if res.Status != executors.StatusSuccess || strings.Count(log, "served by netmode-"+mode) != 12 || strings.Contains(log, "decoy") {
				t.Fatalf("result %+v\n%s", res, log)
			}
			for _, c := range cs {
				if string(c.HostConfig.NetworkMode) != mode {
					t.Errorf("container %s on network %q, want %q", c.Name, c.HostConfig.NetworkMode, mode)
				}
			}
			nets, err := local.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("label", LabelJob+"="+job.ID)})
			if err != nil || len(nets.Items) != 0 {
				t.Errorf("networks made for the job: %d (%v)", len(nets.Items), err)
			}
		})
	}
}

// exposingImage is the test image with EXPOSE 8080, as a service image that declares
// its port: what wait_for_services_timeout waits for.
func exposingImage(t *testing.T, local *client.Client) string {
	t.Helper()
	const name = "flotilla-test/busybox-web:1"
	ctx := context.Background()
	if _, err := local.ImageInspect(ctx, name); err == nil {
		return name
	}
	c, err := local.ContainerCreate(ctx, client.ContainerCreateOptions{Config: &container.Config{Image: dockertest.Image, Cmd: []string{"true"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer local.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true})
	if _, err := local.ContainerCommit(ctx, c.ID, client.ContainerCommitOptions{Reference: name, Changes: []string{"EXPOSE 8080/tcp"}}); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestWaitForServices: the job waits for a slow service's exposed port before its
// script (whose one request would otherwise come too early), and a service that never
// listens is a warning naming it and its port once the timeout passes, not a failure.
func TestWaitForServices(t *testing.T) {
	local, cli, conn := dockerOverTunnelConn(t)
	img := exposingImage(t, local)
	serve := `sleep 2; mkdir -p /srv && echo service-ready > /srv/index.html && exec httpd -f -p 8080 -h /srv`
	tests := []struct {
		name     string
		command  string
		timeout  time.Duration
		script   string
		wantLog  []string
		avoidLog string
	}{
		{"slow service is waited for", serve, 30 * time.Second, "wget -qO- http://web:8080/",
			[]string{"Waiting for services to be up and running (timeout 30s)", "service-ready"}, "WARNING"},
		{"silent service is a warning", "exec sleep 60", time.Second, `echo "script $((1+1))"`,
			[]string{"WARNING: service " + img + " (flotilla-test__busybox-web) probably didn't start properly", "port 8080/tcp within 1s", "script 2"}, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job := jobs.Job{ID: "wait-" + string(rune('a'+i)), Script: []string{tt.script},
				Services: []jobs.Image{{Name: img, Alias: "web", Command: []string{"sh", "-c", tt.command}}},
				Source:   jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
			res, log, _ := runInspected(t, local, cli, &job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever},
				WaitForServices: tt.timeout, Dial: conn.Dial})
			if res.Status != executors.StatusSuccess {
				t.Fatalf("result %+v\n%s", res, log)
			}
			for _, w := range tt.wantLog {
				if !strings.Contains(log, w) {
					t.Errorf("log lacks %q:\n%s", w, log)
				}
			}
			if tt.avoidLog != "" && strings.Contains(log, tt.avoidLog) {
				t.Errorf("log has %q:\n%s", tt.avoidLog, log)
			}
		})
	}
}

// TestOptionsFromConfig: kind.go's path from config.toml text to the containers'
// options, GitLab's defaults included.
func TestOptionsFromConfig(t *testing.T) {
	cfg, _, err := config.Parse("c.toml", []byte(`
[[runners]]
  executor = "docker-autoscaler"
  [runners.autoscaler]
    plugin = "local"
  [runners.docker]
    memory = "1g"
    memory_swap = "-1"
    cpus = "0.5"
    shm_size = 1048576
    devices = ["/dev/net/tun", "/dev/kvm:/dev/vm:rw"]
    dns = ["192.0.2.53"]
    dns_search = [""]
    service_memory = "256m"
    services_privileged = false
    [runners.docker.ulimit]
      nofile = "1024:2048"
    [runners.docker.services_tmpfs]
      "/var/lib/db" = "rw"
`))
	if err != nil {
		t.Fatal(err)
	}
	d := &cfg.Runners[0].Docker
	c, s, err := optionsFromConfig(d)
	if err != nil {
		t.Fatal(err)
	}
	if c.Memory != 1<<30 || c.MemorySwap != -1 || c.NanoCPUs != 500_000_000 || c.ShmSize != 1<<20 || len(c.DNSSearch) != 0 ||
		!slices.Equal(c.DNS, []netip.Addr{netip.MustParseAddr("192.0.2.53")}) || len(c.Ulimits) != 1 || c.Ulimits[0].Hard != 2048 {
		t.Errorf("container options %+v", c)
	}
	wantDev := []container.DeviceMapping{{PathOnHost: "/dev/net/tun", PathInContainer: "/dev/net/tun", CgroupPermissions: "rwm"},
		{PathOnHost: "/dev/kvm", PathInContainer: "/dev/vm", CgroupPermissions: "rw"}}
	if !slices.Equal(c.Devices, wantDev) {
		t.Errorf("devices %+v", c.Devices)
	}
	if s.Memory != 256<<20 || s.Privileged == nil || *s.Privileged || s.Tmpfs["/var/lib/db"] != "rw" {
		t.Errorf("service options %+v", s)
	}
	if got := d.WaitForServices(); got != 30*time.Second {
		t.Errorf("default wait_for_services_timeout = %s", got)
	}
}

// dockerOverTunnelConn is dockerOverTunnel that also returns the SSH connection, whose
// Dial reaches addresses as the instance sees them.
func dockerOverTunnelConn(t *testing.T) (local, cli *client.Client, conn *connector.Client) {
	t.Helper()
	local = dockertest.Client(t)
	dockertest.EnsureImage(t, local)
	conn = tunnel(t)
	cli, err := NewClient(conn, "")
	if err != nil {
		t.Fatal(err)
	}
	return local, cli, conn
}
