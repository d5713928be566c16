package taskscaler

import (
	"strings"
	"testing"
	"time"
)

func TestOptionDefaults(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		key       string
		got, want any
	}{
		{"capacity_per_instance", o.CapacityPerInstance, 1},
		{"max_use_count", o.MaxUseCount, 0},
		{"max_instances", o.MaxInstances, 0},
		{"instance_acquire_timeout", o.InstanceAcquireTimeout, 15 * time.Minute},
		{"update_interval", o.UpdateInterval, time.Minute},
		{"update_interval_when_expecting", o.UpdateIntervalWhenExpecting, 2 * time.Second},
		{"deletion_retry_interval", o.DeletionRetryInterval, time.Minute},
		{"shutdown_deletion_interval", o.ShutdownDeletionInterval, 10 * time.Second},
		{"shutdown_deletion_retries", o.ShutdownDeletionRetries, 3},
		{"failure_threshold", o.FailureThreshold, 3},
		{"scale_throttle.limit", o.ScaleThrottle.Limit, 100},
		{"scale_throttle.burst (no max_instances)", o.ScaleThrottle.Burst, 100},
		{"delete_instances_on_shutdown", o.DeleteInstancesOnShutdown, false},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.key, c.got, c.want)
		}
	}
	o, _ = Options{MaxInstances: 7}.withDefaults()
	if o.ScaleThrottle.Burst != 7 {
		t.Errorf("burst with max_instances 7: got %d, want 7", o.ScaleThrottle.Burst)
	}
	o, _ = Options{MaxInstances: 7, ScaleThrottle: ScaleThrottle{Limit: -1, Burst: 3}}.withDefaults()
	if o.ScaleThrottle.Limit != -1 || o.ScaleThrottle.Burst != 3 {
		t.Errorf("explicit throttle changed: %+v", o.ScaleThrottle)
	}
	o, _ = Options{CapacityPerInstance: 4, UpdateInterval: 5 * time.Second}.withDefaults()
	if o.CapacityPerInstance != 4 || o.UpdateInterval != 5*time.Second {
		t.Errorf("explicit values changed: %d %s", o.CapacityPerInstance, o.UpdateInterval)
	}
}

func TestOptionErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name string
		o    Options
		want string
	}{
		{"capacity", Options{CapacityPerInstance: -1}, "capacity_per_instance = -1"},
		{"max_use_count", Options{MaxUseCount: -2}, "max_use_count = -2"},
		{"max_instances", Options{MaxInstances: -1}, "max_instances"},
		{"throttle", Options{ScaleThrottle: ScaleThrottle{Limit: -5}}, "scale_throttle.limit = -5"},
		{"interval", Options{UpdateInterval: -time.Second}, "update_interval = -1s"},
		{"idle_count", Options{Policies: []Policy{{}, {IdleCount: -1}}}, "policy[1].idle_count"},
		{"scale_factor", Options{Policies: []Policy{{ScaleFactor: -0.5}}}, "policy[0].scale_factor"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.o.withDefaults()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}
