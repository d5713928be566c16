package awsfake

import (
	"encoding/json"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

// DefaultGroup is the group Start creates when EnvOptions.Group has no name: set up the
// way docs/plugin-aws.md recommends (scale-in protection on, AZRebalance suspended, no
// scaling policies, MinSize 0).
var DefaultGroup = cloudsim.Group{Name: "flotilla-ci", Max: 10, Settings: cloudsim.Settings{ScaleInProtection: true}}

// EnvOptions configure Start.
type EnvOptions struct {
	// Cloud configures the simulated cloud; NewID and Families default to AWS's.
	// Backend is replaced by an SSH backend when SSH is set.
	Cloud cloudsim.Options
	// Group is created in the cloud; zero means DefaultGroup.
	Group cloudsim.Group
	// SSH makes running VMs real SSH servers on 127.0.0.1 (cloudsim.SSHBackend).
	SSH bool
	// RetryMaxBackoff goes into the plugin configuration; default "5ms" so throttling
	// retries do not slow tests down.
	RetryMaxBackoff string
}

// Env is a fake AWS account ready for the aws plugin: a simulated cloud, the HTTP fake
// in front of it, and the plugin_config that points the plugin at it.
type Env struct {
	Cloud *cloudsim.Cloud
	Fake  *Fake
	Group string
	// PluginConfig is the plugin_config JSON for the group: name, profile, config and
	// credentials files (written to a temporary directory), endpoint, retry backoff.
	PluginConfig json.RawMessage
	// ClientKey is a private key (OpenSSH PEM) the SSH backend's VMs accept, for
	// connector configurations with use_static_credentials; nil without SSH.
	ClientKey []byte
}

// Start starts a fake AWS for one test and stops it (and every VM's SSH server) when the
// test ends. A plugin configured with Env.PluginConfig, in process or as a binary,
// talks to it through the real SDK; with SSH set, a real job can run on its VMs.
//
// Any test under plugins/ can use it (cloudsim is internal to plugins/): the aws
// plugin's conformance run and its `runner exec` end-to-end test (TestRunnerExecJob)
// do.
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
			t.Fatalf("awsfake: %v", err)
		}
		co.Backend = &cloudsim.SSHBackend{Dir: t.TempDir(), AuthorizedKeys: []ssh.PublicKey{pub}}
		env.ClientKey = pem
	}
	env.Cloud = cloudsim.New(co)
	g := opts.Group
	if g.Name == "" {
		g = DefaultGroup
	}
	if err := env.Cloud.CreateGroup(g); err != nil {
		t.Fatalf("awsfake: create group: %v", err)
	}
	env.Group = g.Name
	env.Fake = New(env.Cloud)
	t.Cleanup(func() {
		env.Fake.Close()
		_ = env.Cloud.Close()
	})
	raw, err := env.Fake.PluginConfig(t.TempDir(), g.Name)
	if err != nil {
		t.Fatalf("awsfake: %v", err)
	}
	var cfg map[string]any
	_ = json.Unmarshal(raw, &cfg)
	cfg["retry_max_backoff"] = opts.RetryMaxBackoff
	if opts.RetryMaxBackoff == "" {
		cfg["retry_max_backoff"] = "5ms"
	}
	env.PluginConfig, _ = json.Marshal(cfg)
	return env
}
