package aws

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/flotilla-ci/flotilla/sdk/doctor"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"

	"github.com/flotilla-ci/flotilla/sdk/instancegroup"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
)

// Finding and Severity are the SDK's doctor vocabulary (sdk/doctor).
type (
	Finding  = doctor.Finding
	Severity = doctor.Severity
)

// The severities: an error fails Init, a warning is logged.
const (
	SeverityOK      = doctor.OK
	SeverityWarning = doctor.Warning
	SeverityError   = doctor.Error
)

// probeInstanceID is an instance ID that exists nowhere: permission probes use it so
// that a permitted call fails harmlessly with "not found" instead of acting.
const probeInstanceID = "i-00000000000000000"

// Doctor checks the group's settings and the permissions the plugin needs. It needs
// the configuration decoded and the clients built (as after Init, or via the doctor command).
func (g *InstanceGroup) Doctor(ctx context.Context) ([]Finding, error) {
	return instancegroup.Doctor(ctx, g.spec())
}

func (g *InstanceGroup) doctor(ctx context.Context, grp astypes.AutoScalingGroup) []Finding {
	var out []Finding
	add := func(check string, sev Severity, msg, fix string) {
		out = append(out, Finding{Check: check, Severity: sev, Message: msg, Fix: fix})
	}
	ok := func(check, msg string) { add(check, SeverityOK, msg, "") }

	protected := aws.ToBool(grp.NewInstancesProtectedFromScaleIn)
	if protected {
		ok("scale-in-protection", "new instances are protected from scale-in")
	} else {
		add("scale-in-protection", SeverityWarning,
			"new instances are not protected from scale-in: if the desired capacity is lowered outside the plugin, the group picks instances to terminate itself, possibly ones running jobs",
			"enable NewInstancesProtectedFromScaleIn (aws autoscaling update-auto-scaling-group --new-instances-protected-from-scale-in)")
	}
	rebalanceSuspended := false
	for _, p := range grp.SuspendedProcesses {
		if aws.ToString(p.ProcessName) == "AZRebalance" {
			rebalanceSuspended = true
		}
	}
	switch {
	case rebalanceSuspended:
		ok("az-rebalance", "the AZRebalance process is suspended")
	case protected:
		add("az-rebalance", SeverityWarning, "the AZRebalance process is active: the group launches and terminates instances to balance zones",
			"aws autoscaling suspend-processes --scaling-processes AZRebalance")
	default:
		add("az-rebalance", SeverityError, "the AZRebalance process is active and instances are not protected: rebalancing terminates instances that run jobs",
			"aws autoscaling suspend-processes --scaling-processes AZRebalance")
	}
	pol, err := g.as.DescribePolicies(ctx, &autoscaling.DescribePoliciesInput{AutoScalingGroupName: aws.String(g.Name)})
	switch {
	case err != nil:
		add("permission:autoscaling:DescribePolicies", SeverityError, "cannot list the group's scaling policies: "+err.Error(),
			"grant autoscaling:DescribePolicies (see `fleeting-plugin-aws iam-policy`)")
	case len(pol.ScalingPolicies) > 0:
		var names []string
		for _, p := range pol.ScalingPolicies {
			names = append(names, aws.ToString(p.PolicyName))
		}
		add("scaling-policies", SeverityError, fmt.Sprintf("the group has scaling policies (%s): they change the desired capacity behind the plugin's back", strings.Join(names, ", ")),
			"delete them: aws autoscaling delete-policy --auto-scaling-group-name "+g.Name+" --policy-name <name>")
	default:
		ok("scaling-policies", "the group has no scaling policies")
	}
	if m := aws.ToInt32(grp.MinSize); m > 0 {
		add("min-size", SeverityWarning, fmt.Sprintf("the group's MinSize is %d: those instances are never removed, and the plugin cannot terminate below it", m),
			"set MinSize to 0 and let the runner's idle settings keep instances")
	} else {
		ok("min-size", "MinSize is 0")
	}

	// Permission probes: each call is one that a permitted caller sees fail harmlessly.
	// Probes that name a made-up instance cannot match a policy scoped to the group's
	// instances, so their denial is only a warning (strict false).
	probe := func(action string, err error, strict bool, allowed ...string) {
		code := apiCode(err)
		for _, a := range allowed {
			if code == a {
				ok("permission:"+action, "allowed")
				return
			}
		}
		if err == nil {
			ok("permission:"+action, "allowed")
			return
		}
		if code == "AccessDenied" || code == "AccessDeniedException" || code == "UnauthorizedOperation" || code == "UnauthorizedAccess" {
			fix := "grant " + action + " (see `fleeting-plugin-aws iam-policy --name " + g.Name + "`)"
			if !strict {
				add("permission:"+action, SeverityWarning, "denied for a probe with a made-up instance ID (a policy scoped by instance tags can deny that and still allow the real call): "+err.Error(), fix)
				return
			}
			add("permission:"+action, SeverityError, "denied: "+err.Error(), fix)
			return
		}
		add("permission:"+action, SeverityWarning, "could not be checked: "+err.Error(), "")
	}
	maxSize := aws.ToInt32(grp.MaxSize)
	_, err = g.as.SetDesiredCapacity(ctx, &autoscaling.SetDesiredCapacityInput{AutoScalingGroupName: aws.String(g.Name),
		DesiredCapacity: aws.Int32(maxSize + 1)}) // above MaxSize: refused as invalid when permitted
	probe("autoscaling:SetDesiredCapacity", err, true, "ValidationError")
	_, err = g.as.TerminateInstanceInAutoScalingGroup(ctx, &autoscaling.TerminateInstanceInAutoScalingGroupInput{
		InstanceId: aws.String(probeInstanceID), ShouldDecrementDesiredCapacity: aws.Bool(true)})
	probe("autoscaling:TerminateInstanceInAutoScalingGroup", err, false, "ValidationError")
	_, err = g.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{DryRun: aws.Bool(true)})
	probe("ec2:DescribeInstances", err, true, "DryRunOperation")
	if !g.Settings.UseStaticCredentials {
		_, err = g.connect.SendSSHPublicKey(ctx, &ec2instanceconnect.SendSSHPublicKeyInput{InstanceId: aws.String(probeInstanceID),
			InstanceOSUser: aws.String("ec2-user"), SSHPublicKey: aws.String("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPROBEPROBEPROBEPROBEPROBEPROBEPROBEPROBEPRO")})
		probe("ec2-instance-connect:SendSSHPublicKey", err, false, "EC2InstanceNotFoundException", "InvalidArgsException")
	}
	return out
}

