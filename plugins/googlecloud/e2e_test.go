package googlecloud

import (
	"testing"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/gcpfake"
)

// TestRunnerExecJob runs a real pipeline with `runner exec`: the runner launches the
// built fleeting-plugin-googlecloud, which resizes the simulated managed instance group;
// the job runs over SSH on a VM of the simulated cloud, logged in with the ephemeral key
// the plugin put in the instance's ssh-keys metadata.
func TestRunnerExecJob(t *testing.T) {
	env := gcpfake.Start(t, gcpfake.EnvOptions{SSH: true, Group: group("ci-e2e", 2, 0)})
	cloudtest.RunnerExecJob(t, cloudtest.ExecJob{PluginPkg: "./cmd/fleeting-plugin-googlecloud", PluginConfig: env.PluginConfig, Cloud: env.Cloud,
		Connector: "      username = \"runner\"\n      use_static_credentials = false\n"})
}
