package aws

import (
	"os"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
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
	cc := provider.ConnectorConfig{Username: os.Getenv("FLOTILLA_AWS_L2_USERNAME")}
	if cc.Username == "" {
		cc.Username = "ec2-user"
	}
	cloudtest.RunL2(t, cloudtest.L2{Prefix: "FLOTILLA_AWS_L2", PluginPkg: "./cmd/fleeting-plugin-aws", PluginConfig: cfg,
		Connector: cc, Timeout: 10 * time.Minute})
}
