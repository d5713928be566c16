package googlecloud

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	compute "cloud.google.com/go/compute/apiv1"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/cloudresourcemanager/v1"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/flotilla-ci/flotilla/sdk/instancegroup"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Retry defaults: exponential backoff with full jitter (gax.Backoff), bounded so that a
// throttling storm slows the plugin down without stalling it.
const (
	defaultRetryMaxBackoff  = 20 * time.Second
	defaultRetryMaxAttempts = 5
	retryInitialBackoff     = 250 * time.Millisecond
)

// credentialTypes are the credential file types the plugin accepts, by their "type".
var credentialTypes = map[string]option.CredentialsType{
	"service_account":              option.ServiceAccount,
	"authorized_user":              option.AuthorizedUser,
	"external_account":             option.ExternalAccount,
	"impersonated_service_account": option.ImpersonatedServiceAccount,
}

// clientOptions returns the options every client gets: credentials and endpoint.
// Without credentials_file the SDK finds Application Default Credentials itself.
func (g *InstanceGroup) clientOptions() ([]option.ClientOption, error) {
	var opts []option.ClientOption
	if g.CredentialsFile != "" {
		path := instancegroup.ExpandHome(g.CredentialsFile)
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("plugin_config.credentials_file: read %s: %v: %w", path, err, provider.ErrInvalidConfig)
		}
		var head struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			return nil, fmt.Errorf("plugin_config.credentials_file: %s is not a JSON credentials file: %v: %w", path, err, provider.ErrInvalidConfig)
		}
		typ, ok := credentialTypes[head.Type]
		if !ok {
			return nil, fmt.Errorf("plugin_config.credentials_file: %s has type %q; want a service account key or gcloud application default credentials: %w", path, head.Type, provider.ErrInvalidConfig)
		}
		opts = append(opts, option.WithAuthCredentialsFile(typ, path))
	}
	if g.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(g.Endpoint))
	}
	return opts, nil
}

// connectClients builds the Compute Engine REST clients and the Resource Manager client
// used for the permission check.
func (g *InstanceGroup) connectClients(ctx context.Context) error {
	opts, err := g.clientOptions()
	if err != nil {
		return err
	}
	if g.igm, err = compute.NewInstanceGroupManagersRESTClient(ctx, opts...); err != nil {
		return fmt.Errorf("create instance group managers client: %v: %w", err, provider.ErrInvalidConfig)
	}
	if g.instances, err = compute.NewInstancesRESTClient(ctx, opts...); err != nil {
		return fmt.Errorf("create instances client: %v: %w", err, provider.ErrInvalidConfig)
	}
	if g.ops, err = compute.NewZoneOperationsRESTClient(ctx, opts...); err != nil {
		return fmt.Errorf("create zone operations client: %v: %w", err, provider.ErrInvalidConfig)
	}
	crmOpts := opts
	if g.Endpoint != "" {
		// The discovery-based client wants its base path, with the trailing slash.
		crmOpts = append(append([]option.ClientOption{}, opts[:len(opts)-1]...), option.WithEndpoint(strings.TrimSuffix(g.Endpoint, "/")+"/"))
	}
	if g.crm, err = cloudresourcemanager.NewService(ctx, crmOpts...); err != nil {
		return fmt.Errorf("create resource manager client: %v: %w", err, provider.ErrInvalidConfig)
	}
	return nil
}

// closeClients releases the clients' connections.
func (g *InstanceGroup) closeClients() error {
	var errs []error
	for _, c := range []interface{ Close() error }{g.igm, g.instances, g.ops} {
		if c != nil {
			errs = append(errs, c.Close())
		}
	}
	return errors.Join(errs...)
}

