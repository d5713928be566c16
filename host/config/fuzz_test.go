package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to the loader. It must never panic, and it must keep
// its contract: a configuration comes back exactly when there are no errors, and every
// error is placed in the file. The seeds are the example configurations plus the
// corpus in testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(examplesDir, "*.toml"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(okRunner + "    [[runners.autoscaler.policy]]\n      periods = [\"* 25 * * *\"]\n      idle_time = 5\n"))
	// Values at and beyond the bounds, which used to load and then overflow or spin.
	f.Add([]byte(okRunner + "    capacity_per_instance = 9223372036854775807\n    max_instances = 100000\n"))
	f.Add([]byte("concurrent = -9223372036854775808\n" + okRunner + "    max_instances = 4611686018427387904\n    capacity_per_instance = 4\n"))
	f.Add([]byte(okRunner + "    update_interval = \"1ns\"\n    [[runners.autoscaler.policy]]\n      idle_count = 9223372036854775807\n      scale_factor = nan\n"))
	f.Add([]byte(okRunner + "    [[runners.autoscaler.policy]]\n      scale_factor = 1e308\n      scale_factor_limit = 1000000\n    [runners.autoscaler.connector_config]\n      keepalive = \"10ms\"\n"))
	f.Add([]byte("[coordination]\n  endpoints = [\"http://127.0.0.1:2379\"]\n  lease_ttl = \"3s\"\n  prefix = \"/ci\"\n" + okRunner))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, diags, err := Parse("fuzz.toml", data)
		if (cfg != nil) == diags.HasErrors() || (err != nil) != diags.HasErrors() {
			t.Fatalf("cfg=%v err=%v errors=%v: a config must come back exactly when there are no errors",
				cfg != nil, err, diags.HasErrors())
		}
		for _, d := range diags.Errors() {
			if d.Line < 1 || d.Column < 1 {
				t.Fatalf("error without position: %s", d)
			}
		}
		if cfg == nil {
			return
		}
		if co := cfg.Coordination; co != nil && (len(co.Endpoints) == 0 || co.TTL() < MinLeaseTTL) {
			t.Fatalf("[coordination] loaded without endpoints or with lease_ttl %s", co.TTL())
		}
		// What loads is within the bounds the autoscaler relies on.
		for i, r := range cfg.Runners {
			a := r.Autoscaler
			if r.OutputLimit > MaxOutputLimit {
				t.Fatalf("runners[%d].output_limit %d loaded", i, r.OutputLimit)
			}
			if a == nil {
				continue
			}
			if a.CapacityPerInstance > MaxCapacityPerInstance || a.MaxInstances > MaxInstancesBound {
				t.Fatalf("runners[%d]: capacity %d, max_instances %d loaded", i, a.CapacityPerInstance, a.MaxInstances)
			}
			for _, d := range []Duration{a.UpdateInterval, a.UpdateIntervalWhenExpecting, a.DeletionRetryInterval,
				a.ShutdownDeletionInterval, a.ConnectorConfig.Keepalive, a.VMIsolation.ConnectorConfig.Keepalive} {
				if d.Duration > 0 && d.Duration < MinLoopInterval {
					t.Fatalf("runners[%d]: interval %s loaded", i, d.Duration)
				}
			}
			for _, p := range a.Policy {
				if p.IdleCount > MaxIdleSlots || p.ScaleFactorLimit > MaxIdleSlots || !(p.ScaleFactor >= 0 && p.ScaleFactor <= MaxScaleFactor) {
					t.Fatalf("runners[%d]: policy %+v loaded", i, p)
				}
			}
		}
		// Migration of whatever loaded must not panic, and its output must load.
		if res, err := Migrate("fuzz.toml", data); err == nil {
			if _, _, err := Parse("out.toml", res.Output); err != nil {
				t.Fatalf("migrated output does not load: %v\n%s", err, res.Output)
			}
		}
	})
}

// BenchmarkParse measures loading the largest example (the two docker+machine runners).
func BenchmarkParse(b *testing.B) {
	data, err := os.ReadFile(filepath.Join(examplesDir, "docker-machine-aws.toml"))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, _, err := Parse("bench.toml", data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/load")
}
