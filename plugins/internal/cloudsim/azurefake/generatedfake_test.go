package azurefake

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7/fake"
)

// TestGeneratedFakeLimits pins the two reasons this package is an HTTP fake rather than
// armcompute's generated fake transport (see the package documentation): through the
// generated fake a 429 is never retried, and a 202 from a long-running operation is
// refused. If an SDK upgrade changes either, this test fails and the choice can be
// revisited.
func TestGeneratedFakeLimits(t *testing.T) {
	gets := 0
	srv := fake.VirtualMachineScaleSetsServer{
		Get: func(context.Context, string, string, *armcompute.VirtualMachineScaleSetsClientGetOptions) (resp azfake.Responder[armcompute.VirtualMachineScaleSetsClientGetResponse], errResp azfake.ErrorResponder) {
			gets++
			errResp.SetResponseError(http.StatusTooManyRequests, "TooManyRequests")
			return
		},
		BeginUpdate: func(context.Context, string, string, armcompute.VirtualMachineScaleSetUpdate, *armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions) (resp azfake.PollerResponder[armcompute.VirtualMachineScaleSetsClientUpdateResponse], errResp azfake.ErrorResponder) {
			resp.AddNonTerminalResponse(http.StatusAccepted, nil)
			resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachineScaleSetsClientUpdateResponse{}, nil)
			return
		},
	}
	client, err := armcompute.NewVirtualMachineScaleSetsClient("sub", &azfake.TokenCredential{}, &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Transport: fake.NewVirtualMachineScaleSetsServerTransport(&srv),
		Retry:     policy.RetryOptions{MaxRetries: 3, RetryDelay: time.Millisecond},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Get(context.Background(), "rg", "ci", nil); err == nil || gets != 1 {
		t.Errorf("generated fake: Get with a 429 = %v after %d tries; this package assumes 1 try (no retry)", err, gets)
	}
	_, err = client.BeginUpdate(context.Background(), "rg", "ci", armcompute.VirtualMachineScaleSetUpdate{SKU: &armcompute.SKU{Capacity: to.Ptr[int64](1)}}, nil)
	if err == nil || !strings.Contains(err.Error(), "unexpected status code 202") {
		t.Errorf("generated fake: BeginUpdate answering 202 = %v; this package assumes it is refused", err)
	}
}
