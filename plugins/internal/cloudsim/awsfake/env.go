package awsfake

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
// do. Tests elsewhere run the fakecloud command instead.
func Start(t testing.TB, opts EnvOptions) *Env {
	t.Helper()
	env, err := NewEnv(t.TempDir(), opts)
	if err != nil {
		t.Fatalf("awsfake: %v", err)
	}
	t.Cleanup(func() { _ = env.Close() })
	return env
}

// NewEnv is Start without a test: it writes the credentials and config files into dir
// (and, with SSH, the VMs' working directories under dir/vms) and returns the running
// fake. The caller must Close it.
func NewEnv(dir string, opts EnvOptions) (*Env, error) {
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
			return nil, err
		}
		vmDir := filepath.Join(dir, "vms")
		if err := os.MkdirAll(vmDir, 0o755); err != nil {
			return nil, fmt.Errorf("create VM directory: %w", err)
		}
		co.Backend = &cloudsim.SSHBackend{Dir: vmDir, AuthorizedKeys: []ssh.PublicKey{pub}}
		env.ClientKey = pem
	}
	env.Cloud = cloudsim.New(co)
	g := opts.Group
	if g.Name == "" {
		g = DefaultGroup
	}
	if err := env.Cloud.CreateGroup(g); err != nil {
		return nil, fmt.Errorf("create group: %w", err)
	}
	env.Group = g.Name
	env.Fake = New(env.Cloud)
	raw, err := env.Fake.PluginConfig(dir, g.Name)
	if err != nil {
		_ = env.Close()
		return nil, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		_ = env.Close()
		return nil, fmt.Errorf("decode plugin_config: %w", err)
	}
	cfg["retry_max_backoff"] = opts.RetryMaxBackoff
	if opts.RetryMaxBackoff == "" {
		cfg["retry_max_backoff"] = "5ms"
	}
	if env.PluginConfig, err = json.Marshal(cfg); err != nil {
		_ = env.Close()
		return nil, fmt.Errorf("encode plugin_config: %w", err)
	}
	return env, nil
}

// Close stops the HTTP fake and every VM's SSH server. The cloud's state stays readable.
func (e *Env) Close() error {
	e.Fake.Close()
	return e.Cloud.Close()
}
