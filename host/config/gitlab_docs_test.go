package config

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// loadDocsExample loads one of testdata/gitlab-docs (the values of GitLab Runner's
// documented examples) and fails on any error or warning: a documented value must
// load as it is, without "unknown key" or other complaints.
func loadDocsExample(t *testing.T, name string) *Config {
	t.Helper()
	cfg, diags, err := Load(filepath.Join("testdata", "gitlab-docs", name))
	if err != nil {
		t.Fatalf("Load %s: %v", name, err)
	}
	for _, d := range diags {
		t.Errorf("%s: unexpected diagnostic: %s", name, d)
	}
	return cfg
}

func TestGitLabDocsPolicyExample(t *testing.T) {
	a := loadDocsExample(t, "policy-example.toml").Runners[0].Autoscaler
	if len(a.Policy) != 2 {
		t.Fatalf("policies: %+v", a.Policy)
	}
	p0, p1 := a.Policy[0], a.Policy[1]
	if !(p0.IdleCount == 0 && p0.IdleTime.Duration == 0 && slices.Equal(p0.Periods, []string{"* * * * *"})) {
		t.Errorf("policy[0] = %+v", p0)
	}
	if !(p1.IdleCount == 1 && p1.IdleTime.Duration == 30*time.Minute && slices.Equal(p1.Periods, []string{"* 8-15 * * mon-fri"})) {
		t.Errorf("policy[1] = %+v", p1)
	}
	// idle_time = "0s" reaches the scaler as 0: an idle instance beyond idle_count is
	// removable at once (GitLab's meaning; taskscaler's removal compares idle time
	// with >=).
	if o := a.ScalerOptions(); o.Policies[0].IdleTime != 0 || o.Policies[1].IdleTime != 30*time.Minute {
		t.Errorf("scaler policies = %+v", o.Policies)
	}
}

func TestGitLabDocsPeriods(t *testing.T) {
	a := loadDocsExample(t, "periods-syntax.toml").Runners[0].Autoscaler
	sun := time.Date(2026, 3, 8, 13, 15, 0, 0, time.UTC) // a Sunday
	mon := time.Date(2026, 3, 9, 13, 15, 0, 0, time.UTC)
	for i, p := range a.Policy {
		for _, expr := range p.Periods {
			if _, err := taskscaler.ParsePeriod(expr); err != nil {
				t.Errorf("policy[%d] period %q: %v", i, expr, err)
			}
		}
	}
	// GitLab's meaning of the day-of-week forms: 7 and 0 are Sunday, 1-7 and MON-SUN
	// every day, SUN (any case) Sunday only.
	tests := []struct {
		expr string
		at   time.Time
		want bool
	}{
		{"* * * * 7", sun, true}, {"* * * * 7", mon, false},
		{"* * * * 0", sun, true},
		{"* * * * 1-7", sun, true}, {"* * * * 1-7", mon, true},
		{"* * * * MON-SUN", sun, true}, {"* * * * MON-SUN", mon, true},
		{"0-30 13,16 * * SUN", sun, true}, {"0-30 13,16 * * SUN", mon, false},
		{"* 0-12/2 * * *", sun, false}, {"* 0-12/2 * * *", sun.Add(-time.Hour), true},
	}
	for _, tt := range tests {
		s, err := taskscaler.ParsePeriod(tt.expr)
		if err != nil {
			t.Errorf("%q: %v", tt.expr, err)
			continue
		}
		minute := tt.at.Truncate(time.Minute)
		if got := s.Next(minute.Add(-time.Second)).Equal(minute); got != tt.want {
			t.Errorf("%q at %s: active = %v, want %v", tt.expr, tt.at.Format("Mon 15:04"), got, tt.want)
		}
	}
}

func TestGitLabDocsAutoscalerKeys(t *testing.T) {
	c := loadDocsExample(t, "autoscaler-keys.toml")
	if c.Concurrent != 4 || c.LogLevel != "warning" {
		t.Errorf("globals: concurrent %d log_level %q", c.Concurrent, c.LogLevel)
	}
	a := c.Runners[0].Autoscaler
	if a.CapacityPerInstance != 1 || a.MaxUseCount != 1 || a.MaxInstances != 0 || a.Plugin != "aws" ||
		a.InstanceReadyCommand != "cloud-init status --wait" || a.InstanceAcquireTimeout.Duration != 15*time.Minute ||
		a.UpdateInterval.Duration != time.Minute || a.UpdateIntervalWhenExpecting.Duration != 2*time.Second ||
		a.DeletionRetryInterval.Duration != time.Minute || a.ShutdownDeletionInterval.Duration != 10*time.Second ||
		a.ShutdownDeletionRetries != 3 || a.FailureThreshold != 3 {
		t.Errorf("autoscaler: %+v", a)
	}
	if a.ScaleThrottleBurst() != 60 {
		t.Errorf("burst = %d, want 60", a.ScaleThrottleBurst())
	}
	if l, unlimited := a.ScaleThrottleLimit(); l != 1 || unlimited {
		t.Errorf("limit = %d unlimited %v", l, unlimited)
	}
	if _, unlimited := c.Runners[1].Autoscaler.ScaleThrottleLimit(); !unlimited {
		t.Error("scale_throttle.limit = -1 must be unlimited")
	}
	cc := a.ConnectorConfig
	if cc.OS != "windows" || cc.Arch != "amd64" || cc.Protocol != "winrm+https" || cc.ProtocolPort != 5986 ||
		cc.Username != "Administrator" || cc.Password != "password" || cc.KeyPath != "key.pem" ||
		cc.Keepalive.Duration != 30*time.Second || cc.Timeout.Duration != 10*time.Minute {
		t.Errorf("connector_config: %+v", cc)
	}
	if !a.StateStorage.Enabled || a.StateStorageDir("/etc/gitlab-runner") != "/etc/gitlab-runner/.taskscaler" {
		t.Errorf("state_storage: %+v", a.StateStorage)
	}
	js, err := a.PluginConfigJSON()
	var m map[string]string
	if err != nil || json.Unmarshal(js, &m) != nil || m["name"] != "my-docker-asg" || m["profile"] != "default" {
		t.Errorf("plugin_config JSON %s: %v", js, err)
	}
}

func TestGitLabDocsDockerExample(t *testing.T) {
	d := loadDocsExample(t, "docker-example.toml").Runners[0].Docker
	if d.Image != "ruby:3.3" || !slices.Equal(d.Volumes, []string{"/data", "/home/project/cache"}) || d.Privileged ||
		!slices.Equal(d.PullPolicy, []string{"always", "if-not-present"}) ||
		!slices.Equal(d.AllowedImages, []string{"ruby:*", "python:*", "php:*"}) ||
		!slices.Equal(d.AllowedServices, []string{"postgres:9", "redis:*", "mysql:*"}) {
		t.Errorf("acted-on keys: %+v", d)
	}
	if d.ServicesLimit == nil || *d.ServicesLimit != 5 || d.ShmSize != 300000 || d.MacAddress != "92:d0:c6:0a:29:33" ||
		d.ServiceMemory != "128m" || d.ServiceCPUs != "2" || !d.HelperImageAutosetArchAndOS {
		t.Errorf("accepted keys: %+v", d)
	}
	svcs, ok := d.Services.([]any)
	if !ok || len(svcs) != 3 {
		t.Errorf("services = %#v", d.Services)
	}
}
