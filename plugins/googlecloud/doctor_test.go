package googlecloud

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/gcpfake"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func TestDoctor(t *testing.T) {
	zone := []string{gcpfake.DefaultZone}
	cases := []struct {
		name     string
		settings cloudsim.Settings
		deny     []string
		crmFails bool
		static   bool
		errors   []string // checks with severity error
		warnings []string
	}{
		{name: "recommended setup"},
		{name: "autoscaler attached", settings: cloudsim.Settings{Policies: []string{"ci-autoscaler"}}, errors: []string{"autoscaling"}},
		{name: "proactive updates", settings: cloudsim.Settings{Rebalance: true}, warnings: []string{"update-policy"}},
		{name: "cannot resize or delete", deny: []string{"compute.instanceGroupManagers.update"},
			errors: []string{"permission:compute.instanceGroupManagers.update"}},
		{name: "cannot set metadata", deny: []string{"compute.instances.setMetadata", "compute.zoneOperations.get"},
			errors: []string{"permission:compute.instances.setMetadata", "permission:compute.zoneOperations.get"}},
		{name: "metadata not needed with static credentials", deny: []string{"compute.instances.setMetadata"}, static: true},
		{name: "permissions not checkable", crmFails: true, warnings: []string{"permissions"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.settings.Zones = zone
			env := gcpfake.Start(t, gcpfake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 10, Settings: c.settings}})
			env.Fake.Deny(c.deny...)
			if c.crmFails {
				env.Cloud.Inject(gcpfake.OpTestPermissions, -1, &cloudsim.Error{Kind: cloudsim.KindDenied, Message: "Cloud Resource Manager API has not been used in project flotilla-test"})
			}
			g := New()
			if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
				t.Fatal(err)
			}
			g.Settings = provider.Settings{ConnectorConfig: provider.ConnectorConfig{UseStaticCredentials: c.static}}
			g.Log = hclog.NewNullLogger()
			if err := g.connectClients(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer g.closeClients()
			findings, err := g.Doctor(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			var gotErr, gotWarn []string
			for _, f := range findings {
				switch f.Severity {
				case SeverityError:
					gotErr = append(gotErr, f.Check)
				case SeverityWarning:
					gotWarn = append(gotWarn, f.Check)
				}
				if f.Severity != SeverityOK && f.Fix == "" {
					t.Errorf("finding %s has no fix", f.Check)
				}
			}
			if !slices.Equal(sorted(gotErr), sorted(c.errors)) || !slices.Equal(sorted(gotWarn), sorted(c.warnings)) {
				t.Errorf("errors %v warnings %v; want errors %v warnings %v", gotErr, gotWarn, c.errors, c.warnings)
			}
			// Init fails exactly when the doctor finds an error, naming the check.
			ig := New()
			if err := plugin.DecodeConfig(env.PluginConfig, ig); err != nil {
				t.Fatal(err)
			}
			_, ierr := ig.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: provider.ConnectorConfig{UseStaticCredentials: c.static}})
			if len(c.errors) > 0 {
				if !errors.Is(ierr, provider.ErrInvalidConfig) || !strings.Contains(ierr.Error(), c.errors[0]) {
					t.Errorf("Init = %v; want ErrInvalidConfig naming %s", ierr, c.errors[0])
				}
			} else if ierr != nil {
				t.Errorf("Init = %v", ierr)
			}
			// The checks changed nothing.
			calls := env.Cloud.Calls()
			if calls[gcpfake.OpResize]+calls[gcpfake.OpDeleteInstances]+calls[gcpfake.OpSetMetadata] != 0 {
				t.Errorf("the doctor made mutating calls: %v", calls)
			}
		})
	}
}

func TestDoctorCommand(t *testing.T) {
	zone := []string{gcpfake.DefaultZone}
	cases := []struct {
		name    string
		group   cloudsim.Group
		wantErr string
		want    []string
	}{
		{"healthy", cloudsim.Group{Name: "ci", Max: 5, Settings: cloudsim.Settings{Zones: zone}}, "",
			[]string{"OK      autoscaling", "OK      single-zone", "OK      permission:compute.instanceGroupManagers.update"}},
		{"autoscaler", cloudsim.Group{Name: "ci", Max: 5, Settings: cloudsim.Settings{Zones: zone, Policies: []string{"as1"}}},
			"1 check(s) failed: autoscaling", []string{"ERROR   autoscaling", "fix: gcloud compute instance-groups managed stop-autoscaling ci --zone " + gcpfake.DefaultZone}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := gcpfake.Start(t, gcpfake.EnvOptions{Group: c.group})
			var cmd plugin.Command
			for _, x := range New().Commands() {
				if x.Name == "doctor" {
					cmd = x
				}
			}
			var out bytes.Buffer
			err := cmd.Run(context.Background(), []string{"--config", string(env.PluginConfig)}, &out)
			if (c.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
				t.Errorf("doctor = %v, want error %q", err, c.wantErr)
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
	// Flags instead of --config: a region for a zone is refused before any call.
	var out bytes.Buffer
	err := New().doctorCommand().Run(context.Background(), []string{"--name", "ci", "--project", "p", "--zone", "europe-west1"}, &out)
	if err == nil || !strings.Contains(err.Error(), "is a region") {
		t.Errorf("doctor with a region = %v", err)
	}
}
