// Package azure is the Flotilla provider plugin for Azure: a virtual machine scale set
// in Uniform orchestration mode is the instance group. It is built as
// fleeting-plugin-azure (cmd/fleeting-plugin-azure) and imports only sdk/ and the Azure
// SDK (azcore, armcompute, armnetwork, azidentity), like any third-party plugin.
//
// Increase raises the scale set's sku.capacity (a PATCH, a long-running operation that
// is waited for, within operation_wait); Decrease deletes the named instances with
// deleteInstances, in batches, which lowers the capacity so nothing replaces them; Update lists the scale set's VMs
// (one paginated listing with the instance view) and maps provisioning and power states;
// a VM the listing shows running is reported as creating until its own lookups (the VM,
// its network interface and public IP) show it, once per VM, since Azure's views are
// eventually consistent. ConnectInfo reads the VM's network interface for its private
// address and its public IP address, if any. Throttling (429) and server errors are retried by azcore's retry
// policy with exponential backoff and jitter, within bounds; a listing that still fails
// is an error, never a report that instances are gone. See docs/plugin-azure.md.
package azure

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"
	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/plugins/internal/visibility"
	"github.com/flotilla-ci/flotilla/sdk/instancegroup"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Version identifies this build of the plugin. Set its fields with -ldflags.
var Version = plugin.VersionInfo{Name: "fleeting-plugin-azure", Version: "0.1.0"}

// VM tags the plugin reads when present. TagSSHPort lets an image serve SSH on a port
// other than 22 (the simulated cloud sets it); TagSSHHostKey pins the host key. Azure
// copies a scale set's tags onto its VMs, so an operator can set them on the scale set.
const (
	TagSSHPort    = "flotilla:ssh-port"
	TagSSHHostKey = "flotilla:ssh-host-key"
)

// defaultDeleteBatch is how many instance IDs one deleteInstances call carries.
const defaultDeleteBatch = 100

// defaultOperationWait bounds Increase's wait for its capacity update. A scale-out's
// operation runs until the new VMs are provisioned, minutes on Azure; waiting a little
// catches fast failures (quota, allocation) without holding the runner's scaling loop.
const defaultOperationWait = 20 * time.Second

// InstanceGroup is the Azure provider. Its JSON-tagged fields are plugin_config.
type InstanceGroup struct {
	// Name is the virtual machine scale set's name.
	Name string `json:"name"`
	// SubscriptionID is the subscription that holds the scale set.
	SubscriptionID string `json:"subscription_id"`
	// ResourceGroupName is the scale set's resource group.
	ResourceGroupName string `json:"resource_group_name"`
	// Endpoint overrides the Azure Resource Manager endpoint: for tests against a fake
	// (plain http is allowed only to a loopback address).
	Endpoint string `json:"endpoint"`
	// AccessToken is a bearer token used instead of DefaultAzureCredential: for tests,
	// or a one-off `doctor` run with `az account get-access-token`.
	AccessToken string `json:"access_token"`
	// RetryMaxDelay bounds the delay between retries of a throttled or failed call;
	// default 20s. Tests set it low.
	RetryMaxDelay string `json:"retry_max_delay"`
	// RetryMaxRetries is how many times one call is retried; default 4.
	RetryMaxRetries int `json:"retry_max_retries"`
	// DeleteBatchSize is how many instances one deleteInstances call deletes; default 100.
	DeleteBatchSize int `json:"delete_batch_size"`
	// OperationWait bounds how long Increase waits for the capacity update to finish;
	// default 20s, "0s" not at all. The operation carries on in Azure either way.
	OperationWait string `json:"operation_wait"`

	// Transport replaces the SDK's HTTP transport (tests only; not configurable).
	Transport policy.Transporter `json:"-"`

	// Base holds the logger and settings (the plugin pushes no keys).
	instancegroup.Base

	scaleSets *armcompute.VirtualMachineScaleSetsClient
	vms       *armcompute.VirtualMachineScaleSetVMsClient
	nics      *armnetwork.InterfacesClient
	pips      *armnetwork.PublicIPAddressesClient
	arm       *arm.Client
	maxSize   int

	// scaling serialises Increase and Decrease: both read the capacity and change it,
	// so two at once could compute from the same stale value.
	scaling sync.Mutex

	// cleanup holds instances reported as timed out (failed provisioning, stopped):
	// the host forgets them, so the plugin deletes them itself, once.
	cleanupMu sync.Mutex
	cleanup   map[string]bool

	// seen: the VMs of the latest listing, and those whose lookups have shown them
	// running with an address.
	seen visibility.Tracker
}

