package aws

import (
	"testing"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/awsfake"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
)

// TestRunnerExecJob runs a real pipeline with `runner exec`: the runner launches the
// built fleeting-plugin-aws, which scales the simulated Auto Scaling group; the job
// runs over SSH on a VM of the simulated cloud, with a key pushed by Instance Connect.
func TestRunnerExecJob(t *testing.T) {
	env := awsfake.Start(t, awsfake.EnvOptions{SSH: true,
		Group: cloudsim.Group{Name: "ci-e2e", Max: 2, Settings: cloudsim.Settings{ScaleInProtection: true}}})
	cloudtest.RunnerExecJob(t, cloudtest.ExecJob{PluginPkg: "./cmd/fleeting-plugin-aws", PluginConfig: env.PluginConfig, Cloud: env.Cloud,
		Connector: "      username = \"ec2-user\"\n      use_static_credentials = false\n"})
}
