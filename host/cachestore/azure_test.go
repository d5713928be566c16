package cachestore

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/cachestore/storetest"
	"github.com/flotilla-ci/flotilla/host/config"
)

// TestAzureRoundTrip uploads with a signed PUT and downloads with a signed GET, through
// plain net/http against Azurite, which checks SAS signatures as Azure does.
func TestAzureRoundTrip(t *testing.T) {
	st := storetest.Azure(t)
	s := newStore(t, st.Cache)
	if got, want := s.Describe(), "azure container ci-cache in account devstoreaccount1 at "+st.Addr; got != want {
		t.Errorf("Describe() = %q, want %q", got, want)
	}
	tests := []struct {
		name, object string
		body         []byte
	}{
		{"runner namespace", "runner/t1_abcdef/project/42/main-1", []byte("cache archive")},
		{"odd characters in the key", "project/42/deps/linux amd64/ü+=&?#", []byte("odd characters in the name")},
		{"empty archive", "project/42/empty", []byte{}},
		{"3 MiB", "project/42/big", bytes.Repeat([]byte("0123456789abcdef"), 3<<16)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			put := roundTrip(t, s, st, tt.object, tt.body, http.StatusCreated)
			if got := put.Header.Get("X-Ms-Blob-Type"); got != "BlockBlob" {
				t.Errorf("PUT header x-ms-blob-type %q, want BlockBlob", got)
			}
			if !strings.HasPrefix(put.URL, "http://"+st.Addr+"/devstoreaccount1/ci-cache/") {
				t.Errorf("PUT URL %s: want http://%s/devstoreaccount1/ci-cache/…", Redact(put.URL), st.Addr)
			}
		})
	}
	want := "project/42/big,project/42/deps/linux amd64/ü+=&?#,project/42/empty"
	if got := st.List(t, "project/42/"); strings.Join(got, ",") != want {
		t.Errorf("blobs under project/42/: %q, want %s", got, want)
	}

	t.Run("missing object", func(t *testing.T) {
		get := presign(t, s, http.MethodGet, "project/42/never-saved")
		if code, body := send(t, get, nil); code != http.StatusNotFound {
			t.Fatalf("GET of a missing blob: %d %s, want 404", code, body)
		}
	})
	t.Run("a PUT replaces the blob", func(t *testing.T) {
		const object = "project/42/replaced"
		for _, body := range []string{"first, longer archive", "second"} {
			if code, resp := send(t, presign(t, s, http.MethodPut, object), []byte(body)); code != http.StatusCreated {
				t.Fatalf("PUT: %d %s", code, resp)
			}
		}
		if got, _ := st.Object(t, object); string(got) != "second" {
			t.Errorf("blob after two PUTs: %q, want %q", got, "second")
		}
	})
}

// TestAzureRefused: Azurite refuses what the signature does not allow, with 403 (wrong
// account key, another blob, the other method), and a PUT without x-ms-blob-type.
func TestAzureRefused(t *testing.T) {
	st := storetest.Azure(t)
	s := newStore(t, st.Cache)
	st.Put(t, "project/42/main", []byte("saved"))

	wrong := *st.Cache
	wrongAzure := *st.Cache.Azure
	wrongAzure.AccountKey = base64.StdEncoding.EncodeToString([]byte("not the key of devstoreaccount1, same length as a real one......"))
	wrong.Azure = &wrongAzure
	bad := newStore(t, &wrong)

	get := presign(t, s, http.MethodGet, "project/42/main")
	put := presign(t, s, http.MethodPut, "project/42/new")
	otherBlob := get
	otherBlob.URL = strings.Replace(get.URL, "/project/42/main?", "/project/42/other?", 1)
	getAsPut := get
	getAsPut.Method, getAsPut.Header = http.MethodPut, put.Header
	putAsGet := put
	putAsGet.Method, putAsGet.Header = http.MethodGet, nil
	noBlobType := put
	noBlobType.Header = nil
	tests := []struct {
		name string
		req  Request
		body []byte
		want int
	}{
		{"GET signed with a wrong key", presign(t, bad, http.MethodGet, "project/42/main"), nil, http.StatusForbidden},
		{"PUT signed with a wrong key", presign(t, bad, http.MethodPut, "project/42/new"), []byte("x"), http.StatusForbidden},
		{"GET of another blob", otherBlob, nil, http.StatusForbidden},
		{"PUT with a GET's signature", getAsPut, []byte("x"), http.StatusForbidden},
		{"GET with a PUT's signature", putAsGet, nil, http.StatusForbidden},
		{"PUT without x-ms-blob-type", noBlobType, []byte("x"), http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, body := send(t, tt.req, tt.body); code != tt.want {
				t.Errorf("%s %s: %d %s, want %d", tt.req.Method, Redact(tt.req.URL), code, body, tt.want)
			}
		})
	}
	if got, _ := st.Object(t, "project/42/main"); string(got) != "saved" {
		t.Errorf("blob after refused requests: %q, want %q", got, "saved")
	}
	if got := st.List(t, "project/42/new"); len(got) != 0 {
		t.Errorf("refused PUTs stored %q", got)
	}
}

