package aws

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

// TestL2RealAccount runs the conformance kit at L1 against a real Auto Scaling group. It
// creates (and deletes) real instances, so it runs only when FLOTILLA_AWS_L2=1; see
// docs/plugin-aws.md for the variables and the group to prepare.
func TestL2RealAccount(t *testing.T) {
	if os.Getenv("FLOTILLA_AWS_L2") != "1" {
		t.Skip("set FLOTILLA_AWS_L2=1 and FLOTILLA_AWS_L2_GROUP to run against a real AWS account (docs/plugin-aws.md)")
	}
	group := os.Getenv("FLOTILLA_AWS_L2_GROUP")
	if group == "" {
		t.Fatal("FLOTILLA_AWS_L2_GROUP: required: the name of a prepared Auto Scaling group")
	}
	cfg := map[string]any{"name": group}
	for key, env := range map[string]string{"region": "FLOTILLA_AWS_L2_REGION", "profile": "FLOTILLA_AWS_L2_PROFILE",
		"config_file": "FLOTILLA_AWS_L2_CONFIG_FILE", "credentials_file": "FLOTILLA_AWS_L2_CREDENTIALS_FILE"} {
		if v := os.Getenv(env); v != "" {
			cfg[key] = v
		}
	}
	raw, _ := json.Marshal(cfg)
	cc := provider.ConnectorConfig{Username: os.Getenv("FLOTILLA_AWS_L2_USERNAME")}
	if cc.Username == "" {
		cc.Username = "ec2-user"
	}
	if kf := os.Getenv("FLOTILLA_AWS_L2_KEY_FILE"); kf != "" {
		key, err := os.ReadFile(kf)
		if err != nil {
			t.Fatalf("FLOTILLA_AWS_L2_KEY_FILE: %v", err)
		}
		cc.Key, cc.UseStaticCredentials = key, true
	}
	maxSize := 0
	if v := os.Getenv("FLOTILLA_AWS_L2_MAX"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("FLOTILLA_AWS_L2_MAX: %v", err)
		}
		maxSize = n
	}
	external := os.Getenv("FLOTILLA_AWS_L2_EXTERNAL") == "1"
	conformance.Run(t, conformance.Config{
		Binary:       conformance.Build(t, "./cmd/fleeting-plugin-aws"),
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
			// A real instance is InService before its sshd listens: retry until the
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
