// Package azurefake is a wire-level fake of the Azure Resource Manager APIs the azure
// plugin calls, backed by a cloudsim.Cloud. It is an httptest server that the unmodified
// azure-sdk-for-go clients (armcompute, armnetwork, azcore's ARM pipeline) talk to
// through the plugin's `endpoint` key, so serialisation, the bearer-token policy,
// pagination (nextLink), the retry policy (429 and 5xx) and long-running operations
// (202 + Azure-AsyncOperation polling) are all exercised.
//
// Why not armcompute's generated `fake` package (fake.VirtualMachineScaleSetsServer with
// NewServerFactoryTransport)? It was tried first and is less faithful on exactly the
// points the plugin must get right: every error it returns is wrapped as
// errorinfo.NonRetriableError, so azcore's retry policy never sees a 429 and throttling
// cannot be tested; its long-running operations use a fake-only header protocol (and
// refuse the 202 that Azure actually sends), so the real Azure-AsyncOperation poller is
// never run; and it lives inside one process, while the conformance kit and `runner exec`
// test run the plugin as a separate binary. This fake answers with the SDK's own model
// types (armcompute / armnetwork MarshalJSON), so the JSON shapes still come from the SDK.
// TestGeneratedFakeLimits pins the first two limits, so an SDK upgrade that lifts them is
// noticed.
//
// Operations (cloudsim op names in brackets; Families groups them into ARM's read and
// write throttling buckets):
//
//   - GET/PATCH .../virtualMachineScaleSets/{name} [VirtualMachineScaleSets.Get,
//     VirtualMachineScaleSets.Update]: sku.capacity is the group's desired size; PATCH
//     is a long-running operation (200 + Azure-AsyncOperation);
//   - POST .../virtualMachineScaleSets/{name}/delete [VirtualMachineScaleSets.DeleteInstances]:
//     deletes the instance IDs and lowers the capacity (202 + Azure-AsyncOperation);
//   - GET .../virtualMachineScaleSets/{name}/virtualMachines[/{id}]
//     [VirtualMachineScaleSetVMs.List, VirtualMachineScaleSetVMs.Get], paginated with
//     nextLink ($skiptoken), with the instance view ($expand=instanceView);
//   - GET .../virtualMachines/{id}/networkInterfaces
//     [NetworkInterfaces.ListVirtualMachineScaleSetVMNetworkInterfaces] and
//     .../ipConfigurations/{ip}/publicIPAddresses
//     [PublicIPAddresses.ListVirtualMachineScaleSetVMPublicIPAddresses];
//   - GET .../providers/Microsoft.Compute/locations/{loc}/operations/{id} [Operations.Get];
//   - GET .../providers/Microsoft.Insights/autoscalesettings [AutoscaleSettings.List]:
//     one enabled setting per cloudsim Settings.Policies entry, targeting the scale set;
//   - GET {scale set}/providers/Microsoft.Authorization/permissions [Permissions.List]:
//     actions "*" minus the actions denied with Deny.
//
// States: pending → provisioningState Creating / PowerState/starting; running →
// Succeeded / PowerState/running; terminating → Deleting / PowerState/stopping;
// terminated VMs are no longer listed (404 on Get). Settings.Overprovision maps to
// properties.overprovision; ScaleSetOptions set the orchestration and upgrade modes.
// A VM with an SSH endpoint carries the tags flotilla:ssh-port and flotilla:ssh-host-key.
//
// Errors ({"error":{"code","message"}}): KindThrottled → 429 TooManyRequests (with
// Retry-After when RetryAfter is set); KindDenied or a denied action → 403
// AuthorizationFailed; KindNotFound → 404 ResourceNotFound (NotFound for instances);
// KindInvalid → 400 InvalidParameter; KindCapacity → 409 OperationNotAllowed (quota);
// KindInternal → 500 InternalServerError. An injected *cloudsim.Error with a Code is
// sent with that code.
package azurefake

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

// Tags the fake puts on a VM served by an SSH backend; the plugin uses them when present.
const (
	TagSSHPort    = "flotilla:ssh-port"
	TagSSHHostKey = "flotilla:ssh-host-key"
)