// New returns an unconfigured group, as plugin.Main wants it.
func New() *InstanceGroup { return &InstanceGroup{} }

// Validate reports every configuration problem at once, each naming its key.
func (g *InstanceGroup) Validate() error {
	var p instancegroup.Problems
	p.Required("name", g.Name, "the virtual machine scale set's name")
	p.Required("subscription_id", g.SubscriptionID, "the subscription ID that holds the scale set")
	p.Required("resource_group_name", g.ResourceGroupName, "the scale set's resource group")
	if g.Endpoint != "" {
		u, err := url.Parse(g.Endpoint)
		switch {
		case err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http"):
			p.Add("endpoint", "%q is not a URL such as https://management.azure.com", g.Endpoint)
		case u.Scheme == "http" && !isLoopback(u):
			p.Add("endpoint", "%q: plain http is allowed only to a loopback address; use https", g.Endpoint)
		}
	}
	p.PositiveDuration("retry_max_delay", g.RetryMaxDelay)
	p.NotNegative("retry_max_retries", g.RetryMaxRetries)
	if g.OperationWait != "" {
		if d, err := time.ParseDuration(g.OperationWait); err != nil || d < 0 {
			p.Add("operation_wait", "%q is not a duration such as \"20s\" (or \"0s\")", g.OperationWait)
		}
	}
	p.NotNegative("delete_batch_size", g.DeleteBatchSize)
	return p.Err()
}

// spec is the Azure part of the shared instance-group flow. It names no KeyComment:
// the connector's own credentials are used as they are.
func (g *InstanceGroup) spec() instancegroup.Spec[armcompute.VirtualMachineScaleSet] {
	return instancegroup.Spec[armcompute.VirtualMachineScaleSet]{
		Group:         "scale set " + g.Name,
		Connect:       func(context.Context) error { return g.connectClients() },
		Describe:      g.getScaleSet,
		DescribeCheck: "get-scale-set",
		DescribeFix:   "check plugin_config.name, subscription_id, resource_group_name and the credentials, and grant Microsoft.Compute/virtualMachineScaleSets/read",
		Check:         g.doctor,
		Config:        g,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&g.Name, "name", "", "scale set name")
			fs.StringVar(&g.SubscriptionID, "subscription-id", "", "subscription ID")
			fs.StringVar(&g.ResourceGroupName, "resource-group-name", "", "resource group name")
			fs.StringVar(&g.Endpoint, "endpoint", "", "Azure Resource Manager endpoint override")
		},
	}
}

// Init builds the SDK clients and checks the scale set with the doctor: warnings are
// logged; settings or missing permissions that would make jobs fail are an error.
func (g *InstanceGroup) Init(ctx context.Context, logger hclog.Logger, settings provider.Settings) (provider.ProviderInfo, error) {
	ss, err := instancegroup.Init(ctx, &g.Base, logger, settings, g.spec())
	if err != nil {
		return provider.ProviderInfo{}, err
	}
	if !settings.UseStaticCredentials {
		logger.Warn("use_static_credentials is false, but the azure plugin pushes no keys: the connector's username, password or key are used as they are")
	}
	g.maxSize = scaleSetLimit(ss)
	return instancegroup.Info(Version, "azure/"+g.SubscriptionID+"/"+g.ResourceGroupName+"/"+g.Name, g.maxSize), nil
}

