package azure

import (
	"fmt"
	"testing"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/azurefake"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
)

// TestRunnerExecJob runs a real pipeline with `runner exec`: the runner launches the
// built fleeting-plugin-azure, which scales the simulated scale set; the job runs over
// SSH on a VM of the simulated cloud, logged in with the seed example's static username
// and password (use_static_credentials, use_external_addr).
func TestRunnerExecJob(t *testing.T) {
	env := azurefake.Start(t, azurefake.EnvOptions{SSH: true, Group: cloudsim.Group{Name: "ci-e2e", Max: 2}})
	cloudtest.RunnerExecJob(t, cloudtest.ExecJob{PluginPkg: "./cmd/fleeting-plugin-azure", PluginConfig: env.PluginConfig, Cloud: env.Cloud,
		Connector: fmt.Sprintf("      username = %q\n      password = %q\n      use_static_credentials = true\n      use_external_addr = true\n      timeout = \"1m\"\n",
			azurefake.Username, azurefake.Password)})
}