// Token is the bearer token the fake accepts; PluginConfig hands it to the plugin.
const Token = "cloudsim-azure-token"

// Families maps the fake's operations to ARM's throttling buckets: reads and writes are
// counted separately per subscription.
var Families = map[string]string{
	"VirtualMachineScaleSets.Get":                                     "arm-read",
	"VirtualMachineScaleSetVMs.List":                                  "arm-read",
	"VirtualMachineScaleSetVMs.Get":                                   "arm-read",
	"NetworkInterfaces.ListVirtualMachineScaleSetVMNetworkInterfaces": "arm-read",
	"PublicIPAddresses.ListVirtualMachineScaleSetVMPublicIPAddresses": "arm-read",
	"Operations.Get":                          "arm-read",
	"AutoscaleSettings.List":                  "arm-read",
	"Permissions.List":                        "arm-read",
	"VirtualMachineScaleSets.Update":          "arm-write",
	"VirtualMachineScaleSets.DeleteInstances": "arm-write",
}

// Actions maps each operation to the Azure RBAC action it needs; Deny refuses them.
var Actions = map[string]string{
	"VirtualMachineScaleSets.Get":                                     "Microsoft.Compute/virtualMachineScaleSets/read",
	"VirtualMachineScaleSets.Update":                                  "Microsoft.Compute/virtualMachineScaleSets/write",
	"VirtualMachineScaleSets.DeleteInstances":                         "Microsoft.Compute/virtualMachineScaleSets/delete/action",
	"VirtualMachineScaleSetVMs.List":                                  "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
	"VirtualMachineScaleSetVMs.Get":                                   "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
	"NetworkInterfaces.ListVirtualMachineScaleSetVMNetworkInterfaces": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/read",
	"PublicIPAddresses.ListVirtualMachineScaleSetVMPublicIPAddresses": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/ipConfigurations/publicIPAddresses/read",
	"AutoscaleSettings.List":                                          "Microsoft.Insights/autoscalesettings/read",
	"Operations.Get":                                                  "Microsoft.Compute/locations/operations/read",
}

// NewID names VMs as a Uniform scale set numbers its instances: "0", "1", ….
func NewID(n int) string { return strconv.Itoa(n - 1) }

// ScaleSetOptions are a scale set's settings that cloudsim does not model.
type ScaleSetOptions struct {
	// OrchestrationMode is "Uniform" (default) or "Flexible".
	OrchestrationMode string
	// UpgradeMode is "Manual" (default), "Automatic" or "Rolling".
	UpgradeMode string
	// NoPublicIP leaves the VMs without a public IP address.
	NoPublicIP bool
	// SinglePlacementGroup limits the scale set to 100 VMs (Azure's default: true).
	SinglePlacementGroup *bool
}

// Fake is a running fake Azure Resource Manager endpoint.
type Fake struct {
	Cloud  *cloudsim.Cloud
	Server *httptest.Server
	// Subscription, ResourceGroup and Location the fake serves.
	Subscription, ResourceGroup, Location string
	// PageSize caps VM list pages (default 100), so tests can force pagination.
	PageSize int
	// RetryAfter, when > 0, is sent as Retry-After (seconds) with 429 responses.
	RetryAfter int
	// OperationPolls is how many polls a long-running operation answers InProgress
	// (with retry-after-ms: 1) before its outcome; default 0, done at the first poll.
	// The cloud acts on the request at once either way.
	OperationPolls int

	mu       sync.Mutex
	failNext []*cloudsim.Error // outcomes for the next long-running operations
	options  map[string]ScaleSetOptions
	known    map[string]bool
	denied   map[string]bool
	ops      map[string]*operation
	opSeq    int
	requests []string // "METHOD path" of every request, for wire tests
}

type operation struct {
	polls int // InProgress answers left
	err   *cloudsim.Error
}

// New serves cloud over HTTP on 127.0.0.1 for subscription "00000000-…-0001", resource
// group "flotilla-rg" in "westeurope". Close the Fake when done.
func New(cloud *cloudsim.Cloud) *Fake {
	f := &Fake{Cloud: cloud, PageSize: 100,
		Subscription: "00000000-0000-0000-0000-000000000001", ResourceGroup: "flotilla-rg", Location: "westeurope",
		options: map[string]ScaleSetOptions{}, known: map[string]bool{}, denied: map[string]bool{}, ops: map[string]*operation{}}
	f.Server = httptest.NewServer(f)
	return f
}

