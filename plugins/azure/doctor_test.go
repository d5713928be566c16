package azure

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/azurefake"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func TestDoctor(t *testing.T) {
	const (
		write  = "Microsoft.Compute/virtualMachineScaleSets/write"
		del    = "Microsoft.Compute/virtualMachineScaleSets/delete/action"
		pips   = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/ipConfigurations/publicIPAddresses/read"
		insght = "Microsoft.Insights/autoscalesettings/read"
	)
	cases := []struct {
		name     string
		settings cloudsim.Settings
		scaleSet azurefake.ScaleSetOptions
		deny     []string
		inject   string // an operation that fails with 500
		errors   []string
		warnings []string
	}{
		{name: "recommended setup"},
		{name: "overprovision", settings: cloudsim.Settings{Overprovision: true}, errors: []string{"overprovision"}},
		{name: "flexible orchestration", scaleSet: azurefake.ScaleSetOptions{OrchestrationMode: "Flexible"}, errors: []string{"orchestration-mode"}},
		{name: "automatic upgrades", scaleSet: azurefake.ScaleSetOptions{UpgradeMode: "Automatic"}, warnings: []string{"upgrade-policy"}},
		{name: "rolling upgrades", scaleSet: azurefake.ScaleSetOptions{UpgradeMode: "Rolling"}, warnings: []string{"upgrade-policy"}},
		{name: "autoscale setting", settings: cloudsim.Settings{Policies: []string{"cpu-autoscale"}}, errors: []string{"autoscale-settings"}},
		{name: "autoscale settings not readable", deny: []string{insght},
			warnings: []string{"autoscale-settings", "permission:" + insght}},
		{name: "cannot scale", deny: []string{write, del},
			errors: []string{"permission:" + write, "permission:" + del}},
		{name: "no public IP read", deny: []string{pips}, warnings: []string{"permission:" + pips}},
		{name: "permissions unreadable", inject: "Permissions.List", warnings: []string{"permissions"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 10, Settings: c.settings}, ScaleSet: c.scaleSet})
			for _, a := range c.deny {
				env.Fake.Deny(a)
			}
			if c.inject != "" {
				env.Cloud.Inject(c.inject, -1, &cloudsim.Error{Kind: cloudsim.KindInternal, Message: "boom"})
			}
			g := New()
			if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
				t.Fatal(err)
			}
			g.Log = hclog.NewNullLogger()
			if err := g.connectClients(); err != nil {
				t.Fatal(err)
			}
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
			g2 := New()
			_ = plugin.DecodeConfig(env.PluginConfig, g2)
			_, ierr := g2.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: static})
			if len(c.errors) > 0 {
				if !errors.Is(ierr, provider.ErrInvalidConfig) || !strings.Contains(ierr.Error(), c.errors[0]) {
					t.Errorf("Init = %v; want ErrInvalidConfig naming %s", ierr, c.errors[0])
				}
			} else if ierr != nil {
				t.Errorf("Init = %v", ierr)
			}
			// The checks changed nothing.
			if grp, _ := env.Cloud.GetGroup("ci"); grp.Desired != 0 {
				t.Errorf("capacity changed by the doctor: %d", grp.Desired)
			}
			calls := env.Cloud.Calls()
			if calls["VirtualMachineScaleSets.Update"]+calls["VirtualMachineScaleSets.DeleteInstances"] != 0 {
				t.Errorf("the doctor made mutating calls: %v", calls)
			}
		})
	}
}

func TestDoctorCommand(t *testing.T) {
	cases := []struct {
		name     string
		settings cloudsim.Settings
		args     func(env *azurefake.Env) []string
		wantErr  string
		want     []string
	}{
		{"healthy", cloudsim.Settings{}, func(env *azurefake.Env) []string { return []string{"--config", string(env.PluginConfig)} }, "",
			[]string{"OK      overprovision", "OK      permission:Microsoft.Compute/virtualMachineScaleSets/write"}},
		{"overprovision", cloudsim.Settings{Overprovision: true}, func(env *azurefake.Env) []string { return []string{"--config", string(env.PluginConfig)} },
			"1 check(s) failed: overprovision", []string{"ERROR   overprovision", "fix: az vmss update --resource-group flotilla-rg --name ci --set overprovision=false"}},
		{"json", cloudsim.Settings{}, func(env *azurefake.Env) []string { return []string{"--json", "--config", string(env.PluginConfig)} }, "",
			[]string{`"check": "orchestration-mode"`}},
		{"missing flags", cloudsim.Settings{}, func(*azurefake.Env) []string { return []string{"--name", "ci"} }, "plugin_config.subscription_id: required", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := azurefake.Start(t, azurefake.EnvOptions{Group: cloudsim.Group{Name: "ci", Max: 5, Settings: c.settings}})
			var cmd plugin.Command
			for _, x := range New().Commands() {
				if x.Name == "doctor" {
					cmd = x
				}
			}
			var out bytes.Buffer
			err := cmd.Run(context.Background(), c.args(env), &out)
			if (c.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
				t.Errorf("doctor = %v, want error %q", err, c.wantErr)
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if c.name == "json" {
				var f []Finding
				if err := json.Unmarshal(out.Bytes(), &f); err != nil || len(f) < 5 {
					t.Errorf("--json output %q: %v", out.String(), err)
				}
			}
		})
	}
}

func TestMatchActions(t *testing.T) {
	cases := []struct {
		patterns []string
		action   string
		want     bool
	}{
		{[]string{"*"}, "Microsoft.Compute/virtualMachineScaleSets/write", true},
		{[]string{"Microsoft.Compute/*"}, "Microsoft.Compute/virtualMachineScaleSets/write", true},
		{[]string{"microsoft.compute/virtualmachinescalesets/*/read"}, "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read", true},
		{[]string{"Microsoft.Compute/*/read"}, "Microsoft.Compute/virtualMachineScaleSets/write", false},
		{[]string{"Microsoft.Network/*"}, "Microsoft.Compute/virtualMachineScaleSets/read", false},
		{nil, "Microsoft.Compute/virtualMachineScaleSets/read", false},
	}
	for _, c := range cases {
		if got := matchAny(c.patterns, c.action); got != c.want {
			t.Errorf("matchAny(%v, %s) = %v, want %v", c.patterns, c.action, got, c.want)
		}
	}
}