// Commands are the plugin binary's extra subcommands: doctor and iam-policy.
func (g *InstanceGroup) Commands() []plugin.Command {
	return []plugin.Command{
		instancegroup.DoctorCommand(&g.Base, "check the Auto Scaling group's settings and the permissions the plugin needs", g.spec()),
		{Name: "iam-policy", Usage: "print the least-privilege IAM policy for a group (--name NAME)", Run: runIAMPolicy},
	}
}

// IAMPolicy returns the least-privilege IAM policy document for the plugin on group
// name. Region and account narrow the resource ARNs ("*" when empty). Describe calls
// support no resource-level permissions, so they are allowed on "*"; the mutating ones
// are limited to the group, and Instance Connect to instances tagged with the group.
func IAMPolicy(name, region, account string, instanceConnect bool) ([]byte, error) {
	if name == "" {
		return nil, errors.New("--name is required: the Auto Scaling group's name")
	}
	if region == "" {
		region = "*"
	}
	if account == "" {
		account = "*"
	}
	type statement struct {
		Sid       string         `json:"Sid"`
		Effect    string         `json:"Effect"`
		Action    []string       `json:"Action"`
		Resource  string         `json:"Resource"`
		Condition map[string]any `json:"Condition,omitempty"`
	}
	doc := struct {
		Version   string      `json:"Version"`
		Statement []statement `json:"Statement"`
	}{Version: "2012-10-17", Statement: []statement{
		{Sid: "FlotillaDescribe", Effect: "Allow", Resource: "*", Action: []string{
			"autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribePolicies", "ec2:DescribeInstances"}},
		{Sid: "FlotillaScaleGroup", Effect: "Allow", Action: []string{
			"autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"},
			Resource: fmt.Sprintf("arn:aws:autoscaling:%s:%s:autoScalingGroup:*:autoScalingGroupName/%s", region, account, name)},
	}}
	if instanceConnect {
		doc.Statement = append(doc.Statement, statement{Sid: "FlotillaInstanceConnect", Effect: "Allow",
			Action:    []string{"ec2-instance-connect:SendSSHPublicKey"},
			Resource:  fmt.Sprintf("arn:aws:ec2:%s:%s:instance/*", region, account),
			Condition: map[string]any{"StringEquals": map[string]string{"aws:ResourceTag/" + tagGroupName: name}}})
	}
	return json.MarshalIndent(doc, "", "  ")
}

func runIAMPolicy(_ context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("iam-policy", flag.ContinueOnError)
	fs.SetOutput(stdout)
	name := fs.String("name", "", "Auto Scaling group name (required)")
	region := fs.String("region", "", "region (default: any)")
	account := fs.String("account", "", "AWS account ID (default: any)")
	static := fs.Bool("static-credentials", false, "the connector uses static credentials: leave out Instance Connect")
	if err := fs.Parse(args); err != nil {
		return err
	}
	out, err := IAMPolicy(*name, *region, *account, !*static)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}
