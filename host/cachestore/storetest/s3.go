package storetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sort"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/flotilla-ci/flotilla/host/config"
)

// The credentials and bucket of every S3 store: it listens on loopback only and lives
// as long as one test.
const (
	S3AccessKey = "flotilla-test"
	S3SecretKey = "flotilla-test-secret-key"
	S3Bucket    = "ci-cache"
)

// S3Store is a running versitygw, an S3 gateway over a directory.
type S3Store struct {
	// Cache is the [runners.cache] of a runner that uses the store: Type s3,
	// ServerAddress, Insecure, the keys and the bucket (which exists, empty).
	Cache *config.Cache
	// Addr is host:port of the S3 API.
	Addr string
	// Dir is the directory versitygw serves; the bucket is a directory in it.
	Dir string

	client *s3.Client
}

// S3 starts versitygw on a free loopback port for the duration of the test, with one
// empty bucket. It skips the test when versitygw is not on PATH (see RequireEnv).
func S3(t testing.TB) *S3Store {
	t.Helper()
	bin := LookPath(t, "versitygw", "make test-tools installs it")
	s := &S3Store{Addr: FreeAddr(t), Dir: t.TempDir()}
	// posix: buckets are directories of Dir and objects files below them, with
	// metadata in extended attributes (which the test's temporary directory supports).
	p := Start(t, bin, "--access", S3AccessKey, "--secret", S3SecretKey, "--port", s.Addr, "--quiet", "posix", s.Dir)
	p.WaitListening(t, s.Addr)
	s.Cache = &config.Cache{Type: "s3", S3: &config.CacheS3{
		ServerAddress: s.Addr,
		Insecure:      true,
		AccessKey:     S3AccessKey,
		SecretKey:     S3SecretKey,
		BucketName:    S3Bucket,
	}}
	s.client = s3.New(s3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String("http://" + s.Addr),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(S3AccessKey, S3SecretKey, ""),
	})
	// Created through the API so that the gateway records the bucket's owner as it
	// does for any bucket.
	if _, err := s.client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(S3Bucket)}); err != nil {
		t.Fatalf("create bucket %s on versitygw at %s: %v", S3Bucket, s.Addr, err)
	}
	return s
}

// Object returns the bytes of the object name in the bucket, and false when there is no
// such object.
func (s *S3Store) Object(t testing.TB, name string) ([]byte, bool) {
	t.Helper()
	out, err := s.client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(S3Bucket), Key: aws.String(name)})
	var missing *s3types.NoSuchKey
	if errors.As(err, &missing) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("read s3://%s/%s: %v", S3Bucket, name, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatalf("read s3://%s/%s: %v", S3Bucket, name, err)
	}
	return b, true
}

// Put stores data as the object name, bypassing the code under test (to seed a cache).
func (s *S3Store) Put(t testing.TB, name string, data []byte) {
	t.Helper()
	_, err := s.client.PutObject(context.Background(), &s3.PutObjectInput{
		Bucket: aws.String(S3Bucket), Key: aws.String(name), Body: bytes.NewReader(data)})
	if err != nil {
		t.Fatalf("write s3://%s/%s: %v", S3Bucket, name, err)
	}
}

// List returns the names of the objects in the bucket that start with prefix, sorted.
func (s *S3Store) List(t testing.TB, prefix string) []string {
	t.Helper()
	var names []string
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(S3Bucket), Prefix: aws.String(prefix)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(context.Background())
		if err != nil {
			t.Fatalf("list s3://%s/%s: %v", S3Bucket, prefix, err)
		}
		for _, o := range page.Contents {
			names = append(names, aws.ToString(o.Key))
		}
	}
	sort.Strings(names)
	return names
}
