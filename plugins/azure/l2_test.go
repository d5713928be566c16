package azure

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/conformance"
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
	raw, _ := json.Marshal(cfg)
	cc := provider.ConnectorConfig{Username: os.Getenv("FLOTILLA_AZURE_L2_USERNAME"), Password: os.Getenv("FLOTILLA_AZURE_L2_PASSWORD"),
		UseStaticCredentials: true}
	if cc.Username == "" {
		cc.Username = "azureuser"
	}
	if kf := os.Getenv("FLOTILLA_AZURE_L2_KEY_FILE"); kf != "" {
		key, err := os.ReadFile(kf)
		if err != nil {
			t.Fatalf("FLOTILLA_AZURE_L2_KEY_FILE: %v", err)
		}
		cc.Key = key
	}
	maxSize := 0
	if v := os.Getenv("FLOTILLA_AZURE_L2_MAX"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("FLOTILLA_AZURE_L2_MAX: %v", err)
		}
		maxSize = n
	}
	external := os.Getenv("FLOTILLA_AZURE_L2_EXTERNAL") == "1"
	conformance.Run(t, conformance.Config{
		Binary:       conformance.Build(t, "./cmd/fleeting-plugin-azure"),
		PluginConfig: raw,
		Connector:    cc,
		L1:           true,
		MaxSize:      maxSize,
		Timeout:      15 * time.Minute,
		PollInterval: 10 * time.Second,
		Dial: func(ctx context.Context, info provider.ConnectInfo) error {
			addr, err := info.Addr(external)
			if err != nil {
				return err
			}
			// A VM reports running before its sshd listens: retry until the kit's timeout.
			for {
				c, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", addr)
				if err == nil {
					return c.Close()
				}
				select {
				case <-ctx.Done():
					return err
				case <-time.After(5 * time.Second):
				}
			}
		},
	})
}
