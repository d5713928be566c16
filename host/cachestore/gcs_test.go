package cachestore

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/cachestore/storetest"
	"github.com/flotilla-ci/flotilla/host/config"
)

// TestGCSRoundTrip uploads with a signed PUT and downloads with a signed GET, through
// plain net/http against fake-gcs-server, for both ways of giving the key. The emulator
// does not check signatures (TestGCSSignature does); this proves the URL's host, path
// and method and the headers an upload needs.
func TestGCSRoundTrip(t *testing.T) {
	st := storetest.GCS(t)
	for _, kv := range st.Env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	keyed := *st.Cache
	keyed.GCS = &config.CacheGCS{AccessID: storetest.GCSServiceAccount, PrivateKey: st.PrivateKeyPEM, BucketName: storetest.GCSBucket}
	for _, cfg := range []struct {
		name  string
		cache *config.Cache
	}{
		{"CredentialsFile", st.Cache},
		{"AccessID and PrivateKey", &keyed},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			s := newStore(t, cfg.cache)
			if got, want := s.Describe(), "gcs bucket ci-cache at "+st.Addr; got != want {
				t.Errorf("Describe() = %q, want %q", got, want)
			}
			prefix := "project/" + strings.ReplaceAll(cfg.name, " ", "-") + "/"
			tests := []struct {
				name, object string
				body         []byte
			}{
				{"runner namespace", "runner/t1_abcdef/" + prefix + "main-1", []byte("cache archive")},
				{"odd characters in the key", prefix + "deps/linux amd64/ü+=&?#", []byte("odd characters in the name")},
				{"empty archive", prefix + "empty", []byte{}},
				{"3 MiB", prefix + "big", bytes.Repeat([]byte("0123456789abcdef"), 3<<16)},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					put := roundTrip(t, s, st, tt.object, tt.body, http.StatusOK)
					if !strings.HasPrefix(put.URL, "http://"+st.Addr+"/ci-cache/") {
						t.Errorf("PUT URL %s: want http://%s/ci-cache/…", Redact(put.URL), st.Addr)
					}
				})
			}
			want := []string{prefix + "big", prefix + "deps/linux amd64/ü+=&?#", prefix + "empty"}
			if got := st.List(t, prefix); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("objects under %s: %q, want %q", prefix, got, want)
			}
			t.Run("missing object", func(t *testing.T) {
				get := presign(t, s, http.MethodGet, prefix+"never-saved")
				if code, body := send(t, get, nil); code != http.StatusNotFound {
					t.Fatalf("GET of a missing object: %d %s, want 404", code, body)
				}
			})
		})
	}
}