// scaleSetLimit is the most VMs a scale set may have: 100 in a single placement group
// (Azure's default), else 1000.
func scaleSetLimit(ss armcompute.VirtualMachineScaleSet) int {
	if ss.Properties != nil && ss.Properties.SinglePlacementGroup != nil && !*ss.Properties.SinglePlacementGroup {
		return 1000
	}
	return 100
}

// getScaleSet fetches the scale set; a missing one is a configuration error.
func (g *InstanceGroup) getScaleSet(ctx context.Context) (armcompute.VirtualMachineScaleSet, error) {
	res, err := g.scaleSets.Get(ctx, g.ResourceGroupName, g.Name, nil)
	if err != nil {
		if isNotFound(err) {
			return armcompute.VirtualMachineScaleSet{}, fmt.Errorf("plugin_config.name: scale set %q not found in resource group %q of subscription %s: %v: %w",
				g.Name, g.ResourceGroupName, g.SubscriptionID, err, provider.ErrInvalidConfig)
		}
		return armcompute.VirtualMachineScaleSet{}, fmt.Errorf("get scale set %s: %w", g.Name, err)
	}
	return res.VirtualMachineScaleSet, nil
}

func capacity(ss armcompute.VirtualMachineScaleSet) int {
	if ss.SKU == nil || ss.SKU.Capacity == nil {
		return 0
	}
	return int(*ss.SKU.Capacity)
}

// powerState returns the VM's power state code without its prefix ("running"), or "".
func powerState(vm *armcompute.VirtualMachineScaleSetVM) string {
	if vm.Properties == nil || vm.Properties.InstanceView == nil {
		return ""
	}
	for _, s := range vm.Properties.InstanceView.Statuses {
		if s != nil && s.Code != nil && strings.HasPrefix(*s.Code, "PowerState/") {
			return strings.ToLower(strings.TrimPrefix(*s.Code, "PowerState/"))
		}
	}
	return ""
}

// instanceState maps a VM's provisioning state and power state to a provider state.
// Every listed VM gets a state: one the host does not know about must not look gone.
func instanceState(provisioning, power string) provider.State {
	switch strings.ToLower(provisioning) {
	case "creating":
		return provider.StateCreating
	case "deleting":
		return provider.StateDeleting
	case "deleted":
		return provider.StateDeleted
	}
	switch power {
	case "running":
		return provider.StateRunning
	case "stopping", "stopped", "deallocating", "deallocated":
		// Stopped behind the plugin's back (or never started): it cannot take jobs.
		return provider.StateTimeout
	}
	if strings.EqualFold(provisioning, "failed") {
		return provider.StateTimeout
	}
	return provider.StateCreating // starting, or no instance view yet
}

// listVMs returns the scale set's VMs with their instance view: one paginated listing,
// never one call per VM.
func (g *InstanceGroup) listVMs(ctx context.Context) ([]*armcompute.VirtualMachineScaleSetVM, error) {
	var out []*armcompute.VirtualMachineScaleSetVM
	p := g.vms.NewListPager(g.ResourceGroupName, g.Name, &armcompute.VirtualMachineScaleSetVMsClientListOptions{Expand: to.Ptr("instanceView")})
	for p.More() {
		page, err := p.NextPage(ctx)
		if err != nil {
			if isNotFound(err) {
				return nil, fmt.Errorf("list VMs of scale set %s: the scale set is gone: %v: %w", g.Name, err, provider.ErrInvalidConfig)
			}
			return nil, fmt.Errorf("list VMs of scale set %s: %w", g.Name, err)
		}
		for _, vm := range page.Value {
			if vm != nil && vm.InstanceID != nil {
				out = append(out, vm)
			}
		}
	}
	ids := make([]string, len(out))
	for i, vm := range out {
		ids[i] = *vm.InstanceID
	}
	g.seen.Listed(ids)
	return out, nil
}

// notReady is the error for a VM the scale set lists but a lookup of its details does
// not show yet (eventual consistency across Azure's resource providers): it is in the
// group, so not ErrNotFound, but must not be given jobs yet.
func (g *InstanceGroup) notReady(id, what string) error {
	return fmt.Errorf("instance %s is not ready yet: scale set %s lists it, but %s: %w", id, g.Name, what, provider.ErrInstanceUnhealthy)
}