// URL is the ARM endpoint to give the plugin (`endpoint`).
func (f *Fake) URL() string { return f.Server.URL }

// Close stops the server (not the cloud).
func (f *Fake) Close() { f.Server.Close() }

// SetOptions sets a scale set's options.
func (f *Fake) SetOptions(scaleSet string, o ScaleSetOptions) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.options[scaleSet] = o
	f.known[scaleSet] = true
}

// Register makes a cloudsim group a scale set of the fake's resource group, so that
// resource-group listings (autoscale settings) include it. Start registers its group.
func (f *Fake) Register(scaleSet string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.known[scaleSet] = true
}

// Deny makes the fake refuse an RBAC action (one of Actions' values) with 403
// AuthorizationFailed, and leaves it out of the permissions it reports.
func (f *Fake) Deny(action string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.denied[action] = true
}

// Requests returns "METHOD path" of every request served so far.
func (f *Fake) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// PluginConfig returns the plugin_config JSON that points the azure plugin at this fake
// for scaleSet.
func (f *Fake) PluginConfig(scaleSet string) json.RawMessage {
	raw, _ := json.Marshal(map[string]string{
		"name": scaleSet, "subscription_id": f.Subscription, "resource_group_name": f.ResourceGroup,
		"endpoint": f.URL(), "access_token": Token,
	})
	return raw
}

func (f *Fake) opts(scaleSet string) ScaleSetOptions {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.options[scaleSet]
	if o.OrchestrationMode == "" {
		o.OrchestrationMode = "Uniform"
	}
	if o.UpgradeMode == "" {
		o.UpgradeMode = "Manual"
	}
	return o
}

// armError is ARM's error body.
type armError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (f *Fake) writeError(w http.ResponseWriter, status int, code, msg string) {
	var body armError
	body.Error.Code, body.Error.Message = code, msg
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-error-code", code)
	if status == http.StatusTooManyRequests && f.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// fail maps a cloudsim error to ARM's status and code.
func (f *Fake) fail(w http.ResponseWriter, err error, notFoundCode string) {
	var ce *cloudsim.Error
	if !errors.As(err, &ce) {
		f.writeError(w, http.StatusInternalServerError, "InternalServerError", err.Error())
		return
	}
	status, code := http.StatusInternalServerError, "InternalServerError"
	switch ce.Kind {
	case cloudsim.KindThrottled:
		status, code = http.StatusTooManyRequests, "TooManyRequests"
	case cloudsim.KindDenied:
		status, code = http.StatusForbidden, "AuthorizationFailed"
	case cloudsim.KindNotFound:
		status, code = http.StatusNotFound, notFoundCode
	case cloudsim.KindInvalid:
		status, code = http.StatusBadRequest, "InvalidParameter"
	case cloudsim.KindCapacity:
		status, code = http.StatusConflict, "OperationNotAllowed"
	}
	if ce.Code != "" {
		code = ce.Code
	}
	f.writeError(w, status, code, ce.Message)
}

func (f *Fake) writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		f.writeError(w, http.StatusInternalServerError, "InternalServerError", "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// call runs cloudsim's accounting and the RBAC check for op; false means it answered.
func (f *Fake) call(w http.ResponseWriter, op string) bool {
	if err := f.Cloud.Call(op); err != nil {
		f.fail(w, err, "ResourceNotFound")
		return false
	}
	f.mu.Lock()
	denied := f.denied[Actions[op]]
	f.mu.Unlock()
	if denied {
		f.writeError(w, http.StatusForbidden, "AuthorizationFailed",
			fmt.Sprintf("The client does not have authorization to perform action '%s' over scope '/subscriptions/%s/resourceGroups/%s'.", Actions[op], f.Subscription, f.ResourceGroup))
		return false
	}
	return true
}

// ServeHTTP checks the request the way ARM does (bearer token, api-version, the
// subscription and resource group) and routes it.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+Token {
		f.writeError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "The access token is missing or invalid.")
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		f.writeError(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		return
	}
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	low := make([]string, len(seg))
	for i, s := range seg {
		low[i] = strings.ToLower(s)
	}
	is := func(i int, s string) bool { return i < len(low) && low[i] == strings.ToLower(s) }
	if !is(0, "subscriptions") || len(seg) < 2 || seg[1] != f.Subscription {
		f.writeError(w, http.StatusNotFound, "SubscriptionNotFound", fmt.Sprintf("The subscription '%s' could not be found.", strings.Join(seg[1:min(2, len(seg))], "")))
		return
	}
	// /subscriptions/{s}/providers/Microsoft.Compute/locations/{loc}/operations/{id}
	if is(2, "providers") && is(3, "Microsoft.Compute") && is(4, "locations") && is(6, "operations") && len(seg) == 8 {
		f.serveOperation(w, r, seg[7])
		return
	}
	if !is(2, "resourceGroups") || len(seg) < 4 {
		f.writeError(w, http.StatusNotFound, "InvalidResourceType", "unsupported path "+r.URL.Path)
		return
	}
	if !strings.EqualFold(seg[3], f.ResourceGroup) {
		f.writeError(w, http.StatusNotFound, "ResourceGroupNotFound", fmt.Sprintf("Resource group '%s' could not be found.", seg[3]))
		return
	}
	rest, lrest := seg[4:], low[4:]
	switch {
	case len(rest) == 3 && lrest[0] == "providers" && lrest[1] == "microsoft.insights" && lrest[2] == "autoscalesettings" && r.Method == http.MethodGet:
		f.serveAutoscale(w)
	case len(rest) >= 4 && lrest[0] == "providers" && lrest[1] == "microsoft.compute" && lrest[2] == "virtualmachinescalesets":
		f.serveScaleSet(w, r, rest[3], rest[4:], lrest[4:])
	default:
		f.writeError(w, http.StatusNotFound, "InvalidResourceType", "unsupported path "+r.URL.Path)
	}
}

