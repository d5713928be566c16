package azure

import (
	"os"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// TestL2RealSubscription runs the conformance kit at L1 against a real scale set. It
// creates (and deletes) real VMs, so it runs only when FLOTILLA_AZURE_L2=1; see
// docs/plugin-azure.md for the variables and the scale set to prepare. Credentials come
// from DefaultAzureCredential (AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, a
// managed identity or `az login`).
func TestL2RealSubscription(t *testing.T) {
	if os.Getenv("FLOTILLA_AZURE_L2") != "1" {
		t.Skip("set FLOTILLA_AZURE_L2=1, FLOTILLA_AZURE_L2_SCALE_SET, FLOTILLA_AZURE_L2_SUBSCRIPTION_ID and FLOTILLA_AZURE_L2_RESOURCE_GROUP to run against a real Azure subscription (docs/plugin-azure.md)")
	}
	cfg := map[string]any{}
	for key, env := range map[string]string{"name": "FLOTILLA_AZURE_L2_SCALE_SET", "subscription_id": "FLOTILLA_AZURE_L2_SUBSCRIPTION_ID",
		"resource_group_name": "FLOTILLA_AZURE_L2_RESOURCE_GROUP"} {
		v := os.Getenv(env)
		if v == "" {
			t.Fatalf("%s: required (plugin_config.%s)", env, key)
		}
		cfg[key] = v
	}
	cc := provider.ConnectorConfig{Username: os.Getenv("FLOTILLA_AZURE_L2_USERNAME"), Password: os.Getenv("FLOTILLA_AZURE_L2_PASSWORD"),
		UseStaticCredentials: true}
	if cc.Username == "" {
		cc.Username = "azureuser"
	}
	cloudtest.RunL2(t, cloudtest.L2{Prefix: "FLOTILLA_AZURE_L2", PluginPkg: "./cmd/fleeting-plugin-azure", PluginConfig: cfg,
		Connector: cc, Timeout: 15 * time.Minute})
}
