package nesting

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	nestingd "github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// TestConfigProblems: every problem of a plugin_config is reported at once, each an
// ErrInvalidConfig naming its key.
func TestConfigProblems(t *testing.T) {
	tests := []struct {
		name, config string
		want         []string
	}{
		{"empty", `{}`, []string{"plugin_config.nesting_host: required", "plugin_config.image: required"}},
		{"not a unix socket, negative size", `{"nesting_host": "tcp://10.0.0.5:22", "image": "debian", "max_size": -1}`,
			[]string{"plugin_config.nesting_host:", "only unix sockets", "plugin_config.max_size: -1 is negative"}},
		{"relative socket", `{"nesting_host": "unix://nesting.sock", "image": "debian"}`,
			[]string{`plugin_config.nesting_host: "unix://nesting.sock" is not an absolute socket path`}},
		{"nesting_config and nesting_ssh", `{"nesting_host": "unix:///run/nesting.sock", "image": "debian", "nesting_config": [1], "nesting_ssh": {"host_key": "nope"}}`,
			[]string{"plugin_config.nesting_config: [1] is not a JSON object", "plugin_config.nesting_ssh.address: required",
				"plugin_config.nesting_ssh.username: required", "plugin_config.nesting_ssh: no credentials", "plugin_config.nesting_ssh.host_key:"}},
		{"misspelt nested key", `{"nesting_host": "unix:///run/nesting.sock", "image": "debian", "vm_ssh": {"user": "debian"}}`,
			[]string{"plugin_config.vm_ssh:", `unknown field "user"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := plugin.DecodeConfig([]byte(tt.config), New())
			if !errors.Is(err, provider.ErrInvalidConfig) {
				t.Fatalf("DecodeConfig(%s) = %v; want ErrInvalidConfig", tt.config, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestInit: what Init does with the daemon it finds, and how it says what is wrong.
func TestInit(t *testing.T) {
	if ok, why := sshdtest.Available(); !ok {
		t.Skip(why)
	}
	initialized := startFakeDaemon(t, 3, true)
	bare := startFakeDaemon(t, 3, false)
	neverInitialized := startFakeDaemon(t, 3, false)
	missing := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		name    string
		d       *fakeDaemon
		extra   map[string]any
		cc      provider.ConnectorConfig
		invalid bool     // the error is an ErrInvalidConfig
		want    []string // the error mentions each; none: Init succeeds
	}{
		{name: "daemon started with its config", d: initialized},
		{name: "nesting_config initializes the daemon", d: bare},
		{name: "no daemon on the socket", d: initialized, extra: map[string]any{"nesting_host": missing},
			want: []string{strings.TrimPrefix(missing, "unix://"), "nesting serve"}},
		{name: "max_size above max_vms", d: initialized, extra: map[string]any{"max_size": 4}, invalid: true,
			want: []string{"plugin_config.max_size 4 is above the daemon's max_vms 3"}},
		{name: "daemon without config and no nesting_config", d: neverInitialized, extra: map[string]any{"nesting_config": nil}, invalid: true,
			want: []string{"has no hypervisor config", "nesting serve --config", "nesting_config"}},
		{name: "nesting_config refused", d: bare, extra: map[string]any{"nesting_config": map[string]any{"max_vms": "many"}}, invalid: true,
			want: []string{"plugin_config.nesting_config: the daemon at", "refused it"}},
		{name: "no VM credentials", d: initialized, extra: map[string]any{"vm_ssh": nil}, invalid: true,
			want: []string{"plugin_config.vm_ssh.username: no user", "plugin_config.vm_ssh: no credentials"}},
		{name: "VM credentials from connector_config", d: initialized, extra: map[string]any{"vm_ssh": nil},
			cc: provider.ConnectorConfig{Username: "debian", Password: "secret"}},
		{name: "unreadable key files", d: initialized, invalid: true,
			extra: map[string]any{"vm_ssh": map[string]any{"username": "debian", "key_file": "/nonexistent/vm_key"},
				"nesting_ssh": map[string]any{"address": "127.0.0.1:1", "username": "root", "key_file": "/nonexistent/host_key"}},
			want: []string{"plugin_config.vm_ssh.key_file: open /nonexistent/vm_key", "plugin_config.nesting_ssh.key_file: open /nonexistent/host_key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newGroup(t, tt.d.pluginConfig(t, tt.extra), tt.cc)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Init: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Init succeeded; want an error mentioning %q", tt.want)
			}
			if got := errors.Is(err, provider.ErrInvalidConfig); got != tt.invalid {
				t.Errorf("errors.Is(err, ErrInvalidConfig) = %v, want %v (a daemon that may come up later must not be reported as a configuration error): %v", got, tt.invalid, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Init error does not mention %q:\n%v", w, err)
				}
			}
		})
	}
	if n := bare.h.Calls("Init"); n != 2 { // the nesting_config case, and the refused one
		t.Errorf("the daemon without config got %d Init calls; want 2", n)
	}
	if n := initialized.h.Calls("Init"); n != 1 { // the daemon's own, at start
		t.Errorf("the daemon started with its config got %d Init calls from the plugin; want none", n-1)
	}
}

// TestIncreaseTakesFreeSlots: Increase creates VMs in slots no VM holds, within
// max_size, counting VMs the plugin did not create, and never stomps one.
func TestIncreaseTakesFreeSlots(t *testing.T) {
	d := startFakeDaemon(t, 5, true)
	c := d.client(t)
	ctx := context.Background()
	if _, _, err := c.Create(ctx, "debian", 1); err != nil {
		t.Fatal(err)
	}
	g := mustGroup(t, d.pluginConfig(t, map[string]any{"max_size": 3}))

	n, err := g.Increase(ctx, 4)
	if n != 2 || !errors.Is(err, provider.ErrCapacity) {
		t.Fatalf("Increase(4) with 1 of max_size 3 held = %d, %v; want 2 and ErrCapacity", n, err)
	}
	vms, _, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var slots []int
	for _, vm := range vms {
		slots = append(slots, vm.Slot)
	}
	slices.Sort(slots)
	if !slices.Equal(slots, []int{0, 1, 2}) {
		t.Errorf("VMs are in slots %v; want 0, 1, 2", slots)
	}
	if n := d.h.Calls("Delete"); n != 0 {
		t.Errorf("the daemon deleted %d VMs: Increase stomped a slot", n)
	}
	if n, err := g.Increase(ctx, 1); n != 0 || !errors.Is(err, provider.ErrCapacity) {
		t.Errorf("Increase(1) at max_size = %d, %v; want 0 and ErrCapacity", n, err)
	}
	// A VM created without a slot counts too.
	if _, err := g.Decrease(ctx, []string{vms[0].ID}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Create(ctx, "debian", nestingd.NoSlot); err != nil {
		t.Fatal(err)
	}
	if n, err := g.Increase(ctx, 1); n != 0 || !errors.Is(err, provider.ErrCapacity) {
		t.Errorf("Increase(1) with 2 VMs in slots and 1 without, max_size 3 = %d, %v; want 0 and ErrCapacity", n, err)
	}
}

// TestIncreaseAfterDaemonRestart: a daemon restarted without its config is sent
// nesting_config again instead of failing every creation.
func TestIncreaseAfterDaemonRestart(t *testing.T) {
	d := startFakeDaemon(t, 3, false)
	g := mustGroup(t, d.pluginConfig(t, nil))
	d.restart(t)
	if n, err := g.Increase(context.Background(), 1); n != 1 || err != nil {
		t.Fatalf("Increase(1) after the daemon restarted = %d, %v; want 1", n, err)
	}
}

// TestUnknownImage: Increase reports the daemon's error, which names the images.
func TestUnknownImage(t *testing.T) {
	d := startFakeDaemon(t, 3, true)
	g := mustGroup(t, d.pluginConfig(t, map[string]any{"image": "ubuntu"}))
	n, err := g.Increase(context.Background(), 1)
	if n != 0 || !errors.Is(err, nestingd.ErrImageNotFound) || !strings.Contains(err.Error(), `"debian"`) {
		t.Fatalf("Increase(1) of an unknown image = %d, %v; want 0 and the daemon's error naming its images", n, err)
	}
}

// TestConnectInfo: the VM's address (a remote daemon's VM on the VM host's loopback is
// reported at the VM host's address) and the credentials of vm_ssh, else of
// connector_config.
func TestConnectInfo(t *testing.T) {
	d := startFakeDaemon(t, 3, true)
	_, remote := vmHost(t)
	ctx := context.Background()
	tests := []struct {
		name               string
		extra              map[string]any
		cc                 provider.ConnectorConfig
		wantHost, wantUser string
		dial               bool
	}{
		{name: "local", wantHost: "127.0.0.1", wantUser: d.VMUser, dial: true},
		{name: "remote", extra: map[string]any{"nesting_ssh": remote}, wantHost: "localhost", wantUser: d.VMUser, dial: true},
		{name: "connector_config", extra: map[string]any{"vm_ssh": nil},
			cc: provider.ConnectorConfig{Username: "debian", Password: "secret"}, wantHost: "127.0.0.1", wantUser: "debian"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := newGroup(t, d.pluginConfig(t, tt.extra), tt.cc)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := g.Increase(ctx, 1); n != 1 {
				t.Fatalf("Increase(1) = %d, %v", n, err)
			}
			var ids []string
			if err := g.Update(ctx, func(id string, s provider.State) {
				if s != provider.StateRunning {
					t.Errorf("Update: %s is %s, want running", id, s)
				}
				ids = append(ids, id)
			}); err != nil {
				t.Fatal(err)
			}
			info, err := g.ConnectInfo(ctx, ids[0])
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { g.Decrease(ctx, ids) })
			host, port, _ := strings.Cut(info.InternalAddr, ":")
			if host != tt.wantHost || port != strings.Split(d.vms.Addr, ":")[1] || info.Username != tt.wantUser || info.ID != ids[0] {
				t.Errorf("ConnectInfo = %s@%s (ID %s); want %s@%s:<the VM's port>", info.Username, info.InternalAddr, info.ID, tt.wantUser, tt.wantHost)
			}
			if tt.dial {
				if err := sshTrue(ctx, info); err != nil {
					t.Errorf("log in to the VM: %v", err)
				}
			}
		})
	}
}

// TestRemoteDaemonNotThere: a VM host without the daemon's socket gives an error that
// names the socket and the host, and is not a configuration error (the daemon may be
// started later).
func TestRemoteDaemonNotThere(t *testing.T) {
	host, remote := vmHost(t)
	sock := filepath.Join(t.TempDir(), "none.sock")
	d := daemon{Host: "unix://" + sock, Image: "debian", VMUser: host.User, VMKeyFile: filepath.Join(host.Dir, "client_key")}
	_, err := newGroup(t, d.pluginConfig(t, map[string]any{"nesting_ssh": remote}), provider.ConnectorConfig{})
	if err == nil || errors.Is(err, provider.ErrInvalidConfig) || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), remote["address"].(string)) {
		t.Fatalf("Init with no daemon on the VM host: %v; want an error naming %s and %s, not ErrInvalidConfig", err, sock, remote["address"])
	}
}

// TestVMAddr: which VM addresses of a remote daemon are rewritten to the VM host's.
func TestVMAddr(t *testing.T) {
	g := &InstanceGroup{NestingSSH: &HostSSH{Address: "vmhost.example:2222"}, sshHost: "vmhost.example"}
	for addr, want := range map[string]string{
		"127.0.0.1:30001":  "vmhost.example:30001",
		"localhost:30001":  "vmhost.example:30001",
		"[::1]:30001":      "vmhost.example:30001",
		"0.0.0.0:30001":    "vmhost.example:30001",
		"192.168.64.5:22":  "192.168.64.5:22",
		"vm-1.internal:22": "vm-1.internal:22",
		"not an address":   "not an address",
	} {
		if got := g.vmAddr(addr); got != want {
			t.Errorf("vmAddr(%q) = %q, want %q", addr, got, want)
		}
	}
	if got := (&InstanceGroup{}).vmAddr("127.0.0.1:30001"); got != "127.0.0.1:30001" {
		t.Errorf("a local daemon's VM address was rewritten to %q", got)
	}
}
