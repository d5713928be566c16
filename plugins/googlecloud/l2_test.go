package googlecloud

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
	maxSize := 0
	if v := os.Getenv("FLOTILLA_GCP_L2_MAX"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("FLOTILLA_GCP_L2_MAX: %v", err)
		}
		cfg["max_size"], maxSize = n, n
	}
	raw, _ := json.Marshal(cfg)
	cc := provider.ConnectorConfig{Username: os.Getenv("FLOTILLA_GCP_L2_USERNAME")}
	if cc.Username == "" {
		cc.Username = "runner"
	}
	if kf := os.Getenv("FLOTILLA_GCP_L2_KEY_FILE"); kf != "" {
		key, err := os.ReadFile(kf)
		if err != nil {
			t.Fatalf("FLOTILLA_GCP_L2_KEY_FILE: %v", err)
		}
		cc.Key, cc.UseStaticCredentials = key, true
	}
	external := os.Getenv("FLOTILLA_GCP_L2_EXTERNAL") == "1"
	conformance.Run(t, conformance.Config{
		Binary:       conformance.Build(t, "./cmd/fleeting-plugin-googlecloud"),
		PluginConfig: raw,
		Connector:    cc,
		L1:           true,
		MaxSize:      maxSize,
		Timeout:      10 * time.Minute,
		PollInterval: 10 * time.Second,
		Dial: func(ctx context.Context, info provider.ConnectInfo) error {
			addr, err := info.Addr(external)
			if err != nil {
				return err
			}
			// A real instance is RUNNING before its sshd listens: retry until the
			// kit's timeout.
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