// retryer retries throttled and transiently failing calls with jittered exponential
// backoff, a bounded number of times: 429 and rate-limit 403s, 5xx, and transport
// failures (a dropped, reset or refused connection, a network timeout).
//
// Every call the plugin makes is safe to retry, including after a failure that left it
// unknown whether the server acted. The reads (instanceGroupManagers.get,
// listManagedInstances, which is a POST but only reads, instances.get,
// zoneOperations.wait, testIamPermissions) change nothing. The mutations carry a
// requestId that stays the same across the retries of one call, and GCP answers a
// request ID it has seen with the first request's operation instead of acting again;
// beyond that, each is idempotent in effect on its own: resize sets an absolute
// targetSize, so a second resize to the same size changes nothing (and Increase holds
// the scaling lock, so nothing in the plugin moves targetSize in between);
// deleteInstances of instances already deleting skips them
// (skipInstancesOnValidationError) and lowers targetSize only for instances it
// actually deletes, so it cannot shrink the group twice; setMetadata carries the
// metadata fingerprint, so a repeat after an applied first attempt is refused as stale
// (412) and addSSHKey then finds its key already there.
type retryer struct {
	bo       gax.Backoff
	attempts int // calls made so far
	max      int
}

// Retry implements gax.Retryer.
func (r *retryer) Retry(err error) (time.Duration, bool) {
	r.attempts++
	if r.attempts >= r.max || !retryable(err) {
		return 0, false
	}
	return r.bo.Pause(), true
}

// retryable reports whether err is throttling, a transient server error or a transport
// failure.
func retryable(err error) bool {
	if isThrottle(err) || transient(err) {
		return true
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		switch ge.Code {
		case http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
	}
	return false
}

// transient reports whether err is a transport failure: the connection dropped, was
// reset or refused, or timed out, so the request may not have reached the server or
// its answer was lost (`Post …/listManagedInstances: EOF`). These are the failures
// google.golang.org/api retries for its own media uploads; the REST clients' default
// call options do not retry them. A cancelled or expired context is not transient: the
// caller gave up.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	for _, target := range []error{io.EOF, io.ErrUnexpectedEOF, net.ErrClosed,
		syscall.ECONNRESET, syscall.ECONNREFUSED, syscall.ECONNABORTED, syscall.EPIPE} {
		if errors.Is(err, target) {
			return true
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	// HTTP/2 reports a lost connection with errors of its own, not wrapping the above.
	msg := err.Error()
	return strings.Contains(msg, "http2: client connection lost") || strings.Contains(msg, "http2: server sent GOAWAY")
}

// isThrottle reports whether err is GCP rate limiting: 429, or a 403 whose reason is a
// rate limit (some quotas answer that way).
func isThrottle(err error) bool {
	var ge *googleapi.Error
	if !errors.As(err, &ge) {
		return false
	}
	if ge.Code == http.StatusTooManyRequests {
		return true
	}
	for _, e := range ge.Errors {
		if e.Reason == "rateLimitExceeded" || e.Reason == "userRateLimitExceeded" {
			return true
		}
	}
	return false
}

// isNotFound reports whether err is a 404.
func isNotFound(err error) bool {
	var ge *googleapi.Error
	return errors.As(err, &ge) && ge.Code == http.StatusNotFound
}

// retry is the call option every SDK call gets.
func (g *InstanceGroup) retry() gax.CallOption {
	maxBackoff := defaultRetryMaxBackoff
	if g.RetryMaxBackoff != "" {
		maxBackoff, _ = time.ParseDuration(g.RetryMaxBackoff) // checked by Validate
	}
	attempts := g.RetryMaxAttempts
	if attempts == 0 {
		attempts = defaultRetryMaxAttempts
	}
	return gax.WithRetry(func() gax.Retryer {
		return &retryer{bo: gax.Backoff{Initial: min(retryInitialBackoff, maxBackoff), Max: maxBackoff, Multiplier: 2}, max: attempts}
	})
}

// noRetry is the call option of a lookup whose caller tries again anyway (Update's
// check that a new instance's details are visible): it replaces the retries of the
// client's default call options too.
var noRetry = gax.WithRetry(func() gax.Retryer { return nil })

// requestID returns a new random UUID for a mutation's requestId: GCP ignores a request
// whose ID it has seen, which makes retrying a mutation safe.
func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
