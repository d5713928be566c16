package cachestore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/flotilla-ci/flotilla/host/config"
)

// s3DefaultRegion is the region when BucketLocation is empty, as in GitLab Runner.
const s3DefaultRegion = "us-east-1"

// s3MaxPresignTTL is the longest validity SigV4 allows a pre-signed URL.
const s3MaxPresignTTL = 7 * 24 * time.Hour

// s3Store signs requests for one bucket of Amazon S3 or an S3-compatible store.
type s3Store struct {
	bucket  string
	where   string // host of the endpoint, for Describe
	presign *s3.PresignClient
	// sse and sseKeyID are the server-side encryption signed into every PUT.
	sse      s3types.ServerSideEncryption
	sseKeyID string
}

// newS3 reads [runners.cache.s3]. Nothing is sent to the store: signing is local, and
// with AuthenticationType iam the credentials are fetched at the first Presign.
func newS3(ctx context.Context, c *config.Cache) (Store, error) {
	s := c.S3
	if s == nil {
		return nil, errors.New("[runners.cache] Type s3 needs a [runners.cache.s3] table with BucketName and ServerAddress (empty for Amazon S3)")
	}
	if s.BucketName == "" {
		return nil, errors.New("[runners.cache.s3] BucketName is not set: name the bucket that holds the caches")
	}
	region := s.BucketLocation
	if region == "" {
		region = s3DefaultRegion
	}
	sse, err := s3Encryption(s.ServerSideEncryption)
	if err != nil {
		return nil, err
	}
	if sse == s3types.ServerSideEncryptionAwsKms || sse == s3types.ServerSideEncryptionAwsKmsDsse {
		if s.ServerSideEncryptionKeyID == "" {
			return nil, fmt.Errorf("[runners.cache.s3] ServerSideEncryption %q needs ServerSideEncryptionKeyID: the KMS key's ID, alias or ARN", s.ServerSideEncryption)
		}
	}

	var awsCfg aws.Config
	switch auth := strings.ToLower(s.AuthenticationType); {
	case auth == "iam" || (auth == "" && s.AccessKey == "" && s.SecretKey == ""):
		// The SDK's default chain: environment, shared config and credentials files,
		// web identity, ECS or EC2 instance role. Only the region is ours.
		awsCfg, err = awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region))
		if err != nil {
			return nil, fmt.Errorf("[runners.cache.s3] AuthenticationType iam: loading the AWS SDK's default configuration: %w", err)
		}
	case auth == "" || auth == "access-key":
		if s.AccessKey == "" || s.SecretKey == "" {
			return nil, errors.New("[runners.cache.s3] needs both AccessKey and SecretKey (or AuthenticationType = \"iam\")")
		}
		// No shared configuration is read: static keys sign the same way on every
		// runner manager, whatever its environment or ~/.aws holds.
		awsCfg = aws.Config{
			Region:      region,
			Credentials: credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, s.SessionToken),
		}
	default:
		return nil, fmt.Errorf("[runners.cache.s3] AuthenticationType %q: use access-key or iam", s.AuthenticationType)
	}

	endpoint, amazon := s3Endpoint(s)
	pathStyle := !amazon
	if s.PathStyle != nil {
		pathStyle = *s.PathStyle
	}
	where := "s3." + region + ".amazonaws.com"
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		o.UsePathStyle = pathStyle
		// A pre-signed PUT carries no body to checksum; the SDK's default (a CRC32
		// of the request) would sign a checksum of nothing into the URL.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		if !amazon {
			o.BaseEndpoint = aws.String(endpoint)
			where = s.ServerAddress
			return
		}
		// Amazon's endpoint variants; the SDK refuses them with a custom endpoint.
		// DualStack defaults to on, as in GitLab Runner.
		if s.DualStack == nil || *s.DualStack {
			o.EndpointOptions.UseDualStackEndpoint = aws.DualStackEndpointStateEnabled
		}
		o.UseAccelerate = s.Accelerate
	})
	return &s3Store{
		bucket:   s.BucketName,
		where:    where,
		presign:  s3.NewPresignClient(client),
		sse:      sse,
		sseKeyID: s.ServerSideEncryptionKeyID,
	}, nil
}