// lookVisible makes the lookups ConnectInfo makes for VMs the listing shows running
// that no lookup has shown yet (see visibility.Tracker), without azcore's retries.
func (g *InstanceGroup) lookVisible(ctx context.Context, ids []string) {
	ctx = policy.WithRetryOptions(ctx, policy.RetryOptions{MaxRetries: -1})
	g.seen.Check(ctx, ids, func(ctx context.Context, id string) error {
		_, private, public, err := g.describe(ctx, id)
		if err == nil && private == "" && public == "" {
			err = g.notReady(id, "its network interface has no address")
		}
		if err != nil {
			g.Log.Debug("running instance not ready yet: reported as creating", "instance", id, "reason", err)
		}
		return err
	})
}

// Update reports every VM of the scale set. If the listing fails (after the retries) it
// returns the error and reports nothing: the host then keeps what it knew, so
// throttling never makes instances look gone. VMs that can never run a job (failed
// provisioning, stopped) are reported as timed out and deleted by the plugin.
//
// A VM the listing shows running is reported as creating until the lookups ConnectInfo
// makes show it running with an address (lookVisible): the listing can be ahead of
// them, and the host would otherwise connect to it, fail its heartbeats on a lookup
// that does not find it yet, and replace it, over and over.
func (g *InstanceGroup) Update(ctx context.Context, fn func(string, provider.State)) error {
	vms, err := g.listVMs(ctx)
	if err != nil {
		return err
	}
	states := make([]provider.State, len(vms))
	var unseen []string
	for i, vm := range vms {
		prov := ""
		if vm.Properties != nil && vm.Properties.ProvisioningState != nil {
			prov = *vm.Properties.ProvisioningState
		}
		states[i] = instanceState(prov, powerState(vm))
		if states[i] == provider.StateRunning && !g.seen.Visible(*vm.InstanceID) {
			unseen = append(unseen, *vm.InstanceID)
		}
	}
	g.lookVisible(ctx, unseen)
	var broken []string
	listed := make(map[string]bool, len(vms))
	for i, vm := range vms {
		listed[*vm.InstanceID] = true
		st := states[i]
		if st == provider.StateTimeout {
			broken = append(broken, *vm.InstanceID)
		}
		if st == provider.StateRunning && !g.seen.Visible(*vm.InstanceID) {
			st = provider.StateCreating
		}
		fn(*vm.InstanceID, st)
	}
	g.cleanupMu.Lock()
	for id := range g.cleanup {
		if !listed[id] {
			delete(g.cleanup, id) // gone: forget it, so the set stays small
		}
	}
	g.cleanupMu.Unlock()
	g.cleanupBroken(ctx, broken)
	return nil
}

// cleanupBroken deletes the timed-out instances not already being deleted, in one call.
// A failure is logged: they are reported again, and retried, on the next Update.
func (g *InstanceGroup) cleanupBroken(ctx context.Context, ids []string) {
	g.cleanupMu.Lock()
	if g.cleanup == nil {
		g.cleanup = map[string]bool{}
	}
	var todo []string
	for _, id := range ids {
		if !g.cleanup[id] {
			todo = append(todo, id)
		}
	}
	g.cleanupMu.Unlock()
	if len(todo) == 0 {
		return
	}
	if err := g.deleteBatch(ctx, todo); err != nil {
		g.Log.Warn("delete broken instances", "instances", todo, "err", err)
		return
	}
	g.Log.Info("deleted instances that cannot run jobs (failed provisioning or stopped)", "instances", todo)
	g.cleanupMu.Lock()
	for _, id := range todo {
		g.cleanup[id] = true
	}
	g.cleanupMu.Unlock()
}

