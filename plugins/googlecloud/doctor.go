package googlecloud

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/flotilla-ci/flotilla/sdk/doctor"

	"cloud.google.com/go/compute/apiv1/computepb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/cloudresourcemanager/v1"

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

// Permissions returns the IAM permissions the plugin needs on the project: reading and
// changing the group, reading its instances and operations, and, when the connector
// does not use static credentials, setting instance metadata for the ephemeral key.
func Permissions(staticCredentials bool) []string {
	p := []string{
		"compute.instanceGroupManagers.get",
		"compute.instanceGroupManagers.update",
		"compute.instances.get",
		"compute.zoneOperations.get",
	}
	if !staticCredentials {
		p = append(p, "compute.instances.setMetadata")
	}
	return p
}

// Doctor checks the group's settings and the permissions the plugin needs. It needs
// the configuration decoded and the clients built (as after Init, or via the doctor
// command).
func (g *InstanceGroup) Doctor(ctx context.Context) ([]Finding, error) {
	return instancegroup.Doctor(ctx, g.spec())
}

func (g *InstanceGroup) doctor(ctx context.Context, m *computepb.InstanceGroupManager) []Finding {
	var out []Finding
	add := func(check string, sev Severity, msg, fix string) {
		out = append(out, Finding{Check: check, Severity: sev, Message: msg, Fix: fix})
	}
	ok := func(check, msg string) { add(check, SeverityOK, msg, "") }
	zoneFix := fmt.Sprintf("gcloud compute instance-groups managed stop-autoscaling %s --zone %s", g.Name, g.Zone)

	if a := m.GetStatus().GetAutoscaler(); a != "" {
		add("autoscaling", SeverityError, fmt.Sprintf("autoscaler %s is attached to the group: it changes targetSize behind the plugin's back and deletes instances that run jobs", a), zoneFix)
	} else {
		ok("autoscaling", "no autoscaler is attached")
	}
	// The zonal API found the group, so it lives in one zone; a regional group is not
	// found there (Init says so).
	if z := m.GetZone(); z != "" && !strings.HasSuffix(z, "/zones/"+g.Zone) && z != g.Zone {
		add("single-zone", SeverityError, fmt.Sprintf("the group reports zone %s, not %s", z, g.Zone), "set plugin_config.zone to the group's zone")
	} else {
		ok("single-zone", "zonal group in "+g.Zone)
	}
	if t := m.GetUpdatePolicy().GetType(); t == "PROACTIVE" {
		add("update-policy", SeverityWarning, "the update policy is PROACTIVE: a new instance template makes the group recreate instances, including ones running jobs",
			fmt.Sprintf("gcloud compute instance-groups managed set-update-policy %s --zone %s --type opportunistic", g.Name, g.Zone))
	} else {
		ok("update-policy", "instances are not replaced proactively")
	}
	if m.GetTargetStoppedSize() > 0 || m.GetTargetSuspendedSize() > 0 {
		add("standby-pool", SeverityWarning, "the group keeps stopped or suspended instances (a standby pool): the plugin does not report or use them",
			fmt.Sprintf("gcloud compute instance-groups managed update %s --zone %s --standby-policy-mode manual and resize the standby pool to 0", g.Name, g.Zone))
	}

	// Permissions: Resource Manager's testIamPermissions answers for the project
	// without acting on anything.
	want := Permissions(g.Settings.UseStaticCredentials)
	// The discovery-based Resource Manager client has no retry of its own: gax.Invoke
	// gives it the same retries as the Compute calls (testIamPermissions only reads).
	var resp *cloudresourcemanager.TestIamPermissionsResponse
	err := gax.Invoke(ctx, func(ctx context.Context, _ gax.CallSettings) error {
		var err error
		resp, err = g.crm.Projects.TestIamPermissions(g.Project, &cloudresourcemanager.TestIamPermissionsRequest{Permissions: want}).Context(ctx).Do()
		return err
	}, g.retry())
	if err != nil {
		add("permissions", SeverityWarning, "could not be checked with projects.testIamPermissions: "+err.Error(),
			"enable the Cloud Resource Manager API, or check by hand that the credentials have: "+strings.Join(want, ", "))
		return out
	}
	for _, p := range want {
		if slices.Contains(resp.Permissions, p) {
			ok("permission:"+p, "granted")
			continue
		}
		add("permission:"+p, SeverityError, "not granted on project "+g.Project,
			"grant a role with "+p+" (for example roles/compute.instanceAdmin.v1) to the plugin's service account")
	}
	return out
}

// Commands are the plugin binary's extra subcommands.
func (g *InstanceGroup) Commands() []plugin.Command {
	return []plugin.Command{g.doctorCommand()}
}

// doctorCommand is `fleeting-plugin-googlecloud doctor`: flags carry plugin_config's
// keys (or --config a JSON object of it). It prints one line per check and fails on
// any error.
func (g *InstanceGroup) doctorCommand() plugin.Command {
	return instancegroup.DoctorCommand(&g.Base, "check the managed instance group's settings and the permissions the plugin needs", g.spec())
}
