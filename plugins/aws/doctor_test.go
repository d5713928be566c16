package aws

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
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/awsfake"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func TestDoctor(t *testing.T) {
	good := cloudsim.Settings{ScaleInProtection: true}
	denied := &cloudsim.Error{Kind: cloudsim.KindDenied, Message: "User is not authorized to perform this operation"}
	cases := []struct {
		name     string
		group    cloudsim.Group
		deny     []string
		static   bool
		errors   []string // checks with severity error
		warnings []string
	}{
		{name: "recommended setup", group: cloudsim.Group{Settings: good}},
		{name: "no scale-in protection", group: cloudsim.Group{}, warnings: []string{"scale-in-protection"}},
		{name: "rebalance with protection", group: cloudsim.Group{Settings: cloudsim.Settings{ScaleInProtection: true, Rebalance: true}},
			warnings: []string{"az-rebalance"}},
		{name: "rebalance without protection", group: cloudsim.Group{Settings: cloudsim.Settings{Rebalance: true}},
			errors: []string{"az-rebalance"}, warnings: []string{"scale-in-protection"}},
		{name: "scaling policies", group: cloudsim.Group{Settings: cloudsim.Settings{ScaleInProtection: true, Policies: []string{"cpu50"}}},
			errors: []string{"scaling-policies"}},
		{name: "min size", group: cloudsim.Group{Min: 1, Desired: 1, Settings: good}, warnings: []string{"min-size"}},
		{name: "permissions denied", group: cloudsim.Group{Settings: good},
			deny:     []string{"SetDesiredCapacity", "TerminateInstanceInAutoScalingGroup", "DescribeInstances", "SendSSHPublicKey"},
			errors:   []string{"permission:autoscaling:SetDesiredCapacity", "permission:ec2:DescribeInstances"},
			warnings: []string{"permission:autoscaling:TerminateInstanceInAutoScalingGroup", "permission:ec2-instance-connect:SendSSHPublicKey"}},
		{name: "instance connect not needed with static credentials", group: cloudsim.Group{Settings: good},
			deny: []string{"SendSSHPublicKey"}, static: true},
		{name: "policies not readable", group: cloudsim.Group{Settings: good}, deny: []string{"DescribePolicies"},
			errors: []string{"permission:autoscaling:DescribePolicies"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.group.Name, c.group.Max = "ci", 10
			env := awsfake.Start(t, awsfake.EnvOptions{Group: c.group})
			for _, op := range c.deny {
				env.Cloud.Inject(op, -1, denied)
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
			_, ierr := New().initWith(t, env, c.static)
			if len(c.errors) > 0 {
				if !errors.Is(ierr, provider.ErrInvalidConfig) || !strings.Contains(ierr.Error(), c.errors[0]) {
					t.Errorf("Init = %v; want ErrInvalidConfig naming %s", ierr, c.errors[0])
				}
			} else if ierr != nil {
				t.Errorf("Init = %v", ierr)
			}
			// The probes changed nothing.
			if grp, _ := env.Cloud.GetGroup("ci"); grp.Desired != c.group.Desired {
				t.Errorf("desired capacity changed by the doctor: %d", grp.Desired)
			}
		})
	}
}

func (g *InstanceGroup) initWith(t *testing.T, env *awsfake.Env, static bool) (provider.ProviderInfo, error) {
	t.Helper()
	if err := plugin.DecodeConfig(env.PluginConfig, g); err != nil {
		t.Fatal(err)
	}
	return g.Init(context.Background(), hclog.NewNullLogger(), provider.Settings{ConnectorConfig: provider.ConnectorConfig{UseStaticCredentials: static}})
}

func TestDoctorCommand(t *testing.T) {
	cases := []struct {
		name    string
		group   cloudsim.Group
		wantErr string
		want    []string
	}{
		{"healthy", cloudsim.Group{Name: "ci", Max: 5, Settings: cloudsim.Settings{ScaleInProtection: true}}, "",
			[]string{"OK      scale-in-protection", "OK      permission:ec2:DescribeInstances"}},
		{"policies", cloudsim.Group{Name: "ci", Max: 5, Settings: cloudsim.Settings{ScaleInProtection: true, Policies: []string{"p1"}}},
			"1 check(s) failed: scaling-policies", []string{"ERROR   scaling-policies", "fix: delete them"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := awsfake.Start(t, awsfake.EnvOptions{Group: c.group})
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
}

func TestIAMPolicy(t *testing.T) {
	type stmt struct {
		Sid       string
		Effect    string
		Action    []string
		Resource  string
		Condition map[string]map[string]string
	}
	cases := []struct {
		name      string
		args      []string
		wantSids  []string
		resources map[string]string
		wantErr   string
	}{
		{"instance connect", []string{"--name", "ci-asg", "--region", "eu-west-1", "--account", "123456789012"},
			[]string{"FlotillaDescribe", "FlotillaScaleGroup", "FlotillaInstanceConnect"},
			map[string]string{
				"FlotillaDescribe":        "*",
				"FlotillaScaleGroup":      "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*:autoScalingGroupName/ci-asg",
				"FlotillaInstanceConnect": "arn:aws:ec2:eu-west-1:123456789012:instance/*",
			}, ""},
		{"static credentials", []string{"--name", "ci-asg", "--static-credentials"},
			[]string{"FlotillaDescribe", "FlotillaScaleGroup"},
			map[string]string{"FlotillaScaleGroup": "arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/ci-asg"}, ""},
		{"no name", nil, nil, nil, "--name is required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runIAMPolicy(context.Background(), c.args, &out)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("iam-policy = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var doc struct {
				Version   string
				Statement []stmt
			}
			if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out.String())
			}
			var sids []string
			actions := map[string]bool{}
			for _, s := range doc.Statement {
				sids = append(sids, s.Sid)
				if want, ok := c.resources[s.Sid]; ok && s.Resource != want {
					t.Errorf("%s resource = %s, want %s", s.Sid, s.Resource, want)
				}
				if s.Effect != "Allow" {
					t.Errorf("%s effect %s", s.Sid, s.Effect)
				}
				for _, a := range s.Action {
					actions[a] = true
				}
				if s.Sid == "FlotillaInstanceConnect" && s.Condition["StringEquals"]["aws:ResourceTag/aws:autoscaling:groupName"] != "ci-asg" {
					t.Errorf("instance connect not limited to the group's instances: %v", s.Condition)
				}
			}
			if doc.Version != "2012-10-17" || !slices.Equal(sids, c.wantSids) {
				t.Errorf("version %s, statements %v; want %v", doc.Version, sids, c.wantSids)
			}
			// Every call the plugin makes is allowed, and nothing else.
			want := []string{"autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribePolicies", "ec2:DescribeInstances",
				"autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"}
			if len(c.wantSids) == 3 {
				want = append(want, "ec2-instance-connect:SendSSHPublicKey")
			}
			if len(actions) != len(want) {
				t.Errorf("actions %v, want %v", actions, want)
			}
			for _, a := range want {
				if !actions[a] {
					t.Errorf("action %s missing", a)
				}
			}
		})
	}
}
