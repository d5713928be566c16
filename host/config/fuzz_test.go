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
