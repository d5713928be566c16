package config

import (
	"testing"
	"time"
)

// TestDockerContainerKeys: the [runners.docker] keys that shape containers are checked
// at load time, each bad value an error naming its key with a hint.
func TestDockerContainerKeys(t *testing.T) {
	docker := okRunner + "  [runners.docker]\n"
	tests := []struct {
		name string
		doc  string
		want []want
	}{
		{"valid values", docker + `    memory = "512m"
    memory_swap = "1g"
    memory_reservation = "256m"
    cpus = "1.5"
    cpu_shares = 512
    shm_size = 268435456
    devices = ["/dev/net/tun", "/dev/kvm:/dev/kvm:rw"]
    extra_hosts = ["db.internal:10.0.0.5", "v6:::1", "gw:host-gateway"]
    dns = ["192.0.2.53", "2001:db8::53"]
    user = "1000"
    allowed_users = ["1000", "build"]
    wait_for_services_timeout = -1
    service_memory = "1g"
    service_memory_swap = "-1"
    service_cpus = "0.5"
    [runners.docker.tmpfs]
      "/scratch" = "rw,size=64m"
    [runners.docker.services_tmpfs]
      "/var/lib/mysql" = "rw,noexec"
    [runners.docker.sysctls]
      "net.ipv4.ip_forward" = "1"
    [runners.docker.ulimit]
      nofile = "1024:2048"
      rtprio = 99
`, nil},
		{"unknown size unit", docker + "    memory = \"12q\"\n",
			[]want{{"error 7:5 runners[0].docker.memory", `invalid memory "12q"`, `"512m"`}}},
		{"memory below Docker's minimum", docker + "    memory = \"1k\"\n",
			[]want{{"error 7:5 runners[0].docker.memory", "below Docker's minimum", `"6m"`}}},
		{"memory_swap without memory", docker + "    memory_swap = \"1g\"\n",
			[]want{{"error 7:5 runners[0].docker.memory_swap", "memory_swap needs memory", "set memory too"}}},
		{"memory_swap below memory", docker + "    memory = \"1g\"\n    memory_swap = \"512m\"\n",
			[]want{{"error 8:5 runners[0].docker.memory_swap", "below memory", `"-1"`}}},
		{"unlimited swap", docker + "    memory = \"1g\"\n    memory_swap = \"-1\"\n", nil},
		{"negative memory", docker + "    memory_reservation = \"-1\"\n",
			[]want{{"error 7:5 runners[0].docker.memory_reservation", "invalid memory_reservation", "size"}}},
		{"reservation above memory", docker + "    memory = \"64m\"\n    memory_reservation = \"1g\"\n",
			[]want{{"error 8:5 runners[0].docker.memory_reservation", "above memory", "soft limit"}}},
		{"service_memory", docker + "    service_memory = \"lots\"\n",
			[]want{{"error 7:5 runners[0].docker.service_memory", `invalid service_memory "lots"`, "size"}}},
		{"cpus not a number", docker + "    cpus = \"x\"\n",
			[]want{{"error 7:5 runners[0].docker.cpus", `invalid cpus: "x" is not a number`, `"1.5"`}}},
		{"cpus zero", docker + "    cpus = \"0\"\n",
			[]want{{"error 7:5 runners[0].docker.cpus", "not a positive number", ""}}},
		{"cpus too precise", docker + "    service_cpus = \"0.0000000001\"\n",
			[]want{{"error 7:5 runners[0].docker.service_cpus", "more precise than a billionth", ""}}},
		{"negative cpu_shares", docker + "    cpu_shares = -5\n",
			[]want{{"error 7:5 runners[0].docker.cpu_shares", "must not be negative", "1024"}}},
		{"negative shm_size", docker + "    shm_size = -1\n",
			[]want{{"error 7:5 runners[0].docker.shm_size", "must not be negative", "bytes"}}},
		{"devices", docker + "    devices = [\"tun\", \"/dev/a:/dev/b:rwx\", \"/dev/a:/dev/b:rw:x\", \"/dev/a:b\"]\n",
			[]want{{"error 7:16 runners[0].docker.devices[0]", `"tun": the device on the instance must be an absolute path`, "/dev/net/tun"},
				{"error 7:23 runners[0].docker.devices[1]", `permissions "rwx"`, ""},
				{"error 7:44 runners[0].docker.devices[2]", "too many colons", ""},
				{"error 7:66 runners[0].docker.devices[3]", "path in the container must be absolute", ""}}},
		{"extra_hosts", docker + "    extra_hosts = [\"nohost\", \"a:not-an-ip\"]\n",
			[]want{{"error 7:20 runners[0].docker.extra_hosts[0]", `invalid extra host "nohost"`, "name:ip"},
				{"error 7:30 runners[0].docker.extra_hosts[1]", `invalid extra host "a:not-an-ip"`, ""}}},
		{"dns", docker + "    dns = [\"dns.example\"]\n",
			[]want{{"error 7:12 runners[0].docker.dns[0]", `invalid dns server "dns.example"`, "IP address"}}},
		{"tmpfs relative path", docker + "    tmpfs = {\"scratch\" = \"rw\"}\n",
			[]want{{"error 7:5 runners[0].docker.tmpfs", `tmpfs mount point "scratch" is not an absolute path`, "absolute path"}}},
		{"services_tmpfs relative path", docker + "    [runners.docker.services_tmpfs]\n      \"db\" = \"rw\"\n",
			[]want{{"error 7:21 runners[0].docker.services_tmpfs", `services_tmpfs mount point "db"`, ""}}},
		{"ulimit", docker + "    [runners.docker.ulimit]\n      nofile = \"many\"\n",
			[]want{{"error 7:21 runners[0].docker.ulimit", `invalid ulimit "nofile"`, "1024:2048"}}},
		{"wait_for_services_timeout below -1", docker + "    wait_for_services_timeout = -2\n",
			[]want{{"error 7:5 runners[0].docker.wait_for_services_timeout", "must be -1 or more", "-1 not to wait"}}},
		{"oom_score_adjust", docker + "    oom_score_adjust = 1001\n",
			[]want{{"error 7:5 runners[0].docker.oom_score_adjust", "out of range", "-1000"}}},
		{"user not allowed", docker + "    user = \"root\"\n    allowed_users = [\"build\", \"1000\"]\n",
			[]want{{"error 7:5 runners[0].docker.user", `user "root" is not in allowed_users`, "build, 1000"}}},
		{"sysctls pass through", docker + "    [runners.docker.sysctls]\n      \"kernel.anything\" = \"x\"\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkDiagnostics(t, tt.doc, tt.want)
		})
	}
}

