package instance

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/cachestore"
	"github.com/flotilla-ci/flotilla/host/cachestore/storetest"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// stageClock records when each build stage of a job starts, and when the job ends.
type stageClock struct{ at map[string]time.Time }

func (c *stageClock) mark(stage string) { c.at[stage] = time.Now() }

// BenchmarkB11CacheThroughStore is B11: restore and save of a 200 MiB cache (random,
// so gzip cannot shrink it) through the S3-compatible store, which the instance
// reaches directly, vs through the runner host (its cache_dir: the archive crosses
// the SSH connection), on one instance over a real sshd; medians of a few runs each,
// and their ratio.
func BenchmarkB11CacheThroughStore(b *testing.B) {
	const runs, size = 3, 200 << 20
	conn := dial(b)
	s3 := storetest.S3(b)
	st, err := cachestore.New(context.Background(), s3.Cache)
	if err != nil {
		b.Fatal(err)
	}
	shared := executors.NewSharedCache(st, s3.Cache, "glrt-bench-token", 1)
	src := b.TempDir()
	variants := []struct {
		name string
		opts func() executors.RunOptions
	}{
		{"store", func() executors.RunOptions { return executors.RunOptions{SharedCache: shared} }},
		{"host", func() executors.RunOptions { return executors.RunOptions{CacheDir: b.TempDir()} }},
	}
	// measure runs a job and returns how long the stage from..to took.
	measure := func(opts executors.RunOptions, cache jobs.Cache, script string, from, to string) time.Duration {
		clock := &stageClock{at: map[string]time.Time{}}
		opts.Executor, opts.OnStage = "instance", clock.mark
		job := &jobs.Job{ID: "b11", Name: "b11", Source: jobs.Source{Kind: jobs.SourceLocal, Dir: src},
			Caches: []jobs.Cache{cache}, Script: []string{script}}
		env, err := New(conn, job, Options{})
		if err != nil {
			b.Fatal(err)
		}
		var log bytes.Buffer
		if res := executors.Run(context.Background(), job, env, &log, opts); res.Status != executors.StatusSuccess {
			b.Fatalf("%+v\n%s", res, log.String())
		}
		clock.mark("end")
		if !bytes.Contains(log.Bytes(), []byte("Saved cache")) && !bytes.Contains(log.Bytes(), []byte("Restored cache")) {
			b.Fatalf("no cache transfer:\n%s", log.String())
		}
		return clock.at[to].Sub(clock.at[from])
	}
	medians := map[string]time.Duration{}
	for range b.N {
		for _, v := range variants {
			var took []time.Duration
			for i := range runs {
				opts := v.opts()
				key := fmt.Sprintf("big-%d", i)
				save := measure(opts, jobs.Cache{Key: key, Paths: []string{"big"}, Policy: "push"},
					fmt.Sprintf("mkdir -p big && head -c %d /dev/urandom > big/blob", size), "archive_cache", "end")
				restore := measure(opts, jobs.Cache{Key: key, Paths: []string{"big"}, Policy: "pull"},
					"rm -rf big", "restore_cache", "step_script")
				took = append(took, save+restore)
			}
			slices.Sort(took)
			medians[v.name] = took[len(took)/2]
		}
	}
	b.ReportMetric(medians["store"].Seconds(), "store-s")
	b.ReportMetric(medians["host"].Seconds(), "host-s")
	b.ReportMetric(float64(medians["store"])/float64(medians["host"]), "store/host")
	b.ReportMetric(0, "ns/op")
}