// TestGCSSignature checks a signed URL as Google would: the V4 fields are there, and
// the signature verifies with the service account's public key over the canonical
// request built from the URL and the headers the uploader is told to send. (Built here
// from Google's description of V4 signing, independently of the library.)
func TestGCSSignature(t *testing.T) {
	t.Setenv(EmulatorHostEnv, "")
	key, pemKey := serviceAccountKey(t)
	const accessID = "cache@project.iam.gserviceaccount.com"
	s := newStore(t, &config.Cache{Type: "gcs", GCS: &config.CacheGCS{
		AccessID:   accessID,
		PrivateKey: pemKey,
		BucketName: "ci-cache",
	}})
	if got := s.Describe(); got != "gcs bucket ci-cache" {
		t.Errorf("Describe() = %q", got)
	}
	const object = "runner/t1_abc/project/7/linux amd64/ü"
	tests := []struct {
		method        string
		signedHeaders string
		header        http.Header
	}{
		{http.MethodGet, "host", http.Header{}},
		{http.MethodPut, "content-type;host", http.Header{"Content-Type": {"application/octet-stream"}}},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			r, err := s.Presign(context.Background(), tt.method, object, 90*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if r.Method != tt.method || fmt.Sprint(r.Header) != fmt.Sprint(tt.header) {
				t.Errorf("request %s %v, want %s %v", r.Method, r.Header, tt.method, tt.header)
			}
			u, err := url.Parse(r.URL)
			if err != nil {
				t.Fatal(err)
			}
			if u.Scheme != "https" || u.Host != "storage.googleapis.com" || u.Path != "/ci-cache/"+object {
				t.Errorf("URL %s, want https://storage.googleapis.com/ci-cache/%s", Redact(r.URL), object)
			}
			q := u.Query()
			date := q.Get("X-Goog-Date")
			for field, want := range map[string]string{
				"X-Goog-Algorithm":     "GOOG4-RSA-SHA256",
				"X-Goog-Credential":    accessID + "/" + date[:8] + "/auto/storage/goog4_request",
				"X-Goog-SignedHeaders": tt.signedHeaders,
			} {
				if got := q.Get(field); got != want {
					t.Errorf("%s = %q, want %q", field, got, want)
				}
			}
			// The library counts from its own clock reading, a moment after ours.
			if got := q.Get("X-Goog-Expires"); got != "5400" && got != "5399" {
				t.Errorf("X-Goog-Expires = %q, want 5400 (90 minutes)", got)
			}
			sig, err := hex.DecodeString(q.Get("X-Goog-Signature"))
			if err != nil || len(sig) != 256 {
				t.Fatalf("X-Goog-Signature: %d bytes (%v), want a 2048-bit RSA signature", len(sig), err)
			}
			digest := sha256.Sum256([]byte(canonicalGCSRequest(r.Method, u, r.Header)))
			toSign := strings.Join([]string{"GOOG4-RSA-SHA256", date, date[:8] + "/auto/storage/goog4_request", hex.EncodeToString(digest[:])}, "\n")
			sum := sha256.Sum256([]byte(toSign))
			if err := rsa.VerifyPKCS1v15(&key.PublicKey, crypto.SHA256, sum[:], sig); err != nil {
				t.Errorf("signature does not verify with the service account's key: %v", err)
			}
		})
	}
}

// canonicalGCSRequest is the canonical request of V4 signing for a request made with u
// and header: method, path, query without the signature, the signed headers with their
// values, the list of signed headers, and UNSIGNED-PAYLOAD.
func canonicalGCSRequest(method string, u *url.URL, header http.Header) string {
	q := u.Query()
	q.Del("X-Goog-Signature")
	values := map[string]string{"host": u.Host}
	for k := range header {
		values[strings.ToLower(k)] = header.Get(k)
	}
	names := strings.Split(q.Get("X-Goog-SignedHeaders"), ";")
	sort.Strings(names)
	var canon strings.Builder
	for _, n := range names {
		canon.WriteString(n + ":" + values[n] + "\n")
	}
	return strings.Join([]string{
		method,
		u.EscapedPath(),
		strings.ReplaceAll(q.Encode(), "+", "%20"),
		canon.String(),
		strings.Join(names, ";"),
		"UNSIGNED-PAYLOAD",
	}, "\n")
}

// TestGCSEmulatorHost: STORAGE_EMULATOR_HOST decides host and scheme, as it does for
// Google's storage client.
func TestGCSEmulatorHost(t *testing.T) {
	key, _ := serviceAccountKey(t)
	pemKey := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	tests := []struct{ env, wantPrefix string }{
		{"", "https://storage.googleapis.com/b/"},
		{"127.0.0.1:4443", "http://127.0.0.1:4443/b/"},
		{"http://localhost:8000", "http://localhost:8000/b/"},
		{"https://gcs.test:9443", "https://gcs.test:9443/b/"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			t.Setenv(EmulatorHostEnv, tt.env)
			s := newStore(t, &config.Cache{Type: "gcs", GCS: &config.CacheGCS{AccessID: "a@b", PrivateKey: pemKey, BucketName: "b"}})
			r := presign(t, s, http.MethodGet, "o")
			if !strings.HasPrefix(r.URL, tt.wantPrefix+"o?") {
				t.Errorf("URL %s, want %so?…", Redact(r.URL), tt.wantPrefix)
			}
		})
	}
}