func TestDockerParsers(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "512m": 512 << 20, "1g": 1 << 30, "1.5g": 3 << 29, "300000": 300000, "64MiB": 64 << 20} {
		if got, err := ParseMemory(in, false); err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	if got, err := ParseMemory("-1", true); err != nil || got != -1 {
		t.Errorf("swap -1 = %d, %v", got, err)
	}
	for in, want := range map[string]int64{"": 0, "1.5": 1_500_000_000, "2": 2_000_000_000, "0.001": 1_000_000} {
		if got, err := ParseCPUs(in); err != nil || got != want {
			t.Errorf("ParseCPUs(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, want := range map[string]Device{
		"/dev/net/tun":        {"/dev/net/tun", "/dev/net/tun", "rwm"},
		"/dev/kvm:/dev/vm":    {"/dev/kvm", "/dev/vm", "rwm"},
		"/dev/fuse:/dev/f:rw": {"/dev/fuse", "/dev/f", "rw"},
	} {
		if got, err := ParseDevice(in); err != nil || got != want {
			t.Errorf("ParseDevice(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for timeout, want := range map[int]time.Duration{0: 30 * time.Second, -1: 0, 5: 5 * time.Second} {
		if got := (&Docker{WaitForServicesTimeout: timeout}).WaitForServices(); got != want {
			t.Errorf("wait_for_services_timeout %d = %s, want %s", timeout, got, want)
		}
	}
	d := Docker{Ulimit: map[string]any{"rtprio": "99", "nofile": int64(1024)}}
	if us, err := d.Ulimits(); err != nil || len(us) != 2 || us[0].Name != "nofile" || us[0].Soft != 1024 || us[0].Hard != 1024 || us[1].Hard != 99 {
		t.Errorf("ulimits = %v, %v", us, err)
	}
}
