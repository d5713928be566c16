package azurefake

import (
	"encoding/json"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

// DefaultGroup is the scale set Start creates when EnvOptions.Group has no name: set up
// the way docs/plugin-azure.md recommends (Uniform, overprovision off, manual upgrade
// policy, no autoscale setting, capacity 0).
var DefaultGroup = cloudsim.Group{Name: "flotilla-vmss", Max: 10}

// Static credentials the SSH backend accepts, as in the seed example's connector_config
// (username and password with use_static_credentials).
const (
	Username = "azureuser"
	Password = "cloudsim-static-password"
)

// EnvOptions configure Start.
type EnvOptions struct {
	// Cloud configures the simulated cloud; NewID and Families default to Azure's.
	// Backend is replaced by an SSH backend when SSH is set.
	Cloud cloudsim.Options
	// Group is created in the cloud; zero means DefaultGroup.
	Group cloudsim.Group
	// ScaleSet sets the scale set's options that cloudsim does not model.
	ScaleSet ScaleSetOptions
	// SSH makes running VMs real SSH servers on 127.0.0.1 that accept Username with
	// Password or ClientKey.
	SSH bool
	// RetryMaxDelay goes into the plugin configuration; default "5ms" so throttling
	// retries do not slow tests down.
	RetryMaxDelay string
}

// Env is a fake Azure subscription ready for the azure plugin: a simulated cloud, the
// ARM fake in front of it, and the plugin_config that points the plugin at it.
type Env struct {
	Cloud *cloudsim.Cloud
	Fake  *Fake
	Group string
	// PluginConfig is the plugin_config JSON for the scale set: name, subscription_id,
	// resource_group_name, endpoint, access_token and retry_max_delay.
	PluginConfig json.RawMessage
	// ClientKey is a private key (OpenSSH PEM) the SSH backend's VMs accept; nil
	// without SSH.
	ClientKey []byte
}

// Start starts a fake Azure for one test and stops it (and every VM's SSH server) when
// the test ends. A plugin configured with Env.PluginConfig, in process or as a binary,
// talks to it through the real SDK; with SSH set, a real job can run on its VMs.
func Start(t testing.TB, opts EnvOptions) *Env {
	t.Helper()
	co := opts.Cloud
	if co.NewID == nil {
		co.NewID = NewID
	}
	if co.Families == nil {
		co.Families = Families
	}
	env := &Env{}
	if opts.SSH {
		pub, pem, err := cloudsim.NewClientKey()
		if err != nil {
			t.Fatalf("azurefake: %v", err)
		}
		co.Backend = &cloudsim.SSHBackend{Dir: t.TempDir(), User: Username, Password: Password, AuthorizedKeys: []ssh.PublicKey{pub}}
		env.ClientKey = pem
	}
	env.Cloud = cloudsim.New(co)
	g := opts.Group
	if g.Name == "" {
		g = DefaultGroup
	}
	if err := env.Cloud.CreateGroup(g); err != nil {
		t.Fatalf("azurefake: create group: %v", err)
	}
	env.Group = g.Name
	env.Fake = New(env.Cloud)
	env.Fake.SetOptions(g.Name, opts.ScaleSet)
	t.Cleanup(func() {
		env.Fake.Close()
		_ = env.Cloud.Close()
	})
	var cfg map[string]any
	_ = json.Unmarshal(env.Fake.PluginConfig(g.Name), &cfg)
	cfg["retry_max_delay"] = opts.RetryMaxDelay
	if opts.RetryMaxDelay == "" {
		cfg["retry_max_delay"] = "5ms"
	}
	env.PluginConfig, _ = json.Marshal(cfg)
	return env
}
