package qemu

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
)

// benchBackend is a backend on the test image with the accelerator "auto" picks.
func benchBackend(b *testing.B, maxVMs int) (*Hypervisor, string, ssh.Signer) {
	imagesDir, name := vmtest.Image(b)
	key, signer := vmtest.Key(b)
	h := New(nil)
	cfg := map[string]any{"authorized_key": key, "images_dir": imagesDir, "state_dir": b.TempDir(),
		"accelerator": "auto", "memory": 256, "vcpus": 1, "max_vms": maxVMs}
	data, err := json.Marshal(cfg)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := h.Init(context.Background(), data); err != nil {
		b.Fatal(err)
	}
	return h, name, signer
}

// BenchmarkB9CreateSSH is B9: Create → the guest's SSH server runs a command, over a
// few sequential VMs; p50/p95 are reported with the accelerator (in the benchmark's
// name).
func BenchmarkB9CreateSSH(b *testing.B) {
	const runs = 5
	h, name, k := benchBackend(b, 1)
	b.Run("accel="+h.Info().Accelerator, func(b *testing.B) {
		var d []time.Duration
		for range b.N {
			for range runs {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				start := time.Now()
				vm, err := h.Create(ctx, name, nesting.NoSlot)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := vmtest.Run(ctx, vm.Addr, k, "true"); err != nil {
					b.Fatal(err)
				}
				d = append(d, time.Since(start))
				if err := h.Delete(ctx, vm.ID); err != nil {
					b.Fatal(err)
				}
				cancel()
			}
		}
		slices.Sort(d)
		b.ReportMetric(pct(d, 50).Seconds(), "p50-s")
		b.ReportMetric(pct(d, 95).Seconds(), "p95-s")
		b.ReportMetric(0, "ns/op")
	})
}

// BenchmarkB9Density starts 8 VMs of 256 MiB at once and reports how long until all
// of them answer SSH.
func BenchmarkB9Density(b *testing.B) {
	const n = 8
	h, name, k := benchBackend(b, n)
	b.Run("accel="+h.Info().Accelerator, func(b *testing.B) {
		for range b.N {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			start := time.Now()
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					vm, err := h.Create(ctx, name, nesting.NoSlot)
					if err != nil {
						errs <- err
						return
					}
					defer h.Delete(context.WithoutCancel(ctx), vm.ID)
					_, err = vmtest.Run(ctx, vm.Addr, k, "true")
					errs <- err
				}()
			}
			// All answer before any is deleted: each goroutine deletes only after its
			// own answer, so wait for n answers first.
			var failed error
			for range n {
				if err := <-errs; err != nil && failed == nil {
					failed = err
				}
			}
			all := time.Since(start)
			wg.Wait()
			cancel()
			if failed != nil {
				b.Fatal(failed)
			}
			b.ReportMetric(all.Seconds(), "all-answer-s")
			b.ReportMetric(n, "vms")
			b.ReportMetric(0, "ns/op")
		}
	})
}

func pct(d []time.Duration, p int) time.Duration {
	i := (len(d)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return d[i-1]
}
