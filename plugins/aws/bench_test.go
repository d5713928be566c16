package aws

import (
	"context"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/awsfake"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cloudtest"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// BenchmarkB4CloudAPI is B4 for AWS: API calls per scaling event and per idle minute,
// and convergence time (virtual) for a 0 → 200 → 0 ramp, with and without throttling.
func BenchmarkB4CloudAPI(b *testing.B) {
	cloudtest.Benchmark(b, func(b *testing.B, throttled bool) cloudtest.Ramp {
		opts, clock := cloudtest.RampCloud()
		env := awsfake.Start(b, awsfake.EnvOptions{Cloud: opts, RetryMaxBackoff: "1ms",
			Group: cloudsim.Group{Name: "b4", Max: 1000, Settings: cloudsim.Settings{ScaleInProtection: true}}})
		if throttled {
			// Rates in the spirit of AWS's account-level buckets, scaled so that a ramp
			// of 200 runs into them: mutations 2/s (burst 20), describes 5/s (burst 10).
			env.Cloud.Throttle("autoscaling-mutate", 2, 20)
			env.Cloud.Throttle("autoscaling-describe", 5, 10)
			env.Cloud.Throttle("ec2-describe", 5, 10)
		}
		g := New()
		if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
			b.Fatal(err)
		}
		if _, err := g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: static}); err != nil {
			b.Fatal(err)
		}
		return cloudtest.Ramp{Group: g, Cloud: env.Cloud, Clock: clock, TermReason: "TerminateInstanceInAutoScalingGroup"}
	})
}
