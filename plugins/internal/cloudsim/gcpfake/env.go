package gcpfake

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

// DefaultZone is the zone of DefaultGroup and of groups Start creates without zones.
const DefaultZone = "europe-west1-b"

// DefaultGroup is the MIG Start creates when EnvOptions.Group has no name: set up the
// way docs/plugin-googlecloud.md recommends (no autoscaler, zonal, updates
// opportunistic). Max is the zonal MIG limit.
var DefaultGroup = cloudsim.Group{Name: "flotilla-ci", Max: 1000, Settings: cloudsim.Settings{Zones: []string{DefaultZone}}}

// WriteCredentials writes a service-account key file into dir whose token_uri is the
// fake's token endpoint, and returns its path: the plugin then loads it through
// credentials_file exactly as it would a real one. The RSA key is new and throwaway.
func (f *Fake) WriteCredentials(dir string) (string, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("generate service account key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("encode service account key: %w", err)
	}
	sa := map[string]string{
		"type":           "service_account",
		"project_id":     f.Project,
		"private_key_id": "0123456789abcdef",
		"private_key":    string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":   "flotilla@" + f.Project + ".iam.gserviceaccount.com",
		"client_id":      "100000000000000000001",
		"token_uri":      f.URL() + "/token",
	}
	b, _ := json.MarshalIndent(sa, "", "  ")
	path := filepath.Join(dir, "gcp-service-account.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("write service account file: %w", err)
	}
	return path, nil
}

// PluginConfig writes credentials into dir and returns the plugin_config JSON that points
// the googlecloud plugin at this fake for the MIG group in zone.
func (f *Fake) PluginConfig(dir, group, zone string) (json.RawMessage, error) {
	cred, err := f.WriteCredentials(dir)
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]string{
		"name": group, "project": f.Project, "zone": zone, "credentials_file": cred, "endpoint": f.URL(),
	})
}

// EnvOptions configure Start.
type EnvOptions struct {
	// Cloud configures the simulated cloud; NewID and Families default to GCP's.
	// Backend is replaced by an SSH backend when SSH is set.
	Cloud cloudsim.Options
	// Group is created in the cloud; zero means DefaultGroup. A group without zones
	// is put in DefaultZone.
	Group cloudsim.Group
	// SSH makes running VMs real SSH servers on 127.0.0.1 (cloudsim.SSHBackend).
	SSH bool
	// RetryMaxBackoff goes into the plugin configuration; default "5ms" so retries of
	// throttled calls do not slow tests down.
	RetryMaxBackoff string
}

// Env is a fake GCP project ready for the googlecloud plugin: a simulated cloud, the
// HTTP fake in front of it, and the plugin_config that points the plugin at it.
type Env struct {
	Cloud *cloudsim.Cloud
	Fake  *Fake
	Group string
	Zone  string
	// PluginConfig is the plugin_config JSON: name, project, zone, credentials_file (a
	// throwaway service-account file), endpoint, retry_max_backoff.
	PluginConfig json.RawMessage
	// ClientKey is a private key (OpenSSH PEM) the SSH backend's VMs accept, for
	// connector configurations with use_static_credentials; nil without SSH.
	ClientKey []byte
}

// Start starts a fake GCP for one test and stops it (and every VM's SSH server) when the
// test ends. A plugin configured with Env.PluginConfig, in process or as a binary,
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
			t.Fatalf("gcpfake: %v", err)
		}
		co.Backend = &cloudsim.SSHBackend{Dir: t.TempDir(), AuthorizedKeys: []ssh.PublicKey{pub}}
		env.ClientKey = pem
	}
	env.Cloud = cloudsim.New(co)
	g := opts.Group
	if g.Name == "" {
		g = DefaultGroup
	}
	if len(g.Settings.Zones) == 0 {
		g.Settings.Zones = []string{DefaultZone}
	}
	if err := env.Cloud.CreateGroup(g); err != nil {
		t.Fatalf("gcpfake: create group: %v", err)
	}
	env.Group, env.Zone = g.Name, g.Settings.Zones[0]
	env.Fake = New(env.Cloud)
	t.Cleanup(func() {
		env.Fake.Close()
		_ = env.Cloud.Close()
	})
	raw, err := env.Fake.PluginConfig(t.TempDir(), g.Name, env.Zone)
	if err != nil {
		t.Fatalf("gcpfake: %v", err)
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
