package cachestore

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/cachestore/storetest"
	"github.com/flotilla-ci/flotilla/host/config"
)

// send makes r as the instance does: a plain HTTP client, r.Header, and body (nil for
// a GET). It returns the status and the response body.
func send(t *testing.T, r Request, body []byte) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(r.Method, r.URL, rd)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, Redact(r.URL), err)
	}
	for k, vs := range r.Header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		// The client's error repeats the URL, signature and all.
		t.Fatalf("%s %s: %s", r.Method, Redact(r.URL), strings.ReplaceAll(err.Error(), r.URL, Redact(r.URL)))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the response: %v", r.Method, Redact(r.URL), err)
	}
	return resp.StatusCode, b
}

// objectReader reads an object straight from a test store.
type objectReader interface {
	Object(t testing.TB, name string) ([]byte, bool)
}

// roundTrip PUTs body to object with a signed request (expecting wantPut), checks the
// store holds it, and GETs it back with another; it returns the PUT request.
func roundTrip(t *testing.T, s Store, st objectReader, object string, body []byte, wantPut int) Request {
	t.Helper()
	put := presign(t, s, http.MethodPut, object)
	if code, resp := send(t, put, body); code != wantPut {
		t.Fatalf("PUT %s: %d %s", Redact(put.URL), code, resp)
	}
	stored, ok := st.Object(t, object)
	if !ok || !bytes.Equal(stored, body) {
		t.Fatalf("stored object %q: found %v, %d bytes, want %d", object, ok, len(stored), len(body))
	}
	get := presign(t, s, http.MethodGet, object)
	code, got := send(t, get, nil)
	if code != http.StatusOK || !bytes.Equal(got, body) {
		t.Fatalf("GET %s: %d, %d bytes, want 200 and %d bytes", Redact(get.URL), code, len(got), len(body))
	}
	return put
}

