package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const examplesDir = "../../examples/configs"

// TestExamplesLoad loads every example configuration (the seed documents' examples) and
// checks that none has errors and that the warnings are the ones each file documents.
func TestExamplesLoad(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.toml"))
	if err != nil || len(files) < 10 {
		t.Fatalf("want at least 10 example configs, got %d (%v)", len(files), err)
	}
	wantWarnings := map[string][]string{
		"docker-ecr-credential-helper.toml": {"runners[0].executor", "runners[0].docker.environment"},
		"docker-machine-aws.toml":           {"runners[0].executor", "runners[1].executor"},
		// The book's [runners.cache.s3] has no Type: GitLab Runner ignores it too.
		"docker-machine-offpeak-cache.toml": {"runners[0].executor", "runners[0].cache.s3"},
		"kubernetes-helm.toml":              {"runners[0]"},
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, diags, err := Load(f)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			var paths []string
			for _, d := range diags {
				if d.Line == 0 {
					t.Errorf("diagnostic without position: %s", d)
				}
				paths = append(paths, d.Path)
			}
			if want := wantWarnings[filepath.Base(f)]; !slices.Equal(paths, want) {
				t.Errorf("warnings at %q, want %q:\n%s", paths, want, diags)
			}
			if len(cfg.Runners) == 0 {
				t.Fatal("no runners")
			}
			if cfg.Path != f {
				t.Errorf("Path = %q", cfg.Path)
			}
		})
	}
}

func loadExample(t *testing.T, name string) *Config {
	t.Helper()
	cfg, _, err := Load(filepath.Join(examplesDir, name))
	if err != nil {
		t.Fatalf("Load %s: %v", name, err)
	}
	return cfg
}

func TestExampleValues(t *testing.T) {
	t.Run("instance 1 job per instance", func(t *testing.T) {
		c := loadExample(t, "instance-aws-1-job-per-instance.toml")
		r := c.Runners[0]
		a := r.Autoscaler
		if c.Concurrent != 10 || r.Executor != "instance" || r.Shell != "sh" || r.URL != "https://gitlab.com" {
			t.Errorf("globals/runner: %+v", r)
		}
		if a.Plugin != "fleeting-plugin-aws" || a.CapacityPerInstance != 1 || a.MaxUseCount != 1 || a.MaxInstances != 10 {
			t.Errorf("autoscaler: %+v", a)
		}
		if !a.ConnectorConfig.UseExternalAddr || a.ConnectorConfig.Username != "ec2-user" {
			t.Errorf("connector: %+v", a.ConnectorConfig)
		}
		if len(a.Policy) != 1 || a.Policy[0].IdleCount != 5 || a.Policy[0].IdleTime.Duration != 20*time.Minute {
			t.Errorf("policy: %+v", a.Policy)
		}
		js, err := a.PluginConfigJSON()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]string
		if err := json.Unmarshal(js, &m); err != nil || m["name"] != "my-linux-asg" || m["credentials_file"] != "/home/user/.aws/credentials" {
			t.Errorf("plugin config JSON %s: %v", js, err)
		}
		if got := a.PoliciesOrDefault()[0].PeriodsOrDefault(); !slices.Equal(got, []string{"* * * * *"}) {
			t.Errorf("default periods %q", got)
		}
		if !a.Policy[0].Preemptive() {
			t.Error("idle_count > 0 must default to preemptive mode")
		}
	})
	t.Run("instance 5 jobs per instance", func(t *testing.T) {
		c := loadExample(t, "instance-aws-5-jobs-per-instance.toml")
		a := c.Runners[0].Autoscaler
		if c.Concurrent != 50 || a.CapacityPerInstance != 5 || a.MaxUseCount != 0 || a.ConnectorConfig.Timeout.Duration != 5*time.Minute {
			t.Errorf("%+v", a)
		}
	})
	t.Run("macos nesting", func(t *testing.T) {
		c := loadExample(t, "instance-macos-nesting.toml")
		r := c.Runners[0]
		a := r.Autoscaler
		if !slices.Equal(r.Instance.AllowedImages, []string{"*"}) || a.Policy[0].IdleTime.Duration != 24*time.Hour {
			t.Errorf("%+v", r)
		}
		v := a.VMIsolation
		if !v.Enabled || v.NestingHost != "unix:///Users/ec2-user/Library/Application Support/nesting.sock" ||
			v.ConnectorConfig.Password != "nested-vm-password" || v.ConnectorConfig.Timeout.Duration != 20*time.Minute {
			t.Errorf("vm_isolation %+v", v)
		}
		if a.ConnectorConfig.KeyPath != "macos-key.pem" || a.ConnectorConfig.Timeout.Duration != time.Hour {
			t.Errorf("connector %+v", a.ConnectorConfig)
		}
		if c.Dir() != examplesDir {
			t.Errorf("Dir = %q", c.Dir())
		}
	})
	t.Run("docker autoscaler clouds", func(t *testing.T) {
		for file, plugin := range map[string]string{
			"docker-autoscaler-aws.toml": "aws", "docker-autoscaler-googlecloud.toml": "googlecloud",
			"docker-autoscaler-azure.toml": "azure", "docker-autoscaler-aws-ecr.toml": "aws",
			"docker-autoscaler-minimal.toml": "aws:latest",
		} {
			c := loadExample(t, file)
			r := c.Runners[0]
			if r.Executor != "docker-autoscaler" || r.Autoscaler.Plugin != plugin || r.Docker.Image == "" {
				t.Errorf("%s: executor %q plugin %q image %q", file, r.Executor, r.Autoscaler.Plugin, r.Docker.Image)
			}
		}
		az := loadExample(t, "docker-autoscaler-azure.toml").Runners[0].Autoscaler
		if !az.ConnectorConfig.UseStaticCredentials || az.ConnectorConfig.Password != "my-scale-set-static-password" ||
			az.PluginConfig["subscription_id"] != "9b3c4602-cde2-4089-bed8-889e5a3e7102" {
			t.Errorf("azure %+v", az)
		}
	})
	t.Run("docker machine", func(t *testing.T) {
		c := loadExample(t, "docker-machine-aws.toml")
		m := c.Runners[1].Machine
		if m == nil || m.IdleCount != 10 || m.IdleScaleFactor != 1.0 || m.MaxBuilds != 250 || len(m.Autoscaling) != 2 ||
			m.Autoscaling[0].Periods[0] != "* * 9-17 * * mon-fri *" || m.Autoscaling[1].Timezone != "UTC" {
			t.Errorf("machine %+v", m)
		}
		o := loadExample(t, "docker-machine-offpeak-cache.toml").Runners[0]
		if len(o.Machine.OffPeakPeriods) != 2 || o.Cache == nil || o.Cache.Path != "/node_modules" {
			t.Errorf("offpeak %+v cache %+v", o.Machine, o.Cache)
		}
	})
	t.Run("kubernetes", func(t *testing.T) {
		r := loadExample(t, "kubernetes-helm.toml").Runners[0]
		if r.Kubernetes["image"] != "alpine" {
			t.Errorf("kubernetes table not kept: %v", r.Kubernetes)
		}
	})
}

