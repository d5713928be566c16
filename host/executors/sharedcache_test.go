package executors

import (
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/cachestore"
	"github.com/flotilla-ci/flotilla/host/cachestore/storetest"
	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// testStore is what each store of storetest offers a test.
type testStore interface {
	Object(t testing.TB, name string) ([]byte, bool)
	Put(t testing.TB, name string, data []byte)
	List(t testing.TB, prefix string) []string
}

// noRelay fails the test when the runner host makes a transfer itself: with it, a
// job's cache must go between the instance and the store directly.
type noRelay struct{ t *testing.T }

func (n noRelay) RoundTrip(r *http.Request) (*http.Response, error) {
	n.t.Errorf("the runner host made a %s request to the store; the instance should have", r.Method)
	return nil, errors.New("the runner host is not in the data path")
}

const testToken = "glrt-abcdefghijklmnop"

// sharedCache is the job cache of runner token testToken for project 42 in the store
// cfg describes, relayed transfers made with client.
func sharedCache(t *testing.T, cfg *config.Cache, client *http.Client) *SharedCache {
	t.Helper()
	st, err := cachestore.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	shared := NewSharedCache(st, cfg, testToken, 42)
	shared.HTTP = client
	return shared
}

// runShared runs job in a fresh project directory (a new instance) with the shared
// cache, in an environment whose PATH is path ("" = this machine's).
func runShared(t *testing.T, shared *SharedCache, path string, job jobs.Job) (Result, string) {
	t.Helper()
	env := &localEnv{dir: t.TempDir(), shell: ShellSh, path: path}
	var log bytes.Buffer
	res := Run(context.Background(), &job, env, &log, RunOptions{CacheDir: t.TempDir(), SharedCache: shared})
	return res, log.String()
}

// TestSharedCacheInEachStore saves a cache from one instance and restores it on
// another through each kind of store, with the transfers made by the instance: the
// runner host's HTTP client refuses every request.
func TestSharedCacheInEachStore(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed: the instance side of a direct transfer needs it")
	}
	stores := []struct {
		name  string
		start func(t *testing.T) (*config.Cache, testStore)
	}{
		{"s3", func(t *testing.T) (*config.Cache, testStore) { s := storetest.S3(t); return s.Cache, s }},
		{"gcs", func(t *testing.T) (*config.Cache, testStore) {
			s := storetest.GCS(t)
			for _, kv := range s.Env {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			return s.Cache, s
		}},
		{"azure", func(t *testing.T) (*config.Cache, testStore) { s := storetest.Azure(t); return s.Cache, s }},
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			cfg, store := st.start(t)
			cfg.Path = "ci"
			shared := sharedCache(t, cfg, &http.Client{Transport: noRelay{t}})
			cache := jobs.Cache{Key: "deps-$BRANCH", Paths: []string{".deps/"}}
			vars := jobs.Variables{{Key: "BRANCH", Value: "main"}}
			res, log := runShared(t, shared, "", jobs.Job{Variables: vars, Caches: []jobs.Cache{cache},
				Script: []string{"mkdir -p .deps", "echo dep > .deps/a"}})
			if res.Status != StatusSuccess || !strings.Contains(log, `WARNING: cache "deps-main": not found in `+shared.Store.Describe()) ||
				!strings.Contains(log, `Saved cache "deps-main"`) || !strings.Contains(log, "uploaded by the instance") {
				t.Fatalf("first job: %+v\n%s", res, log)
			}
			// GitLab Runner's object name: <Path>/runner/<short token>/project/<id>/<key>.
			if _, ok := store.Object(t, "ci/runner/abcdefghi/project/42/deps-main"); !ok {
				t.Fatalf("no object under GitLab's name; the bucket holds %v", store.List(t, ""))
			}
			res, log = runShared(t, shared, "", jobs.Job{Variables: vars, Caches: []jobs.Cache{cache},
				Script: []string{"cat .deps/a"}})
			if res.Status != StatusSuccess || !strings.Contains(log, `Restored cache "deps-main" from `+shared.Store.Describe()) ||
				!strings.Contains(log, "downloaded by the instance") || !strings.Contains(log, " 00O dep\n") {
				t.Fatalf("second job: %+v\n%s", res, log)
			}
			if strings.Contains(log, "X-Amz-Signature") || strings.Contains(log, "X-Goog-Signature") || strings.Contains(log, "sig=") {
				t.Errorf("a signed URL reached the job log:\n%s", log)
			}
		})
	}
}