func presign(t *testing.T, s Store, method, object string) Request {
	t.Helper()
	r, err := s.Presign(context.Background(), method, object, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newStore(t *testing.T, c *config.Cache) Store {
	t.Helper()
	s, err := New(context.Background(), c)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// TestS3RoundTrip uploads with a signed PUT and downloads with a signed GET, through
// plain net/http against a real S3 gateway, and checks the stored object directly.
func TestS3RoundTrip(t *testing.T) {
	st := storetest.S3(t)
	s := newStore(t, st.Cache)
	if got, want := s.Describe(), "s3 bucket ci-cache at "+st.Addr; got != want {
		t.Errorf("Describe() = %q, want %q", got, want)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB: past curl's Expect: 100-continue size
	tests := []struct {
		name, object string
		body         []byte
	}{
		{"runner namespace", "runner/t1_abcdef/project/42/main-1", []byte("cache archive")},
		{"shared, nested key", "project/42/deps/linux amd64/ü+=&?#", []byte("odd characters in the name")},
		{"empty archive", "project/42/empty", []byte{}},
		{"3 MiB", "project/42/big", big},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if put := roundTrip(t, s, st, tt.object, tt.body, http.StatusOK); put.Method != http.MethodPut {
				t.Errorf("method %q", put.Method)
			}
		})
	}
	if got := st.List(t, "project/42/"); strings.Join(got, ",") != "project/42/big,project/42/deps/linux amd64/ü+=&?#,project/42/empty" {
		t.Errorf("objects under project/42/: %q", got)
	}

	t.Run("missing object", func(t *testing.T) {
		get := presign(t, s, http.MethodGet, "project/42/never-saved")
		if code, body := send(t, get, nil); code != http.StatusNotFound {
			t.Fatalf("GET of a missing object: %d %s, want 404", code, body)
		}
	})
	t.Run("a signed URL is for its method and object only", func(t *testing.T) {
		st.Put(t, "project/42/other", []byte("x"))
		get := presign(t, s, http.MethodGet, "project/42/main")
		other := get
		other.URL = strings.Replace(get.URL, "/project/42/main?", "/project/42/other?", 1)
		if code, _ := send(t, other, nil); code != http.StatusForbidden {
			t.Errorf("GET of another object with the signature: %d, want 403", code)
		}
		asPut := get
		asPut.Method = http.MethodPut
		if code, _ := send(t, asPut, []byte("y")); code != http.StatusForbidden {
			t.Errorf("PUT with a GET's signature: %d, want 403", code)
		}
	})
}

// TestS3Refused: a store with a wrong SecretKey signs requests the store refuses with
// 403, which the runtime reports as a refused upload or download. (An unknown AccessKey
// is not tested: versitygw answers it with 404 XAdminUserNotFound where Amazon S3 and
// MinIO answer 403 InvalidAccessKeyId.)
func TestS3Refused(t *testing.T) {
	st := storetest.S3(t)
	st.Put(t, "project/1/k", []byte("saved"))
	c := *st.Cache
	wrong := *c.S3
	wrong.SecretKey = "not-the-secret"
	c.S3 = &wrong
	s := newStore(t, &c)
	if code, body := send(t, presign(t, s, http.MethodPut, "project/1/new"), []byte("data")); code != http.StatusForbidden {
		t.Errorf("PUT: %d %s, want 403", code, body)
	}
	if code, body := send(t, presign(t, s, http.MethodGet, "project/1/k"), nil); code != http.StatusForbidden {
		t.Errorf("GET: %d %s, want 403", code, body)
	}
	if _, ok := st.Object(t, "project/1/new"); ok {
		t.Error("the refused upload was stored")
	}
}

// TestS3IAM: AuthenticationType iam takes the credentials from the AWS SDK's default
// chain (here its environment variables), and without any, Presign fails clearly.
func TestS3IAM(t *testing.T) {
	st := storetest.S3(t)
	dir := t.TempDir()
	// Keep the runner's own AWS setup out: no files, no instance metadata service.
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_WEB_IDENTITY_TOKEN_FILE", "")
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
	t.Setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "")
	iam := func(accessKey string) *config.Cache {
		c := *st.Cache
		c.S3 = &config.CacheS3{ServerAddress: st.Addr, Insecure: true, BucketName: storetest.S3Bucket,
			AuthenticationType: "IAM", AccessKey: accessKey}
		return &c
	}

	t.Setenv("AWS_ACCESS_KEY_ID", storetest.S3AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", storetest.S3SecretKey)
	// AccessKey is ignored with iam (config check warns about it).
	s := newStore(t, iam("ignored-key"))
	if code, body := send(t, presign(t, s, http.MethodPut, "project/7/k"), []byte("via iam")); code != http.StatusOK {
		t.Fatalf("PUT signed with the environment's keys: %d %s", code, body)
	}
	if b, ok := st.Object(t, "project/7/k"); !ok || string(b) != "via iam" {
		t.Fatalf("stored %q, %v", b, ok)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	s = newStore(t, iam(""))
	_, err := s.Presign(context.Background(), http.MethodGet, "project/7/k", time.Minute)
	if err == nil || !strings.Contains(err.Error(), "presign GET s3://ci-cache/project/7/k") || !strings.Contains(err.Error(), "credentials") {
		t.Fatalf("Presign without credentials: %v", err)
	}
}

// TestS3ServerSideEncryption: the encryption is signed into every PUT, so the uploader
// must send Request.Header; without it the store refuses the upload. (versitygw accepts
// the headers and does not encrypt, so what is checked is the headers and the
// signature over them.)
func TestS3ServerSideEncryption(t *testing.T) {
	st := storetest.S3(t)
	tests := []struct {
		sse, keyID string
		want       http.Header
	}{
		{"", "", http.Header{}},
		{"S3", "", http.Header{"X-Amz-Server-Side-Encryption": {"AES256"}}},
		{"aes256", "", http.Header{"X-Amz-Server-Side-Encryption": {"AES256"}}},
		{"kms", "alias/ci-cache", http.Header{"X-Amz-Server-Side-Encryption": {"aws:kms"},
			"X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id": {"alias/ci-cache"}}},
		{"DSSE-KMS", "1234abcd-12ab", http.Header{"X-Amz-Server-Side-Encryption": {"aws:kms:dsse"},
			"X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id": {"1234abcd-12ab"}}},
	}
	for _, tt := range tests {
		t.Run("ServerSideEncryption="+tt.sse, func(t *testing.T) {
			c := *st.Cache
			s3c := *c.S3
			s3c.ServerSideEncryption, s3c.ServerSideEncryptionKeyID = tt.sse, tt.keyID
			c.S3 = &s3c
			s := newStore(t, &c)
			put := presign(t, s, http.MethodPut, "project/1/k")
			if !equalHeader(put.Header, tt.want) {
				t.Fatalf("PUT header %v, want %v", put.Header, tt.want)
			}
			if get := presign(t, s, http.MethodGet, "project/1/k"); len(get.Header) != 0 {
				t.Errorf("GET header %v, want none", get.Header)
			}
			if code, body := send(t, put, []byte("encrypted")); code != http.StatusOK {
				t.Fatalf("PUT with its headers: %d %s", code, body)
			}
			if len(tt.want) == 0 {
				return
			}
			bare := put
			bare.Header = nil
			if code, _ := send(t, bare, []byte("x")); code != http.StatusForbidden {
				t.Errorf("PUT without the signed encryption headers: %d, want 403", code)
			}
		})
	}
}

// TestS3Curl uploads and downloads the way the instance does, with curl: -T file sends
// the Content-Length S3 needs; a stream from standard input is sent chunked and refused
// (411), so the uploader must send a file.
func TestS3Curl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	st := storetest.S3(t)
	c := *st.Cache
	s3c := *c.S3
	s3c.ServerSideEncryption = "S3"
	c.S3 = &s3c
	s := newStore(t, &c)
	dir := t.TempDir()
	archive := filepath.Join(dir, "cache.zip")
	data := bytes.Repeat([]byte("cache bytes "), 200_000) // 2.4 MB: curl sends Expect: 100-continue
	if err := os.WriteFile(archive, data, 0o600); err != nil {
		t.Fatal(err)
	}
	headerArgs := func(r Request) []string {
		var args []string
		for k, vs := range r.Header {
			for _, v := range vs {
				args = append(args, "-H", k+": "+v)
			}
		}
		return args
	}
	run := func(stdin io.Reader, args ...string) string {
		cmd := exec.Command(curl, append([]string{"-sS", "-o", filepath.Join(dir, "resp"), "-w", "%{http_code}"}, args...)...)
		cmd.Stdin = stdin
		out, err := cmd.Output()
		// A store that answers before the whole body is sent may close the
		// connection under curl, which then exits 55 after printing a status.
		if err != nil && len(out) != 3 {
			t.Fatalf("curl: %v", err)
		}
		return string(out)
	}

	put := presign(t, s, http.MethodPut, "project/3/cache.zip")
	if code := run(nil, append(headerArgs(put), "-T", archive, put.URL)...); code != "200" {
		t.Fatalf("curl -T file: HTTP %s", code)
	}
	if b, ok := st.Object(t, "project/3/cache.zip"); !ok || !bytes.Equal(b, data) {
		t.Fatalf("stored %d bytes (found %v), want %d", len(b), ok, len(data))
	}
	get := presign(t, s, http.MethodGet, "project/3/cache.zip")
	if code := run(nil, get.URL); code != "200" {
		t.Fatalf("curl GET: HTTP %s", code)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "resp")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("downloaded %d bytes (%v), want %d", len(b), err, len(data))
	}

	// S3 takes no chunked upload (411 Length Required, often with the connection
	// closed under the sender, which curl then reports as the last status it saw).
	put = presign(t, s, http.MethodPut, "project/3/streamed.zip")
	if code := run(bytes.NewReader(data), append(headerArgs(put), "-T", "-", put.URL)...); code == "200" {
		t.Errorf("curl -T - (chunked): HTTP %s, want a refusal (411 Length Required)", code)
	}
	if _, ok := st.Object(t, "project/3/streamed.zip"); ok {
		t.Error("a chunked upload was stored")
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if strings.Join(a[k], ",") != strings.Join(v, ",") {
			return false
		}
	}
	return true
}

// TestS3SignedURL checks, without a store, where the URLs point and that the query is
// what carries the credentials, which Redact removes.
func TestS3SignedURL(t *testing.T) {
	f := false
	tr := true
	tests := []struct {
		name string
		s3   config.CacheS3
		want string // the URL without its query
	}{
		{"self-hosted, path style by default", config.CacheS3{ServerAddress: "minio.example:9000", BucketName: "ci-cache"},
			"https://minio.example:9000/ci-cache/project/1/k"},
		{"Insecure is plain HTTP", config.CacheS3{ServerAddress: "10.0.0.5:9000", Insecure: true, BucketName: "ci-cache"},
			"http://10.0.0.5:9000/ci-cache/project/1/k"},
		{"self-hosted, virtual host", config.CacheS3{ServerAddress: "minio.example", BucketName: "ci-cache", PathStyle: &f},
			"https://ci-cache.minio.example/project/1/k"},
		{"Amazon, dual-stack by default", config.CacheS3{BucketName: "ci-cache", BucketLocation: "eu-west-1"},
			"https://ci-cache.s3.dualstack.eu-west-1.amazonaws.com/project/1/k"},
		{"Amazon without dual-stack, us-east-1 by default", config.CacheS3{BucketName: "ci-cache", DualStack: &f},
			"https://ci-cache.s3.us-east-1.amazonaws.com/project/1/k"},
		{"s3.amazonaws.com is Amazon's own endpoints", config.CacheS3{ServerAddress: "s3.amazonaws.com", BucketName: "ci-cache", BucketLocation: "eu-central-1", DualStack: &f},
			"https://ci-cache.s3.eu-central-1.amazonaws.com/project/1/k"},
		{"Amazon, path style", config.CacheS3{BucketName: "ci-cache", DualStack: &f, PathStyle: &tr},
			"https://s3.us-east-1.amazonaws.com/ci-cache/project/1/k"},
		{"Accelerate", config.CacheS3{BucketName: "ci-cache", Accelerate: true, DualStack: &f},
			"https://ci-cache.s3-accelerate.amazonaws.com/project/1/k"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s3c := tt.s3
			s3c.AccessKey, s3c.SecretKey, s3c.SessionToken = "AKIAEXAMPLEKEY", "secret/key", "session-token-value"
			s := newStore(t, &config.Cache{Type: "s3", S3: &s3c})
			for _, m := range []string{http.MethodGet, http.MethodPut} {
				r := presign(t, s, m, "project/1/k")
				if got := Redact(r.URL); got != tt.want {
					t.Errorf("%s URL %s, want %s", m, got, tt.want)
				}
				u, err := url.Parse(r.URL)
				if err != nil {
					t.Fatal(err)
				}
				q := u.Query()
				if q.Get("X-Amz-Signature") == "" || !strings.HasPrefix(q.Get("X-Amz-Credential"), "AKIAEXAMPLEKEY/") ||
					q.Get("X-Amz-Security-Token") != "session-token-value" || q.Get("X-Amz-Expires") != "600" {
					t.Errorf("%s query %v: want the signature, credential, session token and expiry", m, q)
				}
				// Only Amazon checksums: no checksum of an empty body may be signed in.
				for k := range q {
					if strings.Contains(strings.ToLower(k), "checksum") {
						t.Errorf("%s query has %s", m, k)
					}
				}
			}
		})
	}
}