func (f *Fake) scaleSetID(name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachineScaleSets/%s", f.Subscription, f.ResourceGroup, name)
}

func (f *Fake) serveScaleSet(w http.ResponseWriter, r *http.Request, name string, rest, lrest []string) {
	switch {
	case len(rest) == 0 && r.Method == http.MethodGet:
		if !f.call(w, "VirtualMachineScaleSets.Get") {
			return
		}
		f.getScaleSet(w, name)
	case len(rest) == 0 && r.Method == http.MethodPatch:
		if !f.call(w, "VirtualMachineScaleSets.Update") {
			return
		}
		f.updateScaleSet(w, r, name)
	case len(rest) == 1 && lrest[0] == "delete" && r.Method == http.MethodPost:
		if !f.call(w, "VirtualMachineScaleSets.DeleteInstances") {
			return
		}
		f.deleteInstances(w, r, name)
	case len(rest) == 3 && lrest[0] == "providers" && lrest[1] == "microsoft.authorization" && lrest[2] == "permissions" && r.Method == http.MethodGet:
		if !f.call(w, "Permissions.List") {
			return
		}
		f.servePermissions(w, name)
	case len(rest) == 1 && lrest[0] == "virtualmachines" && r.Method == http.MethodGet:
		if !f.call(w, "VirtualMachineScaleSetVMs.List") {
			return
		}
		f.listVMs(w, r, name)
	case len(rest) == 2 && lrest[0] == "virtualmachines" && r.Method == http.MethodGet:
		if !f.call(w, "VirtualMachineScaleSetVMs.Get") {
			return
		}
		vm, ok := f.vm(w, name, rest[1])
		if ok {
			f.writeJSON(w, http.StatusOK, f.vmModel(name, vm, r.URL.Query().Get("$expand") == "instanceView"))
		}
	case len(rest) == 3 && lrest[0] == "virtualmachines" && lrest[2] == "networkinterfaces" && r.Method == http.MethodGet:
		if !f.call(w, "NetworkInterfaces.ListVirtualMachineScaleSetVMNetworkInterfaces") {
			return
		}
		if vm, ok := f.vm(w, name, rest[1]); ok {
			f.writeJSON(w, http.StatusOK, armnetwork.InterfaceListResult{Value: []*armnetwork.Interface{f.nic(name, vm)}})
		}
	case len(rest) == 7 && lrest[0] == "virtualmachines" && lrest[2] == "networkinterfaces" && lrest[4] == "ipconfigurations" && lrest[6] == "publicipaddresses" && r.Method == http.MethodGet:
		if !f.call(w, "PublicIPAddresses.ListVirtualMachineScaleSetVMPublicIPAddresses") {
			return
		}
		vm, ok := f.vm(w, name, rest[1])
		if !ok {
			return
		}
		out := armnetwork.PublicIPAddressListResult{Value: []*armnetwork.PublicIPAddress{}}
		if !f.opts(name).NoPublicIP && rest[3] == name+"-nic" && rest[5] == name+"-ipconfig" {
			out.Value = append(out.Value, &armnetwork.PublicIPAddress{ID: to.Ptr(f.pipID(name, vm.ID)), Name: to.Ptr(name + "-pip"),
				Properties: &armnetwork.PublicIPAddressPropertiesFormat{IPAddress: to.Ptr(vm.PublicIP)}})
		}
		f.writeJSON(w, http.StatusOK, out)
	default:
		f.writeError(w, http.StatusNotFound, "InvalidResourceType", "unsupported request "+r.Method+" "+r.URL.Path)
	}
}

