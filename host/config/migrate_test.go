package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConvertPeriod(t *testing.T) {
	tests := []struct {
		in, want string
		notes    []string // fragments, one per expected note
		err      bool
	}{
		{in: "* 9-17 * * mon-fri", want: "* 9-17 * * mon-fri"},
		{in: "* * 9-17 * * mon-fri *", want: "* 9-17 * * mon-fri"},
		{in: "* * * * * sat,sun *", want: "* * * * sat,sun"},
		{in: "* * 0-9,18-23 * * mon-fri *", want: "* 0-9,18-23 * * mon-fri"},
		{in: "*/30 * 9-17 * * MON-FRI *", want: "* 9-17 * * mon-fri", notes: []string{`seconds field "*/30"`}},
		{in: "0 0 8 * * * 2027", want: "0 8 * * *", notes: []string{`seconds field "0"`, `year restriction "2027"`}},
		{in: "* 8 * * 1-5 2026", want: "* 8 * * 1-5", notes: []string{`year restriction "2026"`}},
		{in: "* 8 * * *  *", want: "* 8 * * *"},
		{in: "* * ? * mon", want: "* * * * mon"},
		{in: "@daily", want: "0 0 * * *"},
		{in: "@hourly", want: "0 * * * *"},
		{in: "@reboot", err: true},
		{in: "* *", err: true},
		{in: "* * * * * * * *", err: true},
		{in: "* 25 * * *", err: true},
		{in: "* * L * *", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, notes, err := ConvertPeriod(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v, want error %v", err, tt.err)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			if len(notes) != len(tt.notes) {
				t.Fatalf("notes %q, want %d", notes, len(tt.notes))
			}
			for i := range notes {
				if !strings.Contains(notes[i], tt.notes[i]) {
					t.Errorf("note %q lacks %q", notes[i], tt.notes[i])
				}
			}
		})
	}
}

