package azure

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"

	"github.com/flotilla-ci/flotilla/sdk/doctor"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

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

// API versions of the two ARM calls made without a generated client.
const (
	autoscaleAPIVersion   = "2022-10-01"
	permissionsAPIVersion = "2022-04-01"
)

// RequiredActions are the RBAC actions the plugin needs on the scale set. Those marked
// true are needed for every job. The public IP one is needed only when VMs have public
// addresses, the autoscale one only by the doctor, and the operation status one is
// often granted implicitly to whoever started the operation; missing ones warn.
var RequiredActions = []struct {
	Action   string
	Required bool
}{
	{"Microsoft.Compute/virtualMachineScaleSets/read", true},
	{"Microsoft.Compute/virtualMachineScaleSets/write", true},
	{"Microsoft.Compute/virtualMachineScaleSets/delete/action", true},
	{"Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read", true},
	{"Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/read", true},
	{"Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/ipConfigurations/publicIPAddresses/read", false},
	{"Microsoft.Compute/locations/operations/read", false},
	{"Microsoft.Insights/autoscalesettings/read", false},
}

// Doctor checks the scale set's settings and the permissions the plugin needs. It needs
// the configuration decoded and the clients built (as after Init, or via the doctor
// command).
func (g *InstanceGroup) Doctor(ctx context.Context) ([]Finding, error) {
	return instancegroup.Doctor(ctx, g.spec())
}

func (g *InstanceGroup) doctor(ctx context.Context, ss armcompute.VirtualMachineScaleSet) []Finding {
	var out []Finding
	add := func(check string, sev Severity, msg, fix string) {
		out = append(out, Finding{Check: check, Severity: sev, Message: msg, Fix: fix})
	}
	ok := func(check, msg string) { add(check, SeverityOK, msg, "") }
	props := ss.Properties
	if props == nil {
		props = &armcompute.VirtualMachineScaleSetProperties{}
	}
	az := fmt.Sprintf("az vmss update --resource-group %s --name %s", g.ResourceGroupName, g.Name)

	mode := "Uniform" // what Azure assumes when the field is absent (older scale sets)
	if props.OrchestrationMode != nil {
		mode = string(*props.OrchestrationMode)
	}
	if strings.EqualFold(mode, "Uniform") {
		ok("orchestration-mode", "the scale set uses Uniform orchestration")
	} else {
		add("orchestration-mode", SeverityError, fmt.Sprintf("the scale set uses %s orchestration: the plugin manages Uniform scale sets (capacity, deleteInstances and instance IDs)", mode),
			"create the scale set with --orchestration-mode Uniform (the mode cannot be changed later)")
	}

	if props.Overprovision == nil || *props.Overprovision {
		add("overprovision", SeverityError, "overprovisioning is on: Azure creates extra VMs and deletes them once enough are running, so jobs placed on an extra VM fail",
			az+" --set overprovision=false")
	} else {
		ok("overprovision", "overprovisioning is off")
	}

	upgrade := "Manual"
	if props.UpgradePolicy != nil && props.UpgradePolicy.Mode != nil {
		upgrade = string(*props.UpgradePolicy.Mode)
	}
	if strings.EqualFold(upgrade, "Manual") {
		ok("upgrade-policy", "the upgrade policy is Manual")
	} else {
		add("upgrade-policy", SeverityWarning, fmt.Sprintf("the upgrade policy is %s: a change to the scale set's model reimages or restarts VMs, including ones running jobs", upgrade),
			az+" --set upgradePolicy.mode=Manual")
	}

	if props.SinglePlacementGroup == nil || *props.SinglePlacementGroup {
		ok("placement-group", "single placement group: the scale set holds at most 100 VMs")
	} else {
		ok("placement-group", "multiple placement groups: the scale set holds up to 1000 VMs")
	}

	names, err := g.autoscaleSettings(ctx, str(ss.ID))
	switch {
	case err != nil && isDenied(err):
		add("autoscale-settings", SeverityWarning, "cannot read the resource group's autoscale settings, so one fighting the plugin would go unnoticed: "+err.Error(),
			"grant Microsoft.Insights/autoscalesettings/read on the resource group")
	case err != nil:
		add("autoscale-settings", SeverityWarning, "could not list the resource group's autoscale settings: "+err.Error(), "check the resource group in the Azure portal (Monitor > Autoscale)")
	case len(names) > 0:
		add("autoscale-settings", SeverityError, fmt.Sprintf("enabled autoscale settings target the scale set (%s): they change its capacity behind the plugin's back and pick VMs to delete themselves", strings.Join(names, ", ")),
			fmt.Sprintf("az monitor autoscale update --resource-group %s --name <name> --enabled false (or delete it)", g.ResourceGroupName))
	default:
		ok("autoscale-settings", "no enabled autoscale setting targets the scale set (manual scaling)")
	}

	allowed, err := g.permissions(ctx, str(ss.ID))
	if err != nil {
		add("permissions", SeverityWarning, "could not read the caller's permissions on the scale set: "+err.Error(),
			"check the role assignment by hand: see docs/plugin-azure.md for the actions needed")
		return out
	}
	for _, a := range RequiredActions {
		check := "permission:" + a.Action
		switch {
		case allowed(a.Action):
			ok(check, "allowed")
		case a.Required:
			add(check, SeverityError, "not allowed on the scale set", "assign a role with "+a.Action+" on the scale set (docs/plugin-azure.md has a custom role)")
		default:
			add(check, SeverityWarning, "not allowed on the scale set", "assign a role with "+a.Action+" on the scale set (docs/plugin-azure.md has a custom role)")
		}
	}
	return out
}

