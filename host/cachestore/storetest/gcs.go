package storetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"cloud.google.com/go/storage"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/flotilla-ci/flotilla/host/config"
)

// GCSBucket is the bucket of every GCS store, and GCSServiceAccount the e-mail of the
// service account whose key the tests sign with.
const (
	GCSBucket         = "ci-cache"
	GCSServiceAccount = "flotilla-test@flotilla-test.iam.gserviceaccount.com"
)

// GCSStore is a running fake-gcs-server, an emulator of Google Cloud Storage's JSON
// and XML APIs (signed URLs included) that keeps objects in memory.
//
// fake-gcs-server does not check signatures: a URL with a wrong or missing signature
// works too. Tests against it prove the shape of the signed URLs (host, path, method,
// headers) and the round trip, not that Google would accept the signature.
type GCSStore struct {
	// Cache is the [runners.cache] of a runner that uses the store: Type gcs, the
	// bucket (which exists, empty) and CredentialsFile, a service-account JSON key
	// made for the test.
	Cache *config.Cache
	// Addr is host:port of the emulator.
	Addr string
	// Env is what the code under test needs in its environment to sign URLs for the
	// emulator rather than storage.googleapis.com: STORAGE_EMULATOR_HOST=<Addr>, the
	// variable Google's libraries read. Set it with t.Setenv (or in a child's Env).
	Env []string
	// PrivateKeyPEM is the service account's key (PKCS#8 PEM), for configurations
	// that give AccessID and PrivateKey instead of CredentialsFile.
	PrivateKeyPEM string

	client *storage.Client
}

// GCS starts fake-gcs-server on a free loopback port for the duration of the test, with
// one empty bucket. It skips the test when fake-gcs-server is not on PATH (see
// RequireEnv).
func GCS(t testing.TB) *GCSStore {
	t.Helper()
	bin := LookPath(t, "fake-gcs-server", "make test-tools installs it")
	s := &GCSStore{Addr: FreeAddr(t)}
	_, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		t.Fatalf("free address %s: %v", s.Addr, err)
	}
	// public-host is the host signed URLs name; fake-gcs-server routes path-style
	// /<bucket>/<object> requests only for it.
	p := Start(t, bin, "-scheme", "http", "-host", "127.0.0.1", "-port", port,
		"-public-host", s.Addr, "-backend", "memory", "-log-level", "warn")
	p.WaitListening(t, s.Addr)
	s.Env = []string{"STORAGE_EMULATOR_HOST=" + s.Addr}

	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("make a service-account key: %v", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("make a service-account key: %v", err)
	}
	s.PrivateKeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	// The fields of a key downloaded from the Cloud console that a signer reads.
	creds, err := json.Marshal(map[string]string{
		"type":           "service_account",
		"project_id":     "flotilla-test",
		"private_key_id": "0123456789abcdef",
		"private_key":    s.PrivateKeyPEM,
		"client_email":   GCSServiceAccount,
		"client_id":      "100000000000000000000",
	})
	if err != nil {
		t.Fatalf("write the credentials file: %v", err)
	}
	credsFile := filepath.Join(t.TempDir(), "gcs-credentials.json")
	if err := os.WriteFile(credsFile, creds, 0o600); err != nil {
		t.Fatalf("write the credentials file: %v", err)
	}
	s.Cache = &config.Cache{Type: "gcs", GCS: &config.CacheGCS{
		CredentialsFile: credsFile,
		BucketName:      GCSBucket,
	}}

	// The endpoint is given rather than read from STORAGE_EMULATOR_HOST, so that the
	// test process's environment is left to the test.
	s.client, err = storage.NewClient(context.Background(),
		option.WithEndpoint("http://"+s.Addr+"/storage/v1/"),
		option.WithoutAuthentication(),
		storage.WithDisabledClientMetrics())
	if err != nil {
		t.Fatalf("client of fake-gcs-server at %s: %v", s.Addr, err)
	}
	t.Cleanup(func() { s.client.Close() })
	if err := s.client.Bucket(GCSBucket).Create(context.Background(), "flotilla-test", nil); err != nil {
		t.Fatalf("create bucket %s on fake-gcs-server at %s: %v", GCSBucket, s.Addr, err)
	}
	return s
}

// Object returns the bytes of the object name in the bucket, and false when there is no
// such object.
func (s *GCSStore) Object(t testing.TB, name string) ([]byte, bool) {
	t.Helper()
	r, err := s.client.Bucket(GCSBucket).Object(name).NewReader(context.Background())
	if errors.Is(err, storage.ErrObjectNotExist) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("read gs://%s/%s: %v", GCSBucket, name, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read gs://%s/%s: %v", GCSBucket, name, err)
	}
	return b, true
}

// Put stores data as the object name, bypassing the code under test (to seed a cache).
func (s *GCSStore) Put(t testing.TB, name string, data []byte) {
	t.Helper()
	w := s.client.Bucket(GCSBucket).Object(name).NewWriter(context.Background())
	if _, err := w.Write(data); err != nil {
		w.Close()
		t.Fatalf("write gs://%s/%s: %v", GCSBucket, name, err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("write gs://%s/%s: %v", GCSBucket, name, err)
	}
}

// List returns the names of the objects in the bucket that start with prefix, sorted.
func (s *GCSStore) List(t testing.TB, prefix string) []string {
	t.Helper()
	var names []string
	it := s.client.Bucket(GCSBucket).Objects(context.Background(), &storage.Query{Prefix: prefix})
	for {
		o, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			t.Fatalf("list gs://%s/%s: %v", GCSBucket, prefix, err)
		}
		names = append(names, o.Name)
	}
	sort.Strings(names)
	return names
}