func (f *Fake) group(w http.ResponseWriter, name string) (cloudsim.Group, bool) {
	g, err := f.Cloud.GetGroup(name)
	if err != nil {
		f.writeError(w, http.StatusNotFound, "ResourceNotFound",
			fmt.Sprintf("The Resource 'Microsoft.Compute/virtualMachineScaleSets/%s' under resource group '%s' was not found.", name, f.ResourceGroup))
		return g, false
	}
	return g, true
}

func (f *Fake) scaleSetModel(g cloudsim.Group) *armcompute.VirtualMachineScaleSet {
	o := f.opts(g.Name)
	spg := true
	if o.SinglePlacementGroup != nil {
		spg = *o.SinglePlacementGroup
	}
	var zones []*string
	if len(g.Settings.Zones) > 1 {
		for _, z := range g.Settings.Zones {
			zones = append(zones, to.Ptr(z))
		}
	}
	return &armcompute.VirtualMachineScaleSet{
		ID:       to.Ptr(f.scaleSetID(g.Name)),
		Name:     to.Ptr(g.Name),
		Type:     to.Ptr("Microsoft.Compute/virtualMachineScaleSets"),
		Location: to.Ptr(f.Location),
		Zones:    zones,
		SKU:      &armcompute.SKU{Name: to.Ptr("Standard_D2s_v3"), Tier: to.Ptr("Standard"), Capacity: to.Ptr(int64(g.Desired))},
		Properties: &armcompute.VirtualMachineScaleSetProperties{
			ProvisioningState:    to.Ptr("Succeeded"),
			Overprovision:        to.Ptr(g.Settings.Overprovision),
			OrchestrationMode:    to.Ptr(armcompute.OrchestrationMode(o.OrchestrationMode)),
			SinglePlacementGroup: to.Ptr(spg),
			UpgradePolicy:        &armcompute.UpgradePolicy{Mode: to.Ptr(armcompute.UpgradeMode(o.UpgradeMode))},
			UniqueID:             to.Ptr(fmt.Sprintf("00000000-0000-4000-8000-%012x", len(g.Name))),
		},
	}
}

func (f *Fake) getScaleSet(w http.ResponseWriter, name string) {
	g, ok := f.group(w, name)
	if ok {
		f.writeJSON(w, http.StatusOK, f.scaleSetModel(g))
	}
}

// FailNextOperation makes the next long-running operation end Failed with err's Code
// and Message once polled, as a scale-out whose VMs could not be allocated does. The
// request itself has already been acted on, as in Azure.
func (f *Fake) FailNextOperation(err *cloudsim.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = append(f.failNext, err)
}