// Increase raises the scale set's capacity by delta, up to its limit, and waits for the
// update to finish (at most operation_wait). It reads the capacity fresh every time: computing from a stale value
// could lower it, and a lowered capacity makes the scale set delete VMs itself.
func (g *InstanceGroup) Increase(ctx context.Context, delta int) (int, error) {
	if delta <= 0 {
		return 0, nil
	}
	g.scaling.Lock()
	defer g.scaling.Unlock()
	ss, err := g.getScaleSet(ctx)
	if err != nil {
		return 0, err
	}
	limit := g.maxSize
	if limit == 0 {
		limit = scaleSetLimit(ss)
	}
	current := capacity(ss)
	target := min(current+delta, limit)
	accepted := target - current
	if accepted <= 0 {
		return 0, fmt.Errorf("scale set %s is at its limit of %d VMs: %w", g.Name, limit, provider.ErrCapacity)
	}
	sku := &armcompute.SKU{Capacity: to.Ptr(int64(target))}
	if ss.SKU != nil {
		sku.Name, sku.Tier = ss.SKU.Name, ss.SKU.Tier
	}
	poller, err := g.scaleSets.BeginUpdate(ctx, g.ResourceGroupName, g.Name, armcompute.VirtualMachineScaleSetUpdate{SKU: sku}, nil)
	if err != nil {
		if isQuota(err) {
			return 0, fmt.Errorf("set capacity of scale set %s to %d: %v: %w", g.Name, target, err, provider.ErrCapacity)
		}
		return 0, fmt.Errorf("set capacity of scale set %s to %d: %w", g.Name, target, err)
	}
	// The capacity is committed once the PATCH is accepted; the operation then runs
	// until the new VMs are provisioned. Its outcome shows in the VMs' states, so a
	// failed or unfinished wait does not undo the accepted count.
	wait := defaultOperationWait
	if g.OperationWait != "" {
		wait, _ = time.ParseDuration(g.OperationWait) // checked by Validate
	}
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		_, err := poller.PollUntilDone(wctx, &runtime.PollUntilDoneOptions{Frequency: pollFrequency})
		cancel()
		switch {
		case err == nil:
		case isQuota(err):
			return accepted, fmt.Errorf("scale set %s: capacity %d accepted, but provisioning failed: %v: %w", g.Name, target, err, provider.ErrCapacity)
		case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			g.Log.Debug("capacity update still running; the VMs' states will tell", "scale_set", g.Name, "capacity", target, "waited", wait)
		default:
			g.Log.Warn("capacity update accepted but not seen to finish", "scale_set", g.Name, "capacity", target, "err", err)
		}
	}
	if accepted < delta {
		return accepted, fmt.Errorf("scale set %s: %d of %d instances fit under its limit of %d VMs: %w", g.Name, accepted, delta, limit, provider.ErrCapacity)
	}
	return accepted, nil
}

// deleteBatch deletes instances with one deleteInstances call. Once Azure accepts the
// request (202) the instances are on their way out and the scale set's capacity is
// lower, so the operation, which takes minutes, is not waited for: the VMs show as
// deleting, then disappear from the listing.
func (g *InstanceGroup) deleteBatch(ctx context.Context, ids []string) error {
	req := armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: to.SliceOfPtrs(ids...)}
	_, err := g.scaleSets.BeginDeleteInstances(ctx, g.ResourceGroupName, g.Name, req, nil)
	return err
}

