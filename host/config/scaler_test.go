package config

import (
	"fmt"
	"testing"
	"time"
)

// TestScalerOptionsMapsEveryKey: every key of [runners.autoscaler] reaches the
// taskscaler's options, through the one mapping the pools and runner simulate use.
func TestScalerOptionsMapsEveryKey(t *testing.T) {
	cfg, _, err := Parse("t.toml", []byte(`
[[runners]]
  name = "r"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 3
    max_use_count = 7
    max_instances = 9
    delete_instances_on_shutdown = true
    instance_acquire_timeout = "2m"
    update_interval = "30s"
    update_interval_when_expecting = "1s"
    deletion_retry_interval = "45s"
    shutdown_deletion_interval = "5s"
    shutdown_deletion_retries = 4
    failure_threshold = 6
    reservation_throttling = false
    [runners.autoscaler.scale_throttle]
      limit = 5
      burst = 8
    [runners.autoscaler.state_storage]
      keep_instance_with_acquisitions = true
    [[runners.autoscaler.policy]]
      periods = ["* 8-18 * * mon-fri"]
      timezone = "Europe/Berlin"
      idle_count = 4
      idle_time = "10m"
      scale_factor = 0.5
      scale_factor_limit = 6
      preemptive_mode = false
`))
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Runners[0].Autoscaler.ScalerOptions()
	got := fmt.Sprintf("%d %d %d %v %v %v %v %v %v %d %d %+v %v %v", o.CapacityPerInstance, o.MaxUseCount, o.MaxInstances,
		o.DeleteInstancesOnShutdown, o.InstanceAcquireTimeout, o.UpdateInterval, o.UpdateIntervalWhenExpecting,
		o.DeletionRetryInterval, o.ShutdownDeletionInterval, o.ShutdownDeletionRetries, o.FailureThreshold, o.ScaleThrottle,
		*o.ReservationThrottling, o.KeepInstanceWithAcquisitions)
	want := "3 7 9 true 2m0s 30s 1s 45s 5s 4 6 {Limit:5 Burst:8} false true"
	if got != want {
		t.Errorf("options = %s\nwant      %s", got, want)
	}
	if len(o.Policies) != 1 {
		t.Fatalf("policies = %+v", o.Policies)
	}
	p := o.Policies[0]
	if p.Timezone != "Europe/Berlin" || p.IdleCount != 4 || p.IdleTime != 10*time.Minute || p.ScaleFactor != 0.5 ||
		p.ScaleFactorLimit != 6 || p.PreemptiveMode == nil || *p.PreemptiveMode || len(p.Periods) != 1 {
		t.Errorf("policy = %+v", p)
	}
}