// startOperation records a long-running operation and sets the header that points the
// SDK's poller at it.
func (f *Fake) startOperation(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.opSeq++
	id := fmt.Sprintf("op-%06d", f.opSeq)
	op := &operation{polls: f.OperationPolls}
	if len(f.failNext) > 0 {
		op.err, f.failNext = f.failNext[0], f.failNext[1:]
	}
	f.ops[id] = op
	f.mu.Unlock()
	u := fmt.Sprintf("http://%s/subscriptions/%s/providers/Microsoft.Compute/locations/%s/operations/%s?api-version=%s",
		r.Host, f.Subscription, f.Location, id, url.QueryEscape(r.URL.Query().Get("api-version")))
	w.Header().Set("Azure-AsyncOperation", u)
}

func (f *Fake) serveOperation(w http.ResponseWriter, _ *http.Request, id string) {
	if !f.call(w, "Operations.Get") {
		return
	}
	f.mu.Lock()
	op := f.ops[id]
	status := ""
	if op != nil {
		switch {
		case op.polls > 0:
			op.polls--
			status = "InProgress"
		case op.err != nil:
			status = "Failed"
		default:
			status = "Succeeded"
		}
	}
	f.mu.Unlock()
	if op == nil {
		f.writeError(w, http.StatusNotFound, "NotFound", "operation "+id+" not found")
		return
	}
	body := map[string]any{"name": id, "status": status, "startTime": f.Cloud.Now().UTC().Format("2006-01-02T15:04:05Z")}
	if status == "InProgress" {
		w.Header().Set("retry-after-ms", "1")
	}
	if status == "Failed" {
		body["error"] = map[string]string{"code": op.err.Code, "message": op.err.Message}
	}
	f.writeJSON(w, http.StatusOK, body)
}

func (f *Fake) updateScaleSet(w http.ResponseWriter, r *http.Request, name string) {
	g, ok := f.group(w, name)
	if !ok {
		return
	}
	var upd armcompute.VirtualMachineScaleSetUpdate
	body, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(body, &upd)
	}
	if err != nil {
		f.writeError(w, http.StatusBadRequest, "InvalidRequestContent", "The request content was invalid and could not be deserialized: "+err.Error())
		return
	}
	if upd.SKU != nil && upd.SKU.Capacity != nil {
		n := int(*upd.SKU.Capacity)
		switch {
		case n < 0:
			f.writeError(w, http.StatusBadRequest, "InvalidParameter", fmt.Sprintf("The value %d of parameter 'sku.capacity' is out of range.", n))
			return
		case n > g.Max || (g.Capacity > 0 && n > g.Capacity):
			limit := g.Max
			if g.Capacity > 0 {
				limit = min(limit, g.Capacity)
			}
			f.writeError(w, http.StatusConflict, "OperationNotAllowed",
				fmt.Sprintf("Operation could not be completed as it results in exceeding approved standardDSv3Family Cores quota (scale set %s may have at most %d VMs).", name, limit))
			return
		}
		if err := f.Cloud.SetDesired(name, n); err != nil {
			f.fail(w, err, "ResourceNotFound")
			return
		}
		g.Desired = n
	}
	f.startOperation(w, r)
	m := f.scaleSetModel(g)
	m.Properties.ProvisioningState = to.Ptr("Updating")
	f.writeJSON(w, http.StatusOK, m)
}

func (f *Fake) deleteInstances(w http.ResponseWriter, r *http.Request, name string) {
	if _, ok := f.group(w, name); !ok {
		return
	}
	var req armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs
	body, err := io.ReadAll(r.Body)
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil || len(req.InstanceIDs) == 0 {
		f.writeError(w, http.StatusBadRequest, "InvalidParameter", "Required parameter 'instanceIds' is missing (null).")
		return
	}
	vms, _ := f.Cloud.VMs(name)
	ids := make([]string, 0, len(req.InstanceIDs))
	for _, p := range req.InstanceIDs {
		id := ""
		if p != nil {
			id = *p
		}
		// Azure refuses the whole request when an ID is not an instance of the set.
		if !slices.ContainsFunc(vms, func(v cloudsim.VM) bool { return v.ID == id }) {
			f.writeError(w, http.StatusNotFound, "NotFound",
				fmt.Sprintf("The entity was not found in this Azure location. Instance ID %q is not part of scale set %s.", id, name))
			return
		}
		ids = append(ids, id)
	}
	if _, err := f.Cloud.Terminate(name, ids, true, "VirtualMachineScaleSets.DeleteInstances"); err != nil {
		f.fail(w, err, "NotFound")
		return
	}
	f.startOperation(w, r)
	w.WriteHeader(http.StatusAccepted)
}

