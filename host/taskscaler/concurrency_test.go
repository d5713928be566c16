package taskscaler

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/fake"
)

// TestConcurrentJobs runs many jobs through Reserve/Acquire/Release from parallel
// goroutines while cycles run, then checks that no slot leaked and every use counted.
func TestConcurrentJobs(t *testing.T) {
	e := newEnv(t, fake.Options{CreatingUpdates: 1}, Options{CapacityPerInstance: 3, MaxInstances: 4, MaxUseCount: 5, InstanceAcquireTimeout: 1000 * time.Hour,
		ReservationThrottling: boolp(false)})
	const workers, perWorker = 12, 10
	var wg sync.WaitGroup
	var jobs atomic.Int64
	stop := make(chan struct{})
	cycles := make(chan struct{})
	go func() {
		defer close(cycles)
		for {
			select {
			case <-stop:
				return
			default:
			}
			e.clk.Advance(time.Second) // refills scale_throttle tokens
			_ = e.s.Reconcile(context.Background())
			runtime.Gosched()
		}
	}()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < perWorker; {
				key := fmt.Sprintf("w%d-j%d", w, j)
				if err := e.s.Reserve(context.Background(), key); err != nil {
					runtime.Gosched()
					continue
				}
				a, err := e.s.Acquire(context.Background(), key)
				if err != nil {
					t.Errorf("Acquire %s: %v", key, err)
					return
				}
				jobs.Add(1)
				e.s.Release(a.Key())
				j++
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-cycles
	e.reconcile(3)
	st := e.s.Status()
	if st.Tasks.Acquired != 0 || st.Tasks.Reserved != 0 || st.Tasks.Pending != 0 {
		t.Fatalf("slots leaked: %+v", st.Tasks)
	}
	if jobs.Load() != workers*perWorker {
		t.Fatalf("jobs %d", jobs.Load())
	}
	for _, in := range st.InstanceList {
		if in.UseCount > 5 {
			t.Fatalf("instance %s used %d times, max_use_count 5", in.ID, in.UseCount)
		}
	}
	// Every job used one slot: uses on live and gone instances add up.
	total := 0
	for _, in := range append(st.InstanceList, st.Gone...) {
		total += in.UseCount
	}
	if total != workers*perWorker {
		t.Fatalf("uses counted %d, want %d", total, workers*perWorker)
	}
}