// s3Endpoint returns the URL of ServerAddress (http:// when Insecure) and whether the
// store is Amazon S3 itself: no ServerAddress, or GitLab's documented
// "s3.amazonaws.com", which GitLab Runner also treats as "Amazon's own endpoints".
func s3Endpoint(s *config.CacheS3) (endpoint string, amazon bool) {
	addr := s.ServerAddress
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if addr == "" || strings.EqualFold(host, "s3.amazonaws.com") {
		return "", true
	}
	scheme := "https"
	if s.Insecure {
		scheme = "http"
	}
	return scheme + "://" + addr, false
}

// s3Encryption maps ServerSideEncryption, case-insensitively and with GitLab Runner's
// aliases, to the SDK's value; "" is the bucket's default.
func s3Encryption(v string) (s3types.ServerSideEncryption, error) {
	switch strings.ToUpper(v) {
	case "":
		return "", nil
	case "S3", "AES256":
		return s3types.ServerSideEncryptionAes256, nil
	case "KMS", "AWS:KMS":
		return s3types.ServerSideEncryptionAwsKms, nil
	case "DSSE-KMS", "AWS:KMS:DSSE":
		return s3types.ServerSideEncryptionAwsKmsDsse, nil
	}
	return "", fmt.Errorf("[runners.cache.s3] ServerSideEncryption %q: use S3 (AES256), KMS or DSSE-KMS, or leave it empty for the bucket's default", v)
}

// Describe names the bucket and the endpoint's host.
func (s *s3Store) Describe() string {
	return fmt.Sprintf("s3 bucket %s at %s", s.bucket, s.where)
}

// Presign signs a GET or a PUT of object with SigV4 in the URL's query. A PUT signs
// the server-side encryption headers, which the uploader must send (Request.Header);
// it signs no Content-Length or Content-Type, so any body may be sent, with a
// Content-Length (S3 refuses chunked uploads without a signed length).
func (s *s3Store) Presign(ctx context.Context, method, object string, ttl time.Duration) (Request, error) {
	what := fmt.Sprintf("presign %s s3://%s/%s", method, s.bucket, object)
	if ttl <= 0 || ttl > s3MaxPresignTTL {
		return Request{}, fmt.Errorf("%s: validity %s out of range (above 0, at most %s)", what, ttl, s3MaxPresignTTL)
	}
	expires := s3.WithPresignExpires(ttl)
	var (
		req *v4.PresignedHTTPRequest
		err error
	)
	switch method {
	case http.MethodGet:
		req, err = s.presign.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &object}, expires)
	case http.MethodPut:
		in := &s3.PutObjectInput{Bucket: &s.bucket, Key: &object, ServerSideEncryption: s.sse}
		if s.sseKeyID != "" && s.sse != s3types.ServerSideEncryptionAes256 && s.sse != "" {
			in.SSEKMSKeyId = &s.sseKeyID
		}
		req, err = s.presign.PresignPutObject(ctx, in, expires)
	default:
		return Request{}, fmt.Errorf("%s: only GET and PUT are signed", what)
	}
	if err != nil {
		// The SDK's errors name the operation and the cause (missing credentials,
		// bad endpoint); they hold neither keys nor the signed URL.
		return Request{}, fmt.Errorf("%s: %w", what, err)
	}
	h := http.Header{}
	for k, vs := range req.SignedHeader {
		// Host is the URL's; the client sets it.
		if textproto.CanonicalMIMEHeaderKey(k) == "Host" {
			continue
		}
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	return Request{Method: req.Method, URL: req.URL, Header: h}, nil
}
