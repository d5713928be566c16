package azurefake

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

type token string

func (t token) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(t), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func options(f *Fake, retries int32, maxDelay time.Duration) *arm.ClientOptions {
	return &arm.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Cloud: cloud.Configuration{ActiveDirectoryAuthorityHost: "https://login.example/", Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
				cloud.ResourceManager: {Audience: "https://management.core.windows.net/", Endpoint: f.URL()}}},
			Retry:                           policy.RetryOptions{MaxRetries: retries, RetryDelay: time.Millisecond, MaxRetryDelay: maxDelay},
			InsecureAllowCredentialWithHTTP: true,
		},
		DisableRPRegistration: true,
	}
}

func code(err error) (int, string) {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode, re.ErrorCode
	}
	return 0, ""
}

// TestWireContract drives the fake with the pinned SDK clients: if an SDK upgrade
// changes paths, bodies, pagination or the long-running-operation protocol, this fails.
func TestWireContract(t *testing.T) {
	cloud := cloudsim.New(cloudsim.Options{NewID: NewID, Families: Families})
	if err := cloud.CreateGroup(cloudsim.Group{Name: "ci", Max: 20, Desired: 7}); err != nil {
		t.Fatal(err)
	}
	f := New(cloud)
	defer f.Close()
	f.Register("ci")
	f.PageSize = 3
	ctx := context.Background()
	opts := options(f, 2, 5*time.Millisecond)
	ss, _ := armcompute.NewVirtualMachineScaleSetsClient(f.Subscription, token(Token), opts)
	vms, _ := armcompute.NewVirtualMachineScaleSetVMsClient(f.Subscription, token(Token), opts)
	nics, _ := armnetwork.NewInterfacesClient(f.Subscription, token(Token), opts)
	pips, _ := armnetwork.NewPublicIPAddressesClient(f.Subscription, token(Token), opts)

	got, err := ss.Get(ctx, f.ResourceGroup, "ci", nil)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if *got.SKU.Capacity != 7 || *got.Properties.Overprovision || *got.Properties.OrchestrationMode != armcompute.OrchestrationModeUniform ||
		*got.Properties.UpgradePolicy.Mode != armcompute.UpgradeModeManual || !strings.HasSuffix(*got.ID, "/virtualMachineScaleSets/ci") {
		t.Errorf("scale set = %+v", got.VirtualMachineScaleSet)
	}

	// Capacity update: PATCH, 200 + Azure-AsyncOperation, polled to Succeeded.
	cloud.ResetCalls()
	p, err := ss.BeginUpdate(ctx, f.ResourceGroup, "ci", armcompute.VirtualMachineScaleSetUpdate{SKU: &armcompute.SKU{Capacity: to.Ptr[int64](9)}}, nil)
	if err != nil {
		t.Fatalf("BeginUpdate: %v", err)
	}
	res, err := p.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Millisecond})
	if err != nil || *res.SKU.Capacity != 9 {
		t.Fatalf("PollUntilDone = %+v, %v", res, err)
	}
	if c := cloud.Calls(); c["VirtualMachineScaleSets.Update"] != 1 || c["Operations.Get"] != 1 {
		t.Errorf("calls for one update: %v; want one PATCH and one operation poll", c)
	}

	// Listing: 9 VMs in pages of 3 through nextLink, with the instance view.
	var ids []string
	pager := vms.NewListPager(f.ResourceGroup, "ci", &armcompute.VirtualMachineScaleSetVMsClientListOptions{Expand: to.Ptr("instanceView")})
	pages := 0
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("list page %d: %v", pages, err)
		}
		pages++
		for _, vm := range page.Value {
			ids = append(ids, *vm.InstanceID)
			if *vm.Properties.ProvisioningState != "Succeeded" || *vm.Properties.InstanceView.Statuses[1].Code != "PowerState/running" {
				t.Errorf("vm %s: %s %s", *vm.InstanceID, *vm.Properties.ProvisioningState, *vm.Properties.InstanceView.Statuses[1].Code)
			}
		}
	}
	if pages != 3 || strings.Join(ids, ",") != "0,1,2,3,4,5,6,7,8" {
		t.Errorf("%d pages with %v", pages, ids)
	}

	// Addresses.
	np := nics.NewListVirtualMachineScaleSetVMNetworkInterfacesPager(f.ResourceGroup, "ci", "4", nil)
	npage, err := np.NextPage(ctx)
	if err != nil || len(npage.Value) != 1 {
		t.Fatalf("NICs: %v %v", npage, err)
	}
	ipc := npage.Value[0].Properties.IPConfigurations[0]
	if *ipc.Properties.PrivateIPAddress != "10.0.0.5" || ipc.Properties.PublicIPAddress == nil {
		t.Errorf("ip configuration = %+v", ipc.Properties)
	}
	pp := pips.NewListVirtualMachineScaleSetVMPublicIPAddressesPager(f.ResourceGroup, "ci", "4", *npage.Value[0].Name, *ipc.Name, nil)
	ppage, err := pp.NextPage(ctx)
	if err != nil || len(ppage.Value) != 1 || *ppage.Value[0].Properties.IPAddress != "203.0.113.6" {
		t.Errorf("public IPs = %+v, %v", ppage, err)
	}

	// deleteInstances: POST, 202 + Azure-AsyncOperation.
	dp, err := ss.BeginDeleteInstances(ctx, f.ResourceGroup, "ci", armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: to.SliceOfPtrs("1", "2")}, nil)
	if err != nil {
		t.Fatalf("BeginDeleteInstances: %v", err)
	}
	if _, err := dp.PollUntilDone(ctx, &runtime.PollUntilDoneOptions{Frequency: time.Millisecond}); err != nil {
		t.Fatalf("deleteInstances poll: %v", err)
	}
	if g, _ := cloud.GetGroup("ci"); g.Desired != 7 {
		t.Errorf("capacity after deleting 2 of 9 = %d", g.Desired)
	}
	_, err = vms.Get(ctx, f.ResourceGroup, "ci", "1", nil)
	if s, c := code(err); s != http.StatusNotFound || c != "NotFound" {
		t.Errorf("Get of a deleted VM = %v", err)
	}

	// Errors, decoded by the SDK as ResponseErrors.
	errCases := []struct {
		name       string
		call       func() error
		status     int
		errCode    string
		calls      string
		wantCalled int
	}{
		{"unknown instance refuses the batch", func() error {
			_, err := ss.BeginDeleteInstances(ctx, f.ResourceGroup, "ci", armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: to.SliceOfPtrs("3", "77")}, nil)
			return err
		}, http.StatusNotFound, "NotFound", "", 0},
		{"quota", func() error {
			_, err := ss.BeginUpdate(ctx, f.ResourceGroup, "ci", armcompute.VirtualMachineScaleSetUpdate{SKU: &armcompute.SKU{Capacity: to.Ptr[int64](21)}}, nil)
			return err
		}, http.StatusConflict, "OperationNotAllowed", "", 0},
		{"missing scale set", func() error { _, err := ss.Get(ctx, f.ResourceGroup, "nope", nil); return err }, http.StatusNotFound, "ResourceNotFound", "", 0},
		{"wrong resource group", func() error { _, err := ss.Get(ctx, "other", "ci", nil); return err }, http.StatusNotFound, "ResourceGroupNotFound", "", 0},
		{"throttled, retried", func() error {
			cloud.Inject("VirtualMachineScaleSets.Get", -1, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "slow down"})
			defer cloud.ClearFaults()
			_, err := ss.Get(ctx, f.ResourceGroup, "ci", nil)
			return err
		}, http.StatusTooManyRequests, "TooManyRequests", "VirtualMachineScaleSets.Get", 3},
		{"denied, not retried", func() error {
			cloud.Inject("VirtualMachineScaleSetVMs.Get", -1, &cloudsim.Error{Kind: cloudsim.KindDenied, Message: "no"})
			defer cloud.ClearFaults()
			_, err := vms.Get(ctx, f.ResourceGroup, "ci", "0", nil)
			return err
		}, http.StatusForbidden, "AuthorizationFailed", "VirtualMachineScaleSetVMs.Get", 1},
	}
	for _, c := range errCases {
		cloud.ResetCalls()
		err := c.call()
		if s, code := code(err); s != c.status || code != c.errCode {
			t.Errorf("%s: %v; want %d %s", c.name, err, c.status, c.errCode)
		}
		if c.calls != "" && cloud.Calls()[c.calls] != c.wantCalled {
			t.Errorf("%s: %d calls, want %d", c.name, cloud.Calls()[c.calls], c.wantCalled)
		}
	}
	if vm, _ := cloud.GetVM("3"); vm.State != cloudsim.Running {
		t.Errorf("VM 3 is %s after a refused batch", vm.State)
	}

	// A Retry-After beyond the client's bound ends the retries at once.
	f.RetryAfter = 30
	cloud.ResetCalls()
	cloud.Inject("VirtualMachineScaleSets.Get", -1, &cloudsim.Error{Kind: cloudsim.KindThrottled, Message: "slow down"})
	if _, err := ss.Get(ctx, f.ResourceGroup, "ci", nil); err == nil || cloud.Calls()["VirtualMachineScaleSets.Get"] != 1 {
		t.Errorf("with Retry-After 30s: %v after %d calls; want an error after 1", err, cloud.Calls()["VirtualMachineScaleSets.Get"])
	}
	cloud.ClearFaults()

	// No token, or no api-version: refused as ARM does.
	bad, _ := armcompute.NewVirtualMachineScaleSetsClient(f.Subscription, token("wrong"), opts)
	if _, err := bad.Get(ctx, f.ResourceGroup, "ci", nil); func() bool { s, _ := code(err); return s != http.StatusUnauthorized }() {
		t.Errorf("wrong token: %v", err)
	}
	resp, err := http.Get(f.URL() + "/subscriptions/" + f.Subscription + "/resourceGroups/" + f.ResourceGroup + "/providers/Microsoft.Compute/virtualMachineScaleSets/ci")
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous request: %v %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
	req, _ := http.NewRequest(http.MethodGet, f.URL()+"/subscriptions/"+f.Subscription+"/resourceGroups/"+f.ResourceGroup+"/providers/Microsoft.Compute/virtualMachineScaleSets/ci", nil)
	req.Header.Set("Authorization", "Bearer "+Token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("request without api-version: %v %v", resp, err)
	}
	if resp != nil {
		resp.Body.Close()
	}
	if err := cloud.Check(); err != nil {
		t.Error(err)
	}
}