// vm finds one live VM of the scale set, answering 404 when there is none.
func (f *Fake) vm(w http.ResponseWriter, name, id string) (cloudsim.VM, bool) {
	vm, err := f.Cloud.GetVM(id)
	if err != nil || vm.Group != name || !vm.State.Live() {
		f.writeError(w, http.StatusNotFound, "NotFound",
			fmt.Sprintf("The entity was not found in this Azure location. (instance %s of scale set %s)", id, name))
		return vm, false
	}
	return vm, true
}

func (f *Fake) nicID(name, id string) string {
	return fmt.Sprintf("%s/virtualMachines/%s/networkInterfaces/%s-nic", f.scaleSetID(name), id, name)
}

func (f *Fake) pipID(name, id string) string {
	return fmt.Sprintf("%s/ipConfigurations/%s-ipconfig/publicIPAddresses/%s-pip", f.nicID(name, id), name, name)
}

func (f *Fake) nic(name string, vm cloudsim.VM) *armnetwork.Interface {
	ipc := &armnetwork.InterfaceIPConfiguration{
		ID:   to.Ptr(f.nicID(name, vm.ID) + "/ipConfigurations/" + name + "-ipconfig"),
		Name: to.Ptr(name + "-ipconfig"),
		Properties: &armnetwork.InterfaceIPConfigurationPropertiesFormat{
			Primary:                   to.Ptr(true),
			PrivateIPAddress:          to.Ptr(vm.PrivateIP),
			PrivateIPAllocationMethod: to.Ptr(armnetwork.IPAllocationMethodDynamic),
		},
	}
	if !f.opts(name).NoPublicIP {
		ipc.Properties.PublicIPAddress = &armnetwork.PublicIPAddress{ID: to.Ptr(f.pipID(name, vm.ID))}
	}
	return &armnetwork.Interface{
		ID:   to.Ptr(f.nicID(name, vm.ID)),
		Name: to.Ptr(name + "-nic"),
		Properties: &armnetwork.InterfacePropertiesFormat{
			Primary:          to.Ptr(true),
			IPConfigurations: []*armnetwork.InterfaceIPConfiguration{ipc},
		},
	}
}

// vmStates maps a cloudsim state to the provisioning state and power state code.
func vmStates(s cloudsim.State) (provisioning, power string) {
	switch s {
	case cloudsim.Pending:
		return "Creating", "PowerState/starting"
	case cloudsim.Running:
		return "Succeeded", "PowerState/running"
	case cloudsim.Terminating:
		return "Deleting", "PowerState/stopping"
	}
	return "Deleted", "PowerState/deallocated"
}

