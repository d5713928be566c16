package azure

import (
	"context"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/azurefake"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// BenchmarkB4CloudAPI is B4 for Azure: API calls per scaling event and per idle minute,
// and convergence time (virtual) for a 0 → 200 → 0 ramp, with and without throttling.
// A listing of 200 VMs is two pages (the fake's page size is 100), so calls/update is 2
// at the peak; operation polls count as calls too.
func BenchmarkB4CloudAPI(b *testing.B) {
	cloudtest.Benchmark(b, func(b *testing.B, throttled bool) cloudtest.Ramp {
		opts, clock := cloudtest.RampCloud()
		env := azurefake.Start(b, azurefake.EnvOptions{Cloud: opts, RetryMaxDelay: "1ms",
			Group:    cloudsim.Group{Name: "b4", Max: 1000},
			ScaleSet: azurefake.ScaleSetOptions{SinglePlacementGroup: new(bool)}}) // 200 VMs need more than one placement group
		if throttled {
			// ARM's per-subscription buckets (reads and writes counted apart), made tight
			// enough that the plugin's few calls run into them: writes one per 20 s
			// (burst 1), reads 0.3/s (burst 4), so each decision competes with listings.
			env.Cloud.Throttle("arm-write", 0.05, 1)
			env.Cloud.Throttle("arm-read", 0.3, 4)
		}
		g := New()
		if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
			b.Fatal(err)
		}
		g.RetryMaxRetries = 2 // give up fast in a storm: the ramp's next tick retries
		if _, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: static}); err != nil {
			b.Fatal(err)
		}
		return cloudtest.Ramp{Group: g, Cloud: env.Cloud, Clock: clock, TermReason: "VirtualMachineScaleSets.DeleteInstances"}
	})
}