// Decrease deletes the named instances of the scale set with deleteInstances (which
// lowers its capacity), in batches. IDs that are not instances of the scale set are not
// touched and come back as ErrNotFound: Azure refuses a whole batch for one unknown ID,
// so the plugin checks membership against one listing first. Once a batch stays
// throttled after the retries, the remaining batches are not sent.
func (g *InstanceGroup) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	g.scaling.Lock()
	defer g.scaling.Unlock()
	vms, err := g.listVMs(ctx)
	if err != nil {
		return nil, err
	}
	members := map[string]string{} // instance ID → provisioning state
	for _, vm := range vms {
		prov := ""
		if vm.Properties != nil {
			prov = str(vm.Properties.ProvisioningState)
		}
		members[*vm.InstanceID] = prov
	}
	var errs []error
	var todo, done []string
	for _, id := range ids {
		prov, ok := members[id]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("delete instance %s: not in scale set %s: %w", id, g.Name, provider.ErrNotFound))
		case strings.EqualFold(prov, "Deleting"):
			done = append(done, id) // already on its way out: asking again could only fail
		case !slices.Contains(todo, id):
			todo = append(todo, id)
		}
	}
	batch := g.DeleteBatchSize
	if batch <= 0 {
		batch = defaultDeleteBatch
	}
	for i := 0; i < len(todo); i += batch {
		part := todo[i:min(i+batch, len(todo))]
		err := g.deleteBatch(ctx, part)
		if err == nil {
			done = append(done, part...)
			continue
		}
		if isNotFound(err) {
			err = fmt.Errorf("%w: %w", err, provider.ErrNotFound)
		}
		errs = append(errs, fmt.Errorf("delete instances %s of scale set %s: %w", strings.Join(part, ","), g.Name, err))
		if isThrottle(err) && i+batch < len(todo) {
			rest := todo[i+batch:]
			errs = append(errs, fmt.Errorf("delete instances %s of scale set %s: not attempted: the API is throttling this plugin", strings.Join(rest, ","), g.Name))
			break
		}
	}
	return done, errors.Join(errs...)
}

// getVM looks one instance of the scale set up with its instance view.
func (g *InstanceGroup) getVM(ctx context.Context, id string) (armcompute.VirtualMachineScaleSetVM, error) {
	res, err := g.vms.Get(ctx, g.ResourceGroupName, g.Name, id, &armcompute.VirtualMachineScaleSetVMsClientGetOptions{Expand: to.Ptr(armcompute.InstanceViewTypesInstanceView)})
	if err != nil {
		if isNotFound(err) {
			if g.seen.Member(id) {
				return armcompute.VirtualMachineScaleSetVM{}, g.notReady(id, "getting the VM finds nothing yet")
			}
			return armcompute.VirtualMachineScaleSetVM{}, fmt.Errorf("instance %s of scale set %s: %w", id, g.Name, provider.ErrNotFound)
		}
		return armcompute.VirtualMachineScaleSetVM{}, fmt.Errorf("get instance %s of scale set %s: %w", id, g.Name, err)
	}
	return res.VirtualMachineScaleSetVM, nil
}

func tag(vm armcompute.VirtualMachineScaleSetVM, key string) string {
	if v, ok := vm.Tags[key]; ok && v != nil {
		return *v
	}
	return ""
}

// addresses returns the VM's private and public IP addresses from its primary network
// interface: one NIC listing, plus a public IP listing when the IP configuration has one.
func (g *InstanceGroup) addresses(ctx context.Context, id string) (private, public string, err error) {
	var nic *armnetwork.Interface
	p := g.nics.NewListVirtualMachineScaleSetVMNetworkInterfacesPager(g.ResourceGroupName, g.Name, id, nil)
	for p.More() && nic == nil {
		page, err := p.NextPage(ctx)
		if err != nil {
			if isNotFound(err) {
				if g.seen.Member(id) {
					return "", "", g.notReady(id, "listing its network interfaces finds nothing yet")
				}
				return "", "", fmt.Errorf("network interfaces of instance %s: %w", id, provider.ErrNotFound)
			}
			return "", "", fmt.Errorf("list network interfaces of instance %s: %w", id, err)
		}
		for _, n := range page.Value {
			if n != nil && n.Properties != nil && (nic == nil || boolv(n.Properties.Primary)) {
				nic = n
			}
		}
	}
	if nic == nil {
		return "", "", fmt.Errorf("instance %s has no network interface: %w", id, provider.ErrInstanceUnhealthy)
	}
	var ipc *armnetwork.InterfaceIPConfiguration
	for _, c := range nic.Properties.IPConfigurations {
		if c != nil && c.Properties != nil && (ipc == nil || boolv(c.Properties.Primary)) {
			ipc = c
		}
	}
	if ipc == nil {
		return "", "", fmt.Errorf("network interface of instance %s has no IP configuration: %w", id, provider.ErrInstanceUnhealthy)
	}
	private = str(ipc.Properties.PrivateIPAddress)
	if ipc.Properties.PublicIPAddress == nil {
		return private, "", nil
	}
	pp := g.pips.NewListVirtualMachineScaleSetVMPublicIPAddressesPager(g.ResourceGroupName, g.Name, id, str(nic.Name), str(ipc.Name), nil)
	for pp.More() && public == "" {
		page, err := pp.NextPage(ctx)
		if err != nil {
			if isNotFound(err) && g.seen.Member(id) {
				return "", "", g.notReady(id, "listing its public IP address finds nothing yet")
			}
			return "", "", fmt.Errorf("list public IP addresses of instance %s: %w", id, err)
		}
		for _, pip := range page.Value {
			if pip != nil && pip.Properties != nil && pip.Properties.IPAddress != nil {
				public = *pip.Properties.IPAddress
			}
		}
	}
	if public == "" {
		// The IP configuration has a public IP whose address is not listed yet.
		return "", "", g.notReady(id, "its public IP address is not listed yet")
	}
	return private, public, nil
}

