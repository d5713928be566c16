package runcmd

import (
	"fmt"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/cachestore/storetest"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
)

// TestSharedCacheAcrossManagers runs two runner managers of one runner entry (same
// token, each with its own config directory, so its own cache on its host) with the
// same [runners.cache] in S3: a cache one manager's job saves, the other's job restores.
func TestSharedCacheAcrossManagers(t *testing.T) {
	s3 := storetest.S3(t)
	cacheTable := fmt.Sprintf(`  [runners.cache]
    Type = "s3"
    Path = "team"
    Shared = false
    [runners.cache.s3]
      ServerAddress = %q
      Insecure = true
      AccessKey = %q
      SecretKey = %q
      BucketName = %q
`, s3.Addr, s3.Cache.S3.AccessKey, s3.Cache.S3.SecretKey, s3.Cache.S3.BucketName)

	e := start(t, 2, cacheTable)
	job := func(name string, script ...string) int64 {
		p := gitlabtest.JobPayload(name, e.repo, e.sha, script, nil)
		p.JobInfo.ProjectID = 7
		p.Cache = []gitlab.Cache{{Key: "deps-non_protected", Paths: []string{"deps/"}, Policy: "pull-push", When: "on_success"}}
		return e.srv.Enqueue(p)
	}
	first := e.wait(t, job("save", "mkdir -p deps", "echo from-manager-one > deps/lib"))
	if first.State != gitlabtest.Success || !strings.Contains(string(first.Trace), `Saved cache "deps-non_protected"`) {
		t.Fatalf("first job: %s\n%s", first.State, first.Trace)
	}
	object := "team/runner/e2e-token/project/7/deps-non_protected"
	if _, ok := s3.Object(t, object); !ok {
		t.Fatalf("no object %s in the bucket: %v", object, s3.List(t, ""))
	}

	// The first manager stops; a second one, with its own (empty) cache directory,
	// takes the next job.
	e.cancel()
	if err := <-e.done; err != nil {
		t.Fatalf("first manager: %v", err)
	}
	e.done <- nil // for the cleanup
	startManager(t, configText(e.srv.URL, e.root+"-two", 2, cacheTable))
	second := e.wait(t, job("restore", "cat deps/lib"))
	if second.State != gitlabtest.Success || !strings.Contains(string(second.Trace), `Restored cache "deps-non_protected" from s3 bucket`) ||
		!strings.Contains(string(second.Trace), "from-manager-one") {
		t.Fatalf("second job: %s\n%s", second.State, second.Trace)
	}
}