func TestMigrate(t *testing.T) {
	seed, err := os.ReadFile(filepath.Join(examplesDir, "docker-machine-aws.toml"))
	if err != nil {
		t.Fatal(err)
	}
	offpeak, err := os.ReadFile(filepath.Join(examplesDir, "docker-machine-offpeak-cache.toml"))
	if err != nil {
		t.Fatal(err)
	}
	type check func(t *testing.T, c *Config)
	tests := []struct {
		name     string
		in       string
		migrated int
		warnings []string // fragments that must each appear in some warning
		absent   []string // fragments that no warning may contain
		check    check
	}{
		{
			name: "seed: static and dynamic AWS scalers", in: string(seed), migrated: 2,
			warnings: []string{
				`runners[0] "static-scaler": MaxGrowthRate = 1 became scale_throttle`,
				`MachineOptions "amazonec2-instance-type=m6i.large" has no autoscaler equivalent`,
				`create the AWS Auto Scaling group "dynamic-spot"`,
				`autoscaling[0]: IdleScaleFactor = 1.5: docker+machine rounds`,
				"concurrent = 40 caps the jobs below what the autoscaled runners can run (50)",
			},
			check: func(t *testing.T, c *Config) {
				if c.Concurrent != 40 {
					t.Errorf("concurrent changed to %d", c.Concurrent)
				}
				s := c.Runners[0]
				a := s.Autoscaler
				if s.Executor != "docker-autoscaler" || s.Machine != nil || a.Plugin != "aws" || a.MaxInstances != 10 ||
					a.CapacityPerInstance != 1 || a.ScaleThrottle != (ScaleThrottle{Limit: 1, Burst: 1}) {
					t.Errorf("static runner: %+v / %+v", s, a)
				}
				if a.PluginConfig["name"] != "static-ondemand" || a.PluginConfig["region"] != "eu-west-1" {
					t.Errorf("plugin_config %v", a.PluginConfig)
				}
				if a.ConnectorConfig.UseExternalAddr || a.ConnectorConfig.Username != "ubuntu" {
					t.Errorf("private address not carried over: %+v", a.ConnectorConfig)
				}
				if len(a.Policy) != 1 || a.Policy[0].IdleCount != 0 || a.Policy[0].IdleTime.Duration != 5*time.Minute {
					t.Errorf("static policy %+v", a.Policy)
				}
				if !slices.Equal(s.Environment, []string{"AWS_REGION=eu-west-1"}) || s.Token != "abcdefghijklmnopqrst" {
					t.Errorf("other runner keys lost: %+v", s)
				}
				d := c.Runners[1].Autoscaler
				if d.MaxUseCount != 250 || d.MaxInstances != 40 || len(d.Policy) != 3 {
					t.Fatalf("dynamic: %+v", d)
				}
				root, work, weekend := d.Policy[0], d.Policy[1], d.Policy[2]
				if !slices.Equal(root.Periods, []string{"* * * * *"}) || root.IdleCount != 1 || root.ScaleFactor != 1 ||
					root.ScaleFactorLimit != 10 || root.IdleTime.Duration != 10*time.Minute {
					t.Errorf("root policy %+v", root)
				}
				if !slices.Equal(work.Periods, []string{"* 9-17 * * mon-fri"}) || work.Timezone != "Europe/Amsterdam" ||
					work.IdleCount != 5 || work.ScaleFactor != 1.5 || work.ScaleFactorLimit != 20 || work.IdleTime.Duration != time.Hour {
					t.Errorf("work policy %+v", work)
				}
				if !slices.Equal(weekend.Periods, []string{"* * * * sat,sun"}) || weekend.IdleCount != 0 ||
					weekend.IdleTime.Duration != 2*time.Minute || weekend.Timezone != "UTC" {
					t.Errorf("weekend policy %+v", weekend)
				}
			},
		},
		{
			name: "seed: legacy OffPeak on virtualbox", in: string(offpeak), migrated: 1,
			warnings: []string{
				`MachineDriver "virtualbox" has no known fleeting plugin`,
				`MachineOptions "engine-registry-mirror=http://192.168.1.10:6000" became [runners.docker] registry_mirrors`,
				`unless "192.168.1.10:6000" is in its insecure-registries`,
				"OffPeak* settings have been ignored by GitLab Runner since 14.0; they are carried over as policy[1]",
				"limit = 0",
			},
			check: func(t *testing.T, c *Config) {
				a := c.Runners[0].Autoscaler
				if a.Plugin != "REPLACE-ME" || len(a.Policy) != 2 ||
					!slices.Equal(a.Policy[1].Periods, []string{"* 0-9,18-23 * * mon-fri", "* * * * sat,sun"}) {
					t.Errorf("%+v", a)
				}
				if c.Runners[0].Cache == nil || c.Runners[0].Cache.Path != "/node_modules" {
					t.Error("[runners.cache] lost")
				}
				if m := c.Runners[0].Docker.RegistryMirrors; !slices.Equal(m, []string{"http://192.168.1.10:6000"}) {
					t.Errorf("registry_mirrors = %q", m)
				}
			},
			absent: []string{"engine-registry-mirror=http://192.168.1.10:6000\" has no autoscaler equivalent"},
		},
		{
			name: "engine-registry-mirror: merged into registry_mirrors", migrated: 2,
			in: `[[runners]]
  name = "with-docker"
  executor = "docker+machine"
  limit = 1
  [runners.docker]
    image = "alpine"
    registry_mirrors = ["https://mirror.example.com"]
  [runners.machine]
    MachineDriver = "amazonec2"
    MachineOptions = ["amazonec2-region=eu-west-1", "engine-registry-mirror=https://MIRROR.example.com/",
      "engine-registry-mirror=http://127.0.0.1:5000", "engine-registry-mirror=ftp://bad.example.com"]
[[runners]]
  name = "without-docker"
  executor = "docker+machine"
  limit = 1
  [runners.machine]
    MachineDriver = "amazonec2"
    MachineOptions = ["engine-registry-mirror=mirror.internal:6000"]
`,
			warnings: []string{`runners[0] "with-docker": MachineOptions "engine-registry-mirror=ftp://bad.example.com" is not carried over to registry_mirrors: mirror "ftp://bad.example.com": scheme "ftp"`},
			absent:   []string{"has no autoscaler equivalent", "insecure-registries"},
			check: func(t *testing.T, c *Config) {
				if m := c.Runners[0].Docker.RegistryMirrors; !slices.Equal(m, []string{"https://mirror.example.com", "http://127.0.0.1:5000"}) {
					t.Errorf("with [runners.docker]: registry_mirrors = %q", m)
				}
				if c.Runners[0].Docker.Image != "alpine" {
					t.Error("[runners.docker] image lost")
				}
				if m := c.Runners[1].Docker.RegistryMirrors; !slices.Equal(m, []string{"mirror.internal:6000"}) {
					t.Errorf("without [runners.docker]: registry_mirrors = %q", m)
				}
			},
		},
		{
			name: "seconds, years and bad periods", migrated: 1,
			in: `concurrent = 5
[[runners]]
  name = "gce"
  executor = "docker+machine"
  limit = 5
  [runners.docker]
    image = "alpine"
  [runners.machine]
    IdleCount = 2
    IdleTime = 0
    MaxRemovalAttempts = 10
    MachineDriver = "google"
    MachineName = "gce-%s"
    MachineOptions = ["google-project=p1", "google-zone=europe-west1-b", "google-machine-type=n1-standard-1", "google-username=ci"]
    MachineOptionsWithName = ["google-tags=%s"]
    [[runners.machine.autoscaling]]
      Periods = ["0 * 8-18 * * mon-fri 2026", "* * 30 2 *"]
      IdleCount = 4
      IdleTime = 60
    [[runners.machine.autoscaling]]
      Periods = ["* * L * * * *"]
      IdleCount = 9
`,
			warnings: []string{
				`autoscaling[0] period "0 * 8-18 * * mon-fri 2026": seconds field "0" dropped`,
				`autoscaling[0] period "0 * 8-18 * * mon-fri 2026": year restriction "2026" dropped`,
				`autoscaling[1] period "* * L * * * *" cannot be converted and is dropped`,
				"autoscaling[1] has no usable period and is dropped",
				"MaxRemovalAttempts = 10 has no equivalent",
				`MachineOptionsWithName "google-tags=%s" has no autoscaler equivalent`,
				`MachineOptions "google-machine-type=n1-standard-1" has no autoscaler equivalent: set it on the Google Cloud instance group`,
			},
			check: func(t *testing.T, c *Config) {
				r := c.Runners[0]
				a := r.Autoscaler
				if a.Plugin != "googlecloud" || a.PluginConfig["project"] != "p1" || a.PluginConfig["zone"] != "europe-west1-b" ||
					a.PluginConfig["name"] != "gce" || a.ConnectorConfig.Username != "ci" || !a.ConnectorConfig.UseExternalAddr {
					t.Errorf("%+v", a)
				}
				if r.Docker.Image != "alpine" {
					t.Error("[runners.docker] must be unchanged")
				}
				if len(a.Policy) != 2 || a.Policy[0].IdleTime.Duration != time.Second || a.Policy[0].IdleCount != 2 ||
					!slices.Equal(a.Policy[1].Periods, []string{"* 8-18 * * mon-fri", "* * 30 2 *"}) || a.Policy[1].IdleCount != 4 {
					t.Errorf("policies %+v", a.Policy)
				}
			},
		},
		{
			name: "other runners untouched, azure", migrated: 1,
			in: `concurrent = 3
[[runners]]
  name = "keep"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
[[runners]]
  name = "az"
  executor = "docker+machine"
  limit = 2
  [runners.machine]
    IdleCount = 1
    IdleScaleFactor = 0.5
    IdleTime = 30
    MachineDriver = "azure"
    MachineOptions = ["azure-subscription-id=sub", "azure-resource-group=rg", "azure-use-private-ip"]
`,
			warnings: []string{"root values: IdleScaleFactor = 0.5"},
			check: func(t *testing.T, c *Config) {
				if c.Runners[0].Executor != "instance" || c.Runners[0].Autoscaler.Plugin != "local" {
					t.Errorf("non-machine runner changed: %+v", c.Runners[0])
				}
				a := c.Runners[1].Autoscaler
				if a.Plugin != "azure" || a.PluginConfig["subscription_id"] != "sub" || a.PluginConfig["resource_group_name"] != "rg" ||
					a.ConnectorConfig.UseExternalAddr || a.ConnectorConfig.Username != "docker-user" {
					t.Errorf("%+v", a)
				}
				p := a.Policy[0]
				if p.IdleCount != 1 || p.ScaleFactor != 0.5 || p.ScaleFactorLimit != 1 || p.IdleTime.Duration != 30*time.Second {
					t.Errorf("%+v", p)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := Migrate("in.toml", []byte(tt.in))
			if err != nil {
				t.Fatalf("Migrate: %v", err)
			}
			if res.Migrated != tt.migrated {
				t.Errorf("migrated %d, want %d", res.Migrated, tt.migrated)
			}
			all := strings.Join(res.Warnings, "\n")
			for _, w := range tt.warnings {
				if !strings.Contains(all, w) {
					t.Errorf("no warning containing %q in:\n%s", w, all)
				}
			}
			for _, w := range tt.absent {
				if strings.Contains(all, w) {
					t.Errorf("a warning contains %q:\n%s", w, all)
				}
			}
			// The output loads cleanly with this package's own loader.
			cfg, diags, err := Parse("out.toml", res.Output)
			if err != nil {
				t.Fatalf("migrated output does not load: %v\n%s", err, res.Output)
			}
			for _, d := range diags {
				// A [runners.cache.s3] without Type is carried over as it is, and
				// warned about as ignored (as GitLab Runner ignores it).
				if !strings.Contains(d.Message, "caps the jobs") && !strings.Contains(d.Message, "is ignored: Type is not set") {
					t.Errorf("unexpected diagnostic on output: %s", d)
				}
			}
			for _, r := range cfg.Runners {
				if r.Executor == ExecutorDockerMachine {
					t.Errorf("runner %q still docker+machine", r.Name)
				}
			}
			tt.check(t, cfg)
		})
	}
}

func TestMigrateErrors(t *testing.T) {
	_, err := Migrate("x.toml", []byte(okRunner))
	if !errors.Is(err, ErrNothingToMigrate) {
		t.Errorf("no docker+machine: err = %v", err)
	}
	_, err = Migrate("x.toml", []byte("[[runners]]\nexecutor = \"docker+machine\"\n[runners.machine]\nIdleTime = \"5m\"\n"))
	if _, ok := AsInvalid(err); !ok {
		t.Errorf("invalid input must report diagnostics, got %v", err)
	}
}