func TestS3Errors(t *testing.T) {
	ok := config.CacheS3{ServerAddress: "127.0.0.1:1", AccessKey: "AKIAEXAMPLEKEY", SecretKey: "s3cr3t-value", BucketName: "ci-cache"}
	tests := []struct {
		name   string
		change func(*config.CacheS3)
		nilS3  bool
		want   string
	}{
		{"no table", nil, true, "needs a [runners.cache.s3] table"},
		{"no bucket", func(s *config.CacheS3) { s.BucketName = "" }, false, "BucketName is not set"},
		{"AccessKey without SecretKey", func(s *config.CacheS3) { s.SecretKey = "" }, false, "both AccessKey and SecretKey"},
		{"access-key without keys", func(s *config.CacheS3) { s.AccessKey, s.SecretKey, s.AuthenticationType = "", "", "access-key" }, false, "both AccessKey and SecretKey"},
		{"unknown AuthenticationType", func(s *config.CacheS3) { s.AuthenticationType = "oauth" }, false, `AuthenticationType "oauth": use access-key or iam`},
		{"unknown encryption", func(s *config.CacheS3) { s.ServerSideEncryption = "rot13" }, false, `ServerSideEncryption "rot13"`},
		{"KMS without a key", func(s *config.CacheS3) { s.ServerSideEncryption = "KMS" }, false, "needs ServerSideEncryptionKeyID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s3c := ok
			c := &config.Cache{Type: "s3", S3: &s3c}
			if tt.nilS3 {
				c.S3 = nil
			} else {
				tt.change(&s3c)
			}
			_, err := New(context.Background(), c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New: %v, want ~ %q", err, tt.want)
			}
			if strings.Contains(err.Error(), ok.SecretKey) {
				t.Errorf("error shows the secret: %v", err)
			}
		})
	}

	s := newStore(t, &config.Cache{Type: "s3", S3: &ok})
	for _, tt := range []struct {
		method string
		ttl    time.Duration
		want   string
	}{
		{http.MethodDelete, time.Minute, "presign DELETE s3://ci-cache/project/1/k: only GET and PUT are signed"},
		{http.MethodHead, time.Minute, "only GET and PUT"},
		{http.MethodGet, 0, "out of range"},
		{http.MethodPut, 8 * 24 * time.Hour, "out of range"},
	} {
		if _, err := s.Presign(context.Background(), tt.method, "project/1/k", tt.ttl); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Presign(%s, %s): %v, want ~ %q", tt.method, tt.ttl, err, tt.want)
		}
	}
}