// TestAzureSignedURL checks the URL and SAS fields for Azure's own service, without
// an emulator.
func TestAzureSignedURL(t *testing.T) {
	key := base64.StdEncoding.EncodeToString([]byte("sixty-four bytes of key material for the unit test, no more...."))
	tests := []struct {
		name     string
		azure    config.CacheAzure
		method   string
		wantURL  string
		wantPerm string
		wantSpr  string
		describe string
	}{
		{"public cloud GET", config.CacheAzure{AccountName: "acct", AccountKey: key, ContainerName: "cache"},
			http.MethodGet, "https://acct.blob.core.windows.net/cache/runner/t1/project/7/linux%20amd64", "r", "https",
			"azure container cache in account acct at acct.blob.core.windows.net"},
		{"public cloud PUT", config.CacheAzure{AccountName: "acct", AccountKey: key, ContainerName: "cache"},
			http.MethodPut, "https://acct.blob.core.windows.net/cache/runner/t1/project/7/linux%20amd64", "cw", "https",
			"azure container cache in account acct at acct.blob.core.windows.net"},
		{"StorageDomain", config.CacheAzure{AccountName: "acct", AccountKey: key, ContainerName: "cache", StorageDomain: "blob.core.chinacloudapi.cn"},
			http.MethodGet, "https://acct.blob.core.chinacloudapi.cn/cache/runner/t1/project/7/linux%20amd64", "r", "https",
			"azure container cache in account acct at acct.blob.core.chinacloudapi.cn"},
		{"Endpoint with a trailing slash", config.CacheAzure{AccountName: "acct", AccountKey: key, ContainerName: "cache", Endpoint: "http://127.0.0.1:10000/acct/"},
			http.MethodPut, "http://127.0.0.1:10000/acct/cache/runner/t1/project/7/linux%20amd64", "cw", "https,http",
			"azure container cache in account acct at 127.0.0.1:10000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, &config.Cache{Type: "azure", Azure: &tt.azure})
			if got := s.Describe(); got != tt.describe || strings.Contains(got, key) {
				t.Errorf("Describe() = %q, want %q", got, tt.describe)
			}
			r, err := s.Presign(context.Background(), tt.method, "runner/t1/project/7/linux amd64", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			base, query, _ := strings.Cut(r.URL, "?")
			if base != tt.wantURL {
				t.Errorf("URL %s, want %s", base, tt.wantURL)
			}
			q, err := url.ParseQuery(query)
			if err != nil {
				t.Fatal(err)
			}
			if q.Get("sp") != tt.wantPerm || q.Get("spr") != tt.wantSpr || q.Get("sr") != "b" || q.Get("sig") == "" || q.Get("sv") == "" {
				t.Errorf("SAS sp=%q spr=%q sr=%q sv=%q sig set %v, want sp=%s spr=%s sr=b", q.Get("sp"), q.Get("spr"), q.Get("sr"), q.Get("sv"), q.Get("sig") != "", tt.wantPerm, tt.wantSpr)
			}
			expiry, err := time.Parse(time.RFC3339, q.Get("se"))
			if err != nil || expiry.Before(time.Now().Add(59*time.Minute)) || expiry.After(time.Now().Add(61*time.Minute)) {
				t.Errorf("SAS expiry se=%q (%v), want an hour from now", q.Get("se"), err)
			}
			if strings.Contains(r.URL, key) {
				t.Errorf("URL carries the account key")
			}
		})
	}
}

// TestAzureErrors: bad [runners.cache.azure] settings are refused when the store is
// made, all at once, naming the key and what to do, and never showing the key.
func TestAzureErrors(t *testing.T) {
	const notBase64 = "s3cr3t!!not*base64"
	tests := []struct {
		name  string
		azure *config.CacheAzure
		want  []string
	}{
		{"no table", nil, []string{"[runners.cache.azure] table"}},
		{"nothing set", &config.CacheAzure{}, []string{"AccountName is empty", "AccountKey is empty", "ContainerName is empty"}},
		{"key not base64", &config.CacheAzure{AccountName: "a", AccountKey: notBase64, ContainerName: "c"}, []string{"AccountKey is not base64"}},
		{"endpoint not a URL", &config.CacheAzure{AccountName: "a", AccountKey: "a2V5", ContainerName: "c", Endpoint: "127.0.0.1:10000"}, []string{`Endpoint "127.0.0.1:10000"`, "http://127.0.0.1:10000/devstoreaccount1"}},
		{"endpoint with a SAS", &config.CacheAzure{AccountName: "a", AccountKey: "a2V5", ContainerName: "c", Endpoint: "https://a.blob.core.windows.net/?sig=s3cr3t"}, []string{"Endpoint: carries a query"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(context.Background(), &config.Cache{Type: "azure", Azure: tt.azure})
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error %q shows the secret", err)
			}
		})
	}

	s := newStore(t, &config.Cache{Type: "azure", Azure: &config.CacheAzure{AccountName: "a", AccountKey: "a2V5", ContainerName: "c"}})
	for _, tt := range []struct {
		method string
		ttl    time.Duration
		want   string
	}{
		{http.MethodDelete, time.Hour, "presign DELETE azure c/o: only GET and PUT"},
		{http.MethodGet, -time.Second, "presign GET azure c/o: validity -1s: must be above 0"},
	} {
		if _, err := s.Presign(context.Background(), tt.method, "o", tt.ttl); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Presign(%s, %s): %v, want %q", tt.method, tt.ttl, err, tt.want)
		}
	}
}