func TestConnectorKey(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), []byte("PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	cc := ConnectorConfig{KeyPath: "key.pem", Username: "u", Protocol: "ssh", Timeout: Duration{time.Minute}}
	pc, err := cc.Provider(dir)
	if err != nil || string(pc.Key) != "PEM" || pc.Username != "u" || pc.Timeout != time.Minute || pc.Protocol != "ssh" {
		t.Fatalf("Provider = %+v, %v", pc, err)
	}
	cc.KeyPath = "missing.pem"
	_, err = cc.Provider(dir)
	if err == nil || !strings.HasPrefix(err.Error(), "reading instance group connector key: ") || !strings.Contains(err.Error(), "missing.pem") {
		t.Fatalf("missing key error = %v", err)
	}
	cc.KeyPath = ""
	if k, err := cc.ReadKey(dir); k != nil || err != nil {
		t.Fatalf("no key_path: %q %v", k, err)
	}
}

func TestDefaults(t *testing.T) {
	var a Autoscaler
	tests := []struct {
		name      string
		got, want any
	}{
		{"capacity", a.CapacityPerInstanceOrDefault(), 1},
		{"acquire timeout", a.InstanceAcquireTimeoutOrDefault(), 15 * time.Minute},
		{"update interval", a.UpdateIntervalOrDefault(), time.Minute},
		{"update when expecting", a.UpdateIntervalWhenExpectingOrDefault(), 2 * time.Second},
		{"deletion retry", a.DeletionRetryIntervalOrDefault(), time.Minute},
		{"shutdown interval", a.ShutdownDeletionIntervalOrDefault(), 10 * time.Second},
		{"shutdown retries", a.ShutdownDeletionRetriesOrDefault(), 3},
		{"failure threshold", a.FailureThresholdOrDefault(), 3},
		{"reservation throttling", a.ReservationThrottlingEnabled(), true},
		{"burst without max", a.ScaleThrottleBurst(), 100},
		{"state dir", a.StateStorageDir("/etc/runner"), "/etc/runner/.taskscaler"},
		{"concurrent", (&Config{}).ConcurrentOrDefault(), 1},
		{"check interval", (&Config{}).CheckIntervalOrDefault(), 3 * time.Second},
		{"shell", (&Runner{}).ShellOrDefault(), "bash"},
		{"request concurrency", (&Runner{}).RequestConcurrencyOrDefault(), 1},
		{"preemptive without idle", (&Policy{}).Preemptive(), false},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	off := false
	b := Autoscaler{MaxInstances: 7, ReservationThrottling: &off, ScaleThrottle: ScaleThrottle{Limit: -1},
		InstanceAcquireTimeout: Duration{time.Minute}}
	if b.ScaleThrottleBurst() != 7 || b.ReservationThrottlingEnabled() || b.InstanceAcquireTimeoutOrDefault() != time.Minute {
		t.Errorf("explicit values not kept: %+v", b)
	}
	if _, unlimited := b.ScaleThrottleLimit(); !unlimited {
		t.Error("limit -1 must mean unlimited")
	}
	if js, err := (&Autoscaler{}).PluginConfigJSON(); err != nil || string(js) != "{}" {
		t.Errorf("empty plugin config JSON = %s, %v", js, err)
	}
}
