package googlecloud

import (
	"os"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// TestL2RealProject runs the conformance kit at L1 against a real managed instance
// group. It creates (and deletes) real instances, so it runs only when
// FLOTILLA_GCP_L2=1; see docs/plugin-googlecloud.md for the variables and the group to
// prepare.
func TestL2RealProject(t *testing.T) {
	if os.Getenv("FLOTILLA_GCP_L2") != "1" {
		t.Skip("set FLOTILLA_GCP_L2=1, FLOTILLA_GCP_L2_GROUP, FLOTILLA_GCP_L2_PROJECT and FLOTILLA_GCP_L2_ZONE to run against a real GCP project (docs/plugin-googlecloud.md)")
	}
	cfg := map[string]any{}
	for key, env := range map[string]string{"name": "FLOTILLA_GCP_L2_GROUP", "project": "FLOTILLA_GCP_L2_PROJECT", "zone": "FLOTILLA_GCP_L2_ZONE"} {
		v := os.Getenv(env)
		if v == "" {
			t.Fatalf("%s: required for plugin_config.%s", env, key)
		}
		cfg[key] = v
	}
	if v := os.Getenv("FLOTILLA_GCP_L2_CREDENTIALS_FILE"); v != "" {
		cfg["credentials_file"] = v
	}
	cc := provider.ConnectorConfig{Username: os.Getenv("FLOTILLA_GCP_L2_USERNAME")}
	if cc.Username == "" {
		cc.Username = "runner"
	}
	cloudtest.RunL2(t, cloudtest.L2{Prefix: "FLOTILLA_GCP_L2", PluginPkg: "./cmd/fleeting-plugin-googlecloud", PluginConfig: cfg,
		MaxSizeKey: "max_size", Connector: cc, Timeout: 10 * time.Minute})
}