func (f *Fake) vmModel(name string, vm cloudsim.VM, instanceView bool) *armcompute.VirtualMachineScaleSetVM {
	prov, power := vmStates(vm.State)
	tags := map[string]*string{}
	for k, v := range vm.Tags {
		tags[k] = to.Ptr(v)
	}
	if vm.Endpoint.Port != 0 {
		tags[TagSSHPort] = to.Ptr(strconv.Itoa(vm.Endpoint.Port))
		tags[TagSSHHostKey] = to.Ptr(vm.Endpoint.HostKey)
	}
	out := &armcompute.VirtualMachineScaleSetVM{
		ID:         to.Ptr(f.scaleSetID(name) + "/virtualMachines/" + vm.ID),
		Name:       to.Ptr(name + "_" + vm.ID),
		Type:       to.Ptr("Microsoft.Compute/virtualMachineScaleSets/virtualMachines"),
		InstanceID: to.Ptr(vm.ID),
		Location:   to.Ptr(f.Location),
		Tags:       tags,
		Zones:      []*string{to.Ptr(vm.Zone)},
		SKU:        &armcompute.SKU{Name: to.Ptr("Standard_D2s_v3"), Tier: to.Ptr("Standard")},
		Properties: &armcompute.VirtualMachineScaleSetVMProperties{
			ProvisioningState:  to.Ptr(prov),
			LatestModelApplied: to.Ptr(true),
			OSProfile:          &armcompute.OSProfile{ComputerName: to.Ptr(fmt.Sprintf("%s%06s", name, vm.ID))},
			NetworkProfile: &armcompute.NetworkProfile{NetworkInterfaces: []*armcompute.NetworkInterfaceReference{
				{ID: to.Ptr(f.nicID(name, vm.ID)), Properties: &armcompute.NetworkInterfaceReferenceProperties{Primary: to.Ptr(true)}}}},
		},
	}
	if instanceView {
		out.Properties.InstanceView = &armcompute.VirtualMachineScaleSetVMInstanceView{
			Statuses: []*armcompute.InstanceViewStatus{
				{Code: to.Ptr("ProvisioningState/" + strings.ToLower(prov))},
				{Code: to.Ptr(power)},
			},
		}
	}
	return out
}

func (f *Fake) listVMs(w http.ResponseWriter, r *http.Request, name string) {
	if _, ok := f.group(w, name); !ok {
		return
	}
	vms, err := f.Cloud.VMs(name)
	if err != nil {
		f.fail(w, err, "ResourceNotFound")
		return
	}
	start := 0
	if tok := r.URL.Query().Get("$skiptoken"); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 {
			f.writeError(w, http.StatusBadRequest, "InvalidParameter", "bad $skiptoken "+tok)
			return
		}
		start = n
	}
	size := f.PageSize
	if size <= 0 {
		size = 100
	}
	expand := r.URL.Query().Get("$expand") == "instanceView"
	res := armcompute.VirtualMachineScaleSetVMListResult{Value: []*armcompute.VirtualMachineScaleSetVM{}}
	end := min(start+size, len(vms))
	for _, vm := range vms[min(start, len(vms)):end] {
		res.Value = append(res.Value, f.vmModel(name, vm, expand))
	}
	if end < len(vms) {
		q := r.URL.Query()
		q.Set("$skiptoken", strconv.Itoa(end))
		res.NextLink = to.Ptr(fmt.Sprintf("http://%s%s?%s", r.Host, r.URL.Path, q.Encode()))
	}
	f.writeJSON(w, http.StatusOK, res)
}

func (f *Fake) serveAutoscale(w http.ResponseWriter) {
	if !f.call(w, "AutoscaleSettings.List") {
		return
	}
	var out []map[string]any
	for _, name := range f.groupNames() {
		g, err := f.Cloud.GetGroup(name)
		if err != nil {
			continue
		}
		for _, p := range g.Settings.Policies {
			out = append(out, map[string]any{
				"id":   fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/microsoft.insights/autoscalesettings/%s", f.Subscription, f.ResourceGroup, p),
				"name": p, "type": "Microsoft.Insights/autoscaleSettings", "location": f.Location,
				"properties": map[string]any{"enabled": true, "targetResourceUri": f.scaleSetID(name),
					"profiles": []map[string]any{{"name": "default", "capacity": map[string]string{"minimum": "1", "maximum": "10", "default": "1"}}}},
			})
		}
	}
	if out == nil {
		out = []map[string]any{}
	}
	f.writeJSON(w, http.StatusOK, map[string]any{"value": out})
}

// groupNames lists the registered scale sets: cloudsim has no group listing.
func (f *Fake) groupNames() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.known))
	for n := range f.known {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func (f *Fake) servePermissions(w http.ResponseWriter, name string) {
	if _, ok := f.group(w, name); !ok {
		return
	}
	f.mu.Lock()
	not := []string{}
	for a := range f.denied {
		not = append(not, a)
	}
	f.mu.Unlock()
	slices.Sort(not)
	f.writeJSON(w, http.StatusOK, map[string]any{"value": []map[string]any{
		{"actions": []string{"*"}, "notActions": not, "dataActions": []string{}, "notDataActions": []string{}}}})
}