// describe makes ConnectInfo's lookups: the VM with its instance view (it must be
// running), then its addresses.
func (g *InstanceGroup) describe(ctx context.Context, id string) (vm armcompute.VirtualMachineScaleSetVM, private, public string, err error) {
	vm, err = g.getVM(ctx, id)
	if err != nil {
		return vm, "", "", err
	}
	prov := ""
	if vm.Properties != nil {
		prov = str(vm.Properties.ProvisioningState)
	}
	if st := instanceState(prov, powerState(&vm)); st != provider.StateRunning {
		return vm, "", "", fmt.Errorf("instance %s is %s (provisioning %q, power %q), not running: %w", id, st, prov, powerState(&vm), provider.ErrInstanceUnhealthy)
	}
	private, public, err = g.addresses(ctx, id)
	return vm, private, public, err
}

// ConnectInfo looks the instance and its network interface up now (addresses can change
// across a deallocation) and returns them with the connector settings from Init.
func (g *InstanceGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	vm, private, public, err := g.describe(ctx, id)
	if err != nil {
		return provider.ConnectInfo{}, err
	}
	info := provider.ConnectInfo{ConnectorConfig: g.Settings.ConnectorConfig, ID: id}
	if info.OS == "" {
		info.OS = "linux"
		if vm.Properties != nil && vm.Properties.OSProfile != nil && vm.Properties.OSProfile.WindowsConfiguration != nil {
			info.OS = "windows"
		}
	}
	if info.Arch == "" {
		info.Arch = "amd64"
	}
	if info.Username == "" {
		info.Username = "azureuser"
	}
	withPort := func(addr string) string {
		if addr == "" {
			return ""
		}
		if p := tag(vm, TagSSHPort); p != "" {
			if n, err := strconv.Atoi(p); err == nil && n > 0 && n < 65536 {
				return net.JoinHostPort(addr, p)
			}
			g.Log.Warn("ignoring bad ssh port tag", "instance", id, "tag", TagSSHPort, "value", p)
		}
		return addr
	}
	info.InternalAddr = withPort(private)
	info.ExternalAddr = withPort(public)
	if hk := tag(vm, TagSSHHostKey); hk != "" {
		info.HostKey = []byte(hk)
	}
	return info, nil
}

// Heartbeat reports an instance healthy while Azure says it is provisioned and running.
func (g *InstanceGroup) Heartbeat(ctx context.Context, id string) error {
	vm, err := g.getVM(ctx, id)
	if err != nil {
		return err
	}
	prov := ""
	if vm.Properties != nil {
		prov = str(vm.Properties.ProvisioningState)
	}
	if st := instanceState(prov, powerState(&vm)); st != provider.StateRunning {
		return fmt.Errorf("instance %s is %s: %w", id, st, provider.ErrInstanceUnhealthy)
	}
	return nil
}

// Shutdown has nothing to free: the SDK clients hold only idle connections. It never
// deletes instances.
func (g *InstanceGroup) Shutdown(context.Context) error { return nil }

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func boolv(p *bool) bool { return p != nil && *p }
