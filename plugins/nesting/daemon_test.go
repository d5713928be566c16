package nesting

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	nestingd "github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/nestingtest"
	"github.com/flotilla-ci/flotilla/nesting/qemu"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// daemon is a running nesting daemon for the tests: what plugin_config needs to drive
// it and to log in to its VMs.
type daemon struct {
	// Host is the nesting_host of its socket on this machine.
	Host string
	// Image is an image it has.
	Image string
	// Config is the nesting_config the plugin sends; nil when the daemon was started
	// with its config.
	Config json.RawMessage
	// VMUser and VMKeyFile log in to its VMs.
	VMUser, VMKeyFile string
}

// fakeDaemon is the real nesting.Server, in process on a unix socket, over the
// in-memory hypervisor of nestingtest. Every VM's address is one OpenSSH server, so
// that ConnectInfo can be dialled and logged in to.
type fakeDaemon struct {
	daemon
	path string
	vms  *sshdtest.Server
	h    *nestingtest.Hypervisor
	stop func()
}

// startDaemon starts "the daemon" the plugin's tests drive and returns how to reach
// it. Here it is the fake; to run the same tests against QEMU VMs, return instead the
// socket of `nesting serve --hypervisor qemu --config F --socket P` with an image of
// nesting/vmtest and its login.
func startDaemon(t *testing.T) daemon { return startFakeDaemon(t, 3, true).daemon }

// startQEMUDaemon is the real nesting server in process over the qemu backend, with
// real VMs (TCG where KVM does not work) of nesting/vmtest's guest image; its VMs are
// deleted at the end of the test.
func startQEMUDaemon(t *testing.T, maxVMs int) daemon {
	t.Helper()
	imagesDir, image := vmtest.Image(t)
	authorized, keyFile := vmtest.KeyFile(t)
	cfg, _ := json.Marshal(map[string]any{"images_dir": imagesDir, "state_dir": t.TempDir(), "max_vms": maxVMs,
		"memory": 256, "accelerator": "tcg", "authorized_key": authorized})
	h := qemu.New(nil)
	if _, err := h.Init(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	d := nestingtest.Serve(t, h, true)
	t.Cleanup(func() {
		d.Stop()
		vms, err := h.List(context.Background())
		if err != nil {
			t.Errorf("list VMs at the end: %v", err)
		}
		for _, vm := range vms {
			if err := h.Delete(context.Background(), vm.ID); err != nil {
				t.Errorf("delete VM %s: %v", vm.ID, err)
			}
		}
	})
	return daemon{Host: d.Host, Image: image, VMUser: vmtest.User, VMKeyFile: keyFile}
}

// startFakeDaemon starts the fake with maxVMs slots; initialized says whether it is
// initialized as by `nesting serve --config` (else the plugin must send Config).
func startFakeDaemon(t *testing.T, maxVMs int, initialized bool) *fakeDaemon {
	t.Helper()
	vms := sshdtest.Start(t, sshdtest.Options{})
	d := &fakeDaemon{path: filepath.Join(t.TempDir(), "nesting.sock"), vms: vms}
	cfg, _ := json.Marshal(nestingtest.Config{MaxVMs: maxVMs, Images: []string{"debian"}})
	d.daemon = daemon{Host: "unix://" + d.path, Image: "debian", VMUser: vms.User, VMKeyFile: filepath.Join(vms.Dir, "client_key")}
	if !initialized {
		d.Config = cfg
	}
	d.start(t, cfg, initialized)
	t.Cleanup(func() { d.stop() })
	return d
}

// start serves a fresh, empty hypervisor on the socket.
func (d *fakeDaemon) start(t *testing.T, cfg []byte, initialized bool) {
	t.Helper()
	d.h = nestingtest.New()
	d.h.Addr = d.vms.Addr
	if initialized {
		if _, err := d.h.Init(context.Background(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	d.stop = nestingtest.ServeAt(t, d.path, d.h, initialized).Stop
}

// restart stops the daemon and starts an uninitialized one on the same socket, as a
// daemon restarted without --config.
func (d *fakeDaemon) restart(t *testing.T) {
	t.Helper()
	d.stop()
	d.start(t, nil, false)
}

// client returns a client of the daemon, as `nesting` commands would use.
func (d *fakeDaemon) client(t *testing.T) *nestingd.Client {
	t.Helper()
	c, err := nestingd.Dial(d.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pluginConfig is the plugin_config that drives d, with extra keys on top.
func (d daemon) pluginConfig(t *testing.T, extra map[string]any) json.RawMessage {
	t.Helper()
	cfg := map[string]any{
		"nesting_host": d.Host,
		"image":        d.Image,
		"vm_ssh":       map[string]any{"username": d.VMUser, "key_file": d.VMKeyFile},
	}
	if d.Config != nil {
		cfg["nesting_config"] = d.Config
	}
	for k, v := range extra {
		if v == nil {
			delete(cfg, k)
		} else {
			cfg[k] = v
		}
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// newGroup decodes config into a group and initialises it, as the SDK does.
func newGroup(t *testing.T, config json.RawMessage, cc provider.ConnectorConfig) (*InstanceGroup, error) {
	t.Helper()
	g := New()
	if err := plugin.DecodeConfig(config, g); err != nil {
		return nil, err
	}
	_, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: cc})
	t.Cleanup(func() { g.Shutdown(context.Background()) })
	return g, err
}

// mustGroup is newGroup that fails the test on error.
func mustGroup(t *testing.T, config json.RawMessage) *InstanceGroup {
	t.Helper()
	g, err := newGroup(t, config, provider.ConnectorConfig{})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return g
}

// writeFile writes data into a new file of the test and returns its path.
func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