// autoscaleSettings returns the names of the resource group's enabled autoscale settings
// that target the scale set. armmonitor is not a dependency, so this is one raw ARM
// call through the same pipeline (credentials, retries) as the generated clients.
func (g *InstanceGroup) autoscaleSettings(ctx context.Context, scaleSetID string) ([]string, error) {
	var body struct {
		Value []struct {
			Name       string `json:"name"`
			Properties struct {
				Enabled           *bool  `json:"enabled"`
				TargetResourceURI string `json:"targetResourceUri"`
			} `json:"properties"`
		} `json:"value"`
		NextLink string `json:"nextLink"`
	}
	path := fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Insights/autoscalesettings", g.SubscriptionID, g.ResourceGroupName)
	var names []string
	next := runtime.JoinPaths(g.arm.Endpoint(), path) + "?api-version=" + autoscaleAPIVersion
	for next != "" {
		if err := g.rawGet(ctx, next, &body); err != nil {
			return nil, fmt.Errorf("list autoscale settings of resource group %s: %w", g.ResourceGroupName, err)
		}
		for _, s := range body.Value {
			if (s.Properties.Enabled == nil || *s.Properties.Enabled) && strings.EqualFold(s.Properties.TargetResourceURI, scaleSetID) {
				names = append(names, s.Name)
			}
		}
		next, body.NextLink = body.NextLink, ""
		body.Value = nil
	}
	return names, nil
}

// permissions returns a predicate telling whether the caller may perform an action on
// the scale set, from ARM's permissions listing (which any caller may read for itself).
func (g *InstanceGroup) permissions(ctx context.Context, scaleSetID string) (func(string) bool, error) {
	var body struct {
		Value []struct {
			Actions    []string `json:"actions"`
			NotActions []string `json:"notActions"`
		} `json:"value"`
	}
	u := runtime.JoinPaths(g.arm.Endpoint(), scaleSetID, "providers/Microsoft.Authorization/permissions") + "?api-version=" + permissionsAPIVersion
	if err := g.rawGet(ctx, u, &body); err != nil {
		return nil, fmt.Errorf("list permissions on scale set %s: %w", g.Name, err)
	}
	return func(action string) bool {
		// Azure grants an action when some role assignment's actions match it and that
		// same assignment's notActions do not.
		for _, p := range body.Value {
			if matchAny(p.Actions, action) && !matchAny(p.NotActions, action) {
				return true
			}
		}
		return false
	}, nil
}

func matchAny(patterns []string, action string) bool {
	for _, p := range patterns {
		re := "(?i)^" + strings.ReplaceAll(regexp.QuoteMeta(p), `\*`, ".*") + "$"
		if ok, _ := regexp.MatchString(re, action); ok {
			return true
		}
	}
	return false
}

// rawGet GETs an ARM URL through the plugin's pipeline and decodes the JSON answer.
func (g *InstanceGroup) rawGet(ctx context.Context, u string, v any) error {
	req, err := runtime.NewRequest(ctx, http.MethodGet, u)
	if err != nil {
		return err
	}
	req.Raw().Header.Set("Accept", "application/json")
	resp, err := g.arm.Pipeline().Do(req)
	if err != nil {
		return err
	}
	if !runtime.HasStatusCode(resp, http.StatusOK) {
		return runtime.NewResponseError(resp)
	}
	return runtime.UnmarshalAsJSON(resp, v)
}

// Commands are the plugin binary's extra subcommands: doctor (run as with static
// credentials, since the plugin pushes no keys).
func (g *InstanceGroup) Commands() []plugin.Command {
	return []plugin.Command{
		instancegroup.DoctorCommand(&g.Base, "check the scale set's settings and the permissions the plugin needs", g.spec()),
	}
}