// TestGCSErrors: bad [runners.cache.gcs] settings are refused when the store is made,
// all at once, naming the key or file and what to do; no message shows the key.
func TestGCSErrors(t *testing.T) {
	t.Setenv(EmulatorHostEnv, "")
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	_, goodPEM := serviceAccountKey(t)
	badPEM := "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW5vdC1hLWtleQ==\n-----END PRIVATE KEY-----\n"
	userCreds := write("user.json", `{"type":"authorized_user","client_id":"x","client_secret":"s3cr3t","refresh_token":"r"}`)
	noEmail := write("noemail.json", `{"type":"service_account","private_key":"`+strings.ReplaceAll(goodPEM, "\n", `\n`)+`"}`)
	badKeyFile := write("badkey.json", `{"type":"service_account","client_email":"a@b","private_key":"`+strings.ReplaceAll(badPEM, "\n", `\n`)+`"}`)
	notJSON := write("notjson.json", "client_email = a@b")

	tests := []struct {
		name string
		gcs  *config.CacheGCS
		want []string
	}{
		{"no table", nil, []string{"[runners.cache.gcs] table"}},
		{"nothing set", &config.CacheGCS{}, []string{"BucketName is empty", "has no credentials"}},
		{"missing file", &config.CacheGCS{BucketName: "b", CredentialsFile: filepath.Join(dir, "absent.json")}, []string{"CredentialsFile", "absent.json", "no such file"}},
		{"not JSON", &config.CacheGCS{BucketName: "b", CredentialsFile: notJSON}, []string{"CredentialsFile " + notJSON, "service-account JSON key"}},
		{"user credentials", &config.CacheGCS{BucketName: "b", CredentialsFile: userCreds}, []string{"CredentialsFile " + userCreds, "authorized_user"}},
		{"no client_email", &config.CacheGCS{BucketName: "b", CredentialsFile: noEmail}, []string{"CredentialsFile " + noEmail + ": no client_email"}},
		{"bad key in file", &config.CacheGCS{BucketName: "b", CredentialsFile: badKeyFile}, []string{"CredentialsFile " + badKeyFile + ": private_key", "not a PEM RSA private key"}},
		{"AccessID without key", &config.CacheGCS{BucketName: "b", AccessID: "a@b"}, []string{"PrivateKey is empty"}},
		{"key without AccessID", &config.CacheGCS{BucketName: "b", PrivateKey: goodPEM}, []string{"AccessID is empty"}},
		{"bad PrivateKey", &config.CacheGCS{BucketName: "b", AccessID: "a@b", PrivateKey: badPEM}, []string{"[runners.cache.gcs] PrivateKey: not a PEM RSA private key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(context.Background(), &config.Cache{Type: "gcs", GCS: tt.gcs})
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, secret := range []string{"c2VjcmV0", "s3cr3t", "MII"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q shows secret %q", err, secret)
				}
			}
		})
	}

	s := newStore(t, &config.Cache{Type: "gcs", GCS: &config.CacheGCS{BucketName: "b", AccessID: "a@b", PrivateKey: goodPEM}})
	for _, tt := range []struct {
		method string
		ttl    time.Duration
		want   string
	}{
		{http.MethodDelete, time.Hour, "presign DELETE gs://b/o: only GET and PUT"},
		{http.MethodGet, 0, "presign GET gs://b/o: validity 0s out of range"},
		{http.MethodGet, 8 * 24 * time.Hour, "validity 192h0m0s out of range"},
	} {
		if _, err := s.Presign(context.Background(), tt.method, "o", tt.ttl); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Presign(%s, %s): %v, want %q", tt.method, tt.ttl, err, tt.want)
		}
	}
}

// serviceAccountKey makes a service account's RSA key, and its PKCS#8 PEM as Google's
// JSON key files hold it.
func serviceAccountKey(t *testing.T) (*rsa.PrivateKey, string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}
