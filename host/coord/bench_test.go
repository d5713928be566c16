package coord

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkB13 is B13 (docs/ha.md): jobs per second through one manager and through
// three on one pool (one machine, a 3-member etcd cluster on loopback, the fake
// instance group, so only coordination is measured: reserve, acquire and release of
// each job go through etcd and the leader's taskscaler), with the audit of slot keys
// checked; and the time from the leader's death to the next scaling decision, against
// the lease TTL. make bench runs it once (-benchtime 1x).
func BenchmarkB13(b *testing.B) {
	for _, managers := range []int{1, 3} {
		b.Run(fmt.Sprintf("jobs/%d-managers", managers), func(b *testing.B) {
			for range b.N {
				benchJobs(b, managers, 600)
			}
		})
	}
	b.Run("leader-death", func(b *testing.B) {
		for range b.N {
			benchFailover(b)
		}
	})
}

// benchHarness is the tests' harness for a benchmark.
func benchHarness(b *testing.B) *harness {
	b.Helper()
	return newHarnessTB(b, 3)
}

func benchJobs(b *testing.B, managers, jobs int) {
	h := benchHarness(b)
	cli := h.cluster.Client(b)
	rev := startRev(b, cli)
	var ms []*manager
	for i := range managers {
		ms = append(ms, h.join(fmt.Sprintf("m%d", i+1), h.cluster.Endpoints()))
	}
	leaderOf(b, ms...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	runJobs(ctx, b, ms, jobs, 16)
	took := time.Since(start)
	n, twice := audit(b, cli, ms[0].g.Prefix(), rev)
	if n != jobs {
		b.Errorf("audit: %d acquisitions for %d jobs", n, jobs)
	}
	b.ReportMetric(float64(jobs)/took.Seconds(), "jobs/s")
	b.ReportMetric(float64(twice), "double-acquired")
	b.Logf("B13 %d managers: %d jobs in %s = %.1f jobs/s; audit: %d slot acquisitions, %d on a held slot",
		managers, jobs, took.Round(time.Millisecond), float64(jobs)/took.Seconds(), n, twice)
}

func benchFailover(b *testing.B) {
	h := benchHarness(b)
	leader, rest := h.three()
	// Jobs keep coming while the leader dies: a follower asks for a slot again and
	// again, and the first answered one is the new leader's first decision.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leader.die()
	died := time.Now()
	go func() {
		for i := 0; ctx.Err() == nil; i++ {
			key := fmt.Sprintf("after-death-%d", i)
			if rest[0].g.Reserve(ctx, key) == nil {
				rest[0].g.Unreserve(key)
			}
		}
	}()
	next := leaderOf(b, rest...)
	elected := time.Since(died)
	var decided time.Duration
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if sc, ok := next.g.Scaler(); ok {
			if d := sc.Status().LastDecision.Time; d.After(died) {
				decided = d.Sub(died)
				break
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if decided == 0 {
		b.Fatal("no scaling decision within 30s of the leader's death")
	}
	if decided > h.ttl+time.Second {
		b.Errorf("next scaling decision %s after the leader's death; goal: within one lease TTL (%s)", decided, h.ttl)
	}
	b.ReportMetric(decided.Seconds(), "s-to-decision")
	b.ReportMetric(decided.Seconds()/h.ttl.Seconds(), "lease-TTLs")
	b.Logf("B13 leader death: new leader elected after %s, next scaling decision after %s (lease_ttl %s)",
		elected.Round(time.Millisecond), decided.Round(time.Millisecond), h.ttl)
}