// busyboxPath is a directory of busybox applets without curl or wget, to stand in
// for an instance whose image has no HTTP client (nor unzip).
func busyboxPath(t *testing.T) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static)")
	}
	dir := t.TempDir()
	for _, applet := range []string{"sh", "tar", "gzip", "head", "wc", "rm", "cat", "tr", "sed", "mkdir", "mktemp", "echo", "test", "[", "ls", "touch", "printf"} {
		if err := os.Symlink(bb, filepath.Join(dir, applet)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestSharedCacheRelayAndFallbacks: without curl in the job's environment the runner
// host relays; a key no job saved falls back to fallback_keys, then
// CACHE_FALLBACK_KEY; GitLab Runner's zip archives restore.
func TestSharedCacheRelayAndFallbacks(t *testing.T) {
	s3 := storetest.S3(t)
	shared := sharedCache(t, s3.Cache, nil)
	noCurl := busyboxPath(t)

	res, log := runShared(t, shared, noCurl, jobs.Job{Caches: []jobs.Cache{{Key: "main", Paths: []string{"f"}}},
		Script: []string{"echo from-main > f"}})
	if res.Status != StatusSuccess || !strings.Contains(log, "has no curl; the runner host relays cache \"main\"") ||
		!strings.Contains(log, "relayed by the runner host") {
		t.Fatalf("relayed save: %+v\n%s", res, log)
	}

	// GitLab Runner's own archive format: a zip.
	var zbuf bytes.Buffer
	zw := zip.NewWriter(&zbuf)
	w, _ := zw.Create("g")
	w.Write([]byte("from-gitlab\n"))
	zw.Close()
	s3.Put(t, "runner/abcdefghi/project/42/gitlab-made", zbuf.Bytes())

	tests := []struct {
		name  string
		path  string
		cache jobs.Cache
		vars  jobs.Variables
		want  []string
	}{
		{"fallback_keys, relayed", noCurl, jobs.Cache{Key: "feature", FallbackKeys: []string{"absent", "main"}, Paths: []string{"f"}, Policy: "pull"}, nil,
			[]string{`Restored cache "feature" from fallback key "main"`, " 00O from-main"}},
		{"CACHE_FALLBACK_KEY, direct", "", jobs.Cache{Key: "feature", Paths: []string{"f"}, Policy: "pull"},
			jobs.Variables{{Key: "CACHE_FALLBACK_KEY", Value: "main"}},
			[]string{`from fallback key "main"`, "downloaded by the instance", " 00O from-main"}},
		{"zip, direct with unzip", "", jobs.Cache{Key: "gitlab-made", Paths: []string{"g"}, Policy: "pull"}, nil,
			[]string{`Restored cache "gitlab-made"`, "downloaded by the instance", " 00O from-gitlab"}},
		{"zip, relayed and converted", noCurl, jobs.Cache{Key: "gitlab-made", Paths: []string{"g"}, Policy: "pull"}, nil,
			[]string{`Restored cache "gitlab-made"`, "relayed by the runner host", " 00O from-gitlab"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.path == "" {
				for _, tool := range []string{"curl", "unzip"} {
					if _, err := exec.LookPath(tool); err != nil {
						t.Skipf("%s not installed", tool)
					}
				}
			}
			res, log := runShared(t, shared, tt.path, jobs.Job{Variables: tt.vars, Caches: []jobs.Cache{tt.cache},
				Script: []string{"cat f 2>/dev/null || cat g"}})
			for _, w := range tt.want {
				if res.Status != StatusSuccess || !strings.Contains(log, w) {
					t.Fatalf("log lacks %q: %+v\n%s", w, res, log)
				}
			}
		})
	}
}

// TestSharedCacheRefusals: a store that refuses the credentials, and an archive over
// MaxUploadedArchiveSize, are warnings that name the store and the object; the job
// passes.
func TestSharedCacheRefusals(t *testing.T) {
	s3 := storetest.S3(t)
	bad := *s3.Cache
	badS3 := *bad.S3
	badS3.SecretKey = "wrong-secret"
	bad.S3 = &badS3
	for _, path := range []string{"", busyboxPath(t)} {
		res, log := runShared(t, sharedCache(t, &bad, nil), path, jobs.Job{Caches: []jobs.Cache{{Key: "k", Paths: []string{"f"}}},
			Script: []string{"echo x > f"}})
		store := "s3 bucket " + storetest.S3Bucket + " at " + s3.Addr
		for _, w := range []string{
			`WARNING: restoring cache "k": ` + store + ` refused the download of runner/abcdefghi/project/42/k (HTTP 403`,
			`WARNING: saving cache "k": ` + store + ` refused the upload of runner/abcdefghi/project/42/k (HTTP 403`,
			"check the credentials in [runners.cache]",
		} {
			if res.Status != StatusSuccess || !strings.Contains(log, w) {
				t.Errorf("PATH %q: log lacks %q: %+v\n%s", path, w, res, log)
			}
		}
		if strings.Contains(log, "wrong-secret") {
			t.Errorf("the secret key reached the log:\n%s", log)
		}
	}

	limited := *s3.Cache
	limited.MaxUploadedArchiveSize = 1024
	res, log := runShared(t, sharedCache(t, &limited, nil), "", jobs.Job{Caches: []jobs.Cache{{Key: "big", Paths: []string{"big"}}},
		Script: []string{"head -c 100000 /dev/urandom > big"}})
	if res.Status != StatusSuccess || !strings.Contains(log, "is larger than MaxUploadedArchiveSize (1.0 KiB): not uploaded") {
		t.Fatalf("%+v\n%s", res, log)
	}
	if _, ok := s3.Object(t, "runner/abcdefghi/project/42/big"); ok {
		t.Error("an archive over MaxUploadedArchiveSize was uploaded")
	}
}
