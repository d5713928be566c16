package aws

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2instanceconnect"

	"github.com/flotilla-ci/flotilla/sdk/instancegroup"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Retry defaults: the SDK's standard retryer (exponential backoff with full jitter,
// throttling codes such as Throttling and RequestLimitExceeded retried) with a bounded
// backoff, so a throttling storm slows the plugin down without stalling it.
const (
	defaultRetryMaxBackoff  = 20 * time.Second
	defaultRetryMaxAttempts = 5
)

// connectClients loads the shared configuration (profile, files, region) and builds the
// three SDK clients. A configuration that cannot load is ErrInvalidConfig.
func (g *InstanceGroup) connectClients(ctx context.Context) error {
	backoff := defaultRetryMaxBackoff
	if g.RetryMaxBackoff != "" {
		backoff, _ = time.ParseDuration(g.RetryMaxBackoff) // checked by Validate
	}
	attempts := g.RetryMaxAttempts
	if attempts == 0 {
		attempts = defaultRetryMaxAttempts
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = attempts
				o.MaxBackoff = backoff
			})
		}),
	}
	if g.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(g.Profile))
	}
	if g.ConfigFile != "" {
		opts = append(opts, config.WithSharedConfigFiles([]string{instancegroup.ExpandHome(g.ConfigFile)}))
	}
	if g.CredentialsFile != "" {
		opts = append(opts, config.WithSharedCredentialsFiles([]string{instancegroup.ExpandHome(g.CredentialsFile)}))
	}
	if g.Region != "" {
		opts = append(opts, config.WithRegion(g.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return fmt.Errorf("load AWS configuration (profile %q, config_file %q, credentials_file %q): %v: %w",
			g.Profile, g.ConfigFile, g.CredentialsFile, err, provider.ErrInvalidConfig)
	}
	if cfg.Region == "" {
		return fmt.Errorf("plugin_config.region: not set, and profile %q names no region: %w", g.Profile, provider.ErrInvalidConfig)
	}
	g.region = cfg.Region
	if cfg.HTTPClient != nil {
		cfg.HTTPClient = bufferedBodyClient{next: cfg.HTTPClient}
	}
	var endpoint *string
	if g.Endpoint != "" {
		endpoint = aws.String(g.Endpoint)
	}
	g.as = autoscaling.NewFromConfig(cfg, func(o *autoscaling.Options) { o.BaseEndpoint = endpoint })
	g.ec2 = ec2.NewFromConfig(cfg, func(o *ec2.Options) { o.BaseEndpoint = endpoint })
	g.connect = ec2instanceconnect.NewFromConfig(cfg, func(o *ec2instanceconnect.Options) { o.BaseEndpoint = endpoint })
	return nil
}

// bufferedBodyClient hands the HTTP transport its own in-memory copy of each request
// body. The SDK closes the body it built as soon as the response headers arrive; if
// the transport's write loop still touches it then, the transport closes the
// connection and the response body being read fails with "use of closed network
// connection" (aws/aws-sdk-go-v2#2737). The calls here send small form or JSON bodies,
// so the copy is cheap, and it removes a spurious retry per affected call.
type bufferedBodyClient struct {
	next aws.HTTPClient
}

func (c bufferedBodyClient) Do(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return c.next.Do(req)
	}
	body, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("buffer request body: %w", err)
	}
	r := req.Clone(req.Context())
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	return c.next.Do(r)
}
