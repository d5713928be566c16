package googlecloud

import (
	"context"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/gcpfake"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// BenchmarkB4CloudAPI is B4 for Google Cloud: API calls per scaling event and per idle
// minute, and convergence time (virtual) for a 0 → 200 → 0 ramp, with and without
// throttling.
func BenchmarkB4CloudAPI(b *testing.B) {
	cloudtest.Benchmark(b, func(b *testing.B, throttled bool) cloudtest.Ramp {
		opts, clock := cloudtest.RampCloud()
		env := gcpfake.Start(b, gcpfake.EnvOptions{Cloud: opts, Group: group("b4", 1000, 0), RetryMaxBackoff: "1ms"})
		if throttled {
			// Compute Engine meters reads, writes and operation reads per project. With
			// batch APIs a ramp of 200 needs few calls, so the buckets are scaled down
			// until it runs into them: per 10 s tick 1.5 reads, 0.5 writes and 1
			// operation poll refill, less than a tick with a decision uses.
			env.Cloud.Throttle("compute-read", 0.15, 2)
			env.Cloud.Throttle("compute-write", 0.05, 1)
			env.Cloud.Throttle("compute-operations", 0.1, 1)
		}
		g := New()
		if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
			b.Fatal(err)
		}
		if _, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: static}); err != nil {
			b.Fatal(err)
		}
		return cloudtest.Ramp{Group: g, Cloud: env.Cloud, Clock: clock, TermReason: gcpfake.OpDeleteInstances}
	})
}
