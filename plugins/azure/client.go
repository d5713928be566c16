package azure

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Retry defaults: azcore's retry policy (exponential backoff with jitter; 408, 429 and
// 5xx retried, Retry-After honoured) with bounded delays, so a throttling storm slows
// the plugin down without stalling it. A Retry-After longer than the bound ends the
// retries at once, and the call fails (the host retries it on its next cycle).
const (
	defaultRetryMaxDelay = 20 * time.Second
	defaultRetryDelay    = time.Second
	defaultRetryMax      = 4 // retries after the first try
	pollFrequency        = 2 * time.Second
)

// staticToken is an azcore.TokenCredential for a bearer token given in the
// configuration (access_token).
type staticToken struct{ token string }

func (s staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: s.token, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// isLoopback reports whether the URL's host is a loopback address or localhost.
func isLoopback(u *url.URL) bool {
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// connectClients builds the credential and the SDK clients. A credential that cannot
// be built is ErrInvalidConfig.
func (g *InstanceGroup) connectClients() error {
	maxDelay := defaultRetryMaxDelay
	if g.RetryMaxDelay != "" {
		maxDelay, _ = time.ParseDuration(g.RetryMaxDelay) // checked by Validate
	}
	retries := int32(defaultRetryMax)
	if g.RetryMaxRetries != 0 {
		retries = int32(g.RetryMaxRetries)
	}
	opts := &arm.ClientOptions{
		ClientOptions: policy.ClientOptions{
			Retry: policy.RetryOptions{
				MaxRetries:    retries,
				RetryDelay:    min(defaultRetryDelay, maxDelay),
				MaxRetryDelay: maxDelay,
			},
			Telemetry: policy.TelemetryOptions{ApplicationID: "flotilla-azure"},
		},
		// The plugin must not register resource providers in the subscription: that
		// needs rights it should not have, and hides a setup mistake.
		DisableRPRegistration: true,
	}
	if g.Transport != nil {
		opts.Transport = g.Transport
	}
	if g.Endpoint != "" {
		u, _ := url.Parse(g.Endpoint) // checked by Validate
		opts.Cloud = cloud.Configuration{
			ActiveDirectoryAuthorityHost: cloud.AzurePublic.ActiveDirectoryAuthorityHost,
			Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
				cloud.ResourceManager: {Audience: cloud.AzurePublic.Services[cloud.ResourceManager].Audience, Endpoint: g.Endpoint},
			},
		}
		// A token in clear text is allowed only to a loopback endpoint (a test fake).
		opts.InsecureAllowCredentialWithHTTP = u.Scheme == "http" && isLoopback(u)
	}
	var cred azcore.TokenCredential
	if g.AccessToken != "" {
		cred = staticToken{token: g.AccessToken}
	} else {
		c, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: opts.ClientOptions})
		if err != nil {
			return fmt.Errorf("azure credentials (environment, workload or managed identity, Azure CLI): %v: %w", err, provider.ErrInvalidConfig)
		}
		cred = c
	}
	var err error
	if g.scaleSets, err = armcompute.NewVirtualMachineScaleSetsClient(g.SubscriptionID, cred, opts); err != nil {
		return fmt.Errorf("create scale set client: %w", err)
	}
	if g.vms, err = armcompute.NewVirtualMachineScaleSetVMsClient(g.SubscriptionID, cred, opts); err != nil {
		return fmt.Errorf("create scale set VM client: %w", err)
	}
	if g.nics, err = armnetwork.NewInterfacesClient(g.SubscriptionID, cred, opts); err != nil {
		return fmt.Errorf("create network interface client: %w", err)
	}
	if g.pips, err = armnetwork.NewPublicIPAddressesClient(g.SubscriptionID, cred, opts); err != nil {
		return fmt.Errorf("create public IP client: %w", err)
	}
	if g.arm, err = arm.NewClient("flotilla-azure", "v0.1.0", cred, opts); err != nil {
		return fmt.Errorf("create ARM client: %w", err)
	}
	return nil
}

// respErr returns err's ARM response error, if it is one.
func respErr(err error) (*azcore.ResponseError, bool) {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re, true
	}
	return nil, false
}

// isThrottle reports whether err is ARM throttling (429) that outlasted the retries.
func isThrottle(err error) bool {
	re, ok := respErr(err)
	return ok && re.StatusCode == http.StatusTooManyRequests
}

// isNotFound reports whether err is a 404 from ARM.
func isNotFound(err error) bool {
	re, ok := respErr(err)
	return ok && re.StatusCode == http.StatusNotFound
}

// isDenied reports whether err is an RBAC refusal.
func isDenied(err error) bool {
	re, ok := respErr(err)
	return ok && (re.StatusCode == http.StatusForbidden || re.ErrorCode == "AuthorizationFailed")
}

// isQuota reports whether err is Azure refusing more VMs (quota or allocation).
func isQuota(err error) bool {
	re, ok := respErr(err)
	if !ok {
		return false
	}
	switch re.ErrorCode {
	case "OperationNotAllowed", "QuotaExceeded", "AllocationFailed", "ZonalAllocationFailed", "SkuNotAvailable":
		return re.StatusCode != http.StatusTooManyRequests
	}
	return false
}
