package simulate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

func TestParseSweep(t *testing.T) {
	good := []struct {
		spec   string
		key    string
		values []float64
		labels []string // of the first and last value
	}{
		{"idle_count=0..10", "idle_count", []float64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, []string{"0", "10"}},
		{"idle_count=0..20:5", "idle_count", []float64{0, 5, 10, 15, 20}, []string{"0", "20"}},
		{"idle_count=0..9:4", "idle_count", []float64{0, 4, 8}, []string{"0", "8"}},
		{" idle_count = 3 .. 3 ", "idle_count", []float64{3}, []string{"3", "3"}},
		{"idle_time=1m..5m:1m", "idle_time", []float64{60e9, 120e9, 180e9, 240e9, 300e9}, []string{"1m0s", "5m0s"}},
		{"idle_time=0s..30m", "idle_time", []float64{0, 180e9, 360e9, 540e9, 720e9, 900e9, 1080e9, 1260e9, 1440e9, 1620e9, 1800e9}, []string{"0s", "30m0s"}},
		{"scale_factor=0..0.3:0.1", "scale_factor", []float64{0, 0.1, 0.2, 0.3}, []string{"0", "0.3"}},
		{"scale_factor=0..1", "scale_factor", []float64{0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1}, []string{"0", "1"}},
		{"target_wait=1s..10s:3s", "target_wait", []float64{1e9, 4e9, 7e9, 10e9}, []string{"1s", "10s"}},
		{"target_percentile=90..99:3", "target_percentile", []float64{90, 93, 96, 99}, []string{"90", "99"}},
		{"capacity_per_instance=1..4", "capacity_per_instance", []float64{1, 2, 3, 4}, []string{"1", "4"}},
		{"max_use_count=0..10:5", "max_use_count", []float64{0, 5, 10}, []string{"0", "10"}},
		{"max_instances=10..30:10", "max_instances", []float64{10, 20, 30}, []string{"10", "30"}},
		{"scale_factor_limit=0..2", "scale_factor_limit", []float64{0, 1, 2}, []string{"0", "2"}},
		{"idle_count=0..199", "idle_count", nil, nil}, // 200 values: the cap itself
	}
	for _, tt := range good {
		t.Run(tt.spec, func(t *testing.T) {
			s, err := ParseSweep(tt.spec)
			if err != nil {
				t.Fatalf("ParseSweep: %v", err)
			}
			if s.Key != tt.key {
				t.Errorf("key %q, want %q", s.Key, tt.key)
			}
			if tt.values == nil {
				if len(s.Values) != MaxSweepPoints {
					t.Errorf("%d values, want %d", len(s.Values), MaxSweepPoints)
				}
				return
			}
			if !slices.Equal(s.Values, tt.values) {
				t.Errorf("values %v, want %v", s.Values, tt.values)
			}
			if got := []string{s.Label(s.Values[0]), s.Label(s.Values[len(s.Values)-1])}; !slices.Equal(got, tt.labels) {
				t.Errorf("labels %q, want %q", got, tt.labels)
			}
		})
	}

	bad := []struct{ spec, want string }{
		{"idle_count", "want KEY=FROM..TO[:STEP]"},
		{"idel_count=0..1", `unknown key "idel_count": want one of capacity_per_instance, idle_count,`},
		{"periods=0..1", `unknown key "periods"`},
		{"idle_count=0-10", "want FROM..TO[:STEP] after idle_count="},
		{"idle_count=a..3", `FROM "a" is not a whole number`},
		{"idle_count=0..3.5", `TO "3.5" is not a whole number`},
		{"idle_count=0..3:1.5", `STEP "1.5" is not a whole number`},
		{"idle_time=1..5", `FROM "1" is not a duration`},
		{"scale_factor=0..nan", `TO "nan" is not a number`},
		{"scale_factor=0..inf", `TO "inf" is not a number`},
		{"idle_count=5..1", "FROM 5 is above TO 1"},
		{"idle_count=0..10:0", "STEP 0 must be above 0"},
		{"idle_count=0..10:-1", "STEP -1 must be above 0"},
		{"idle_time=1m..5m:0s", "STEP 0s must be above 0"},
		{"idle_count=0..200", "201 values; at most 200: use a larger STEP"},
		{"idle_time=0s..24h:1s", "86401 values; at most 200"},
		{"scale_factor=0..1:1e-300", "values; at most 200"},
		{"idle_count=-1..3", "FROM -1 is out of range for idle_count: at least 0"},
		{"target_percentile=0..50", "FROM 0 is out of range for target_percentile: above 0 and below 100"},
		{"target_percentile=90..100", "TO 100 is out of range"},
		{"target_wait=0s..10s", "FROM 0s is out of range for target_wait: above 0s"},
		{"capacity_per_instance=0..2", "FROM 0 is out of range for capacity_per_instance: at least 1 and at most 1000"},
		{"idle_time=-1m..1m", "FROM -1m is out of range"},
	}
	for _, tt := range bad {
		t.Run("bad "+tt.spec, func(t *testing.T) {
			_, err := ParseSweep(tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "--sweep ") {
				t.Fatalf("err %v, want it to name --sweep and contain %q", err, tt.want)
			}
		})
	}
}

// FuzzParseSweep: whatever the flag says, the parser returns an error naming the flag,
// or 1 to MaxSweepPoints ascending values that the key allows.
func FuzzParseSweep(f *testing.F) {
	for _, s := range []string{"idle_count=0..10", "idle_time=1m..30m:1m", "scale_factor=0..1:0.05", "target_percentile=50..99.9:0.1",
		"target_wait=1ns..3ns:1ns", "idle_time=0s..9ns", "max_use_count=0..9223372036854775807:46116860184273879", "idle_count=0..10:", "=..:", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		s, err := ParseSweep(spec)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--sweep ") {
				t.Fatalf("error %q does not name the flag", err)
			}
			return
		}
		k, ok := sweepKeys[s.Key]
		if !ok || len(s.Values) < 1 || len(s.Values) > MaxSweepPoints {
			t.Fatalf("%q: key %q, %d values", spec, s.Key, len(s.Values))
		}
		for i, v := range s.Values {
			if math.IsNaN(v) || v < k.lo || (k.loOpen && v <= k.lo) || v > k.hi || (k.hiOpen && v >= k.hi) {
				t.Fatalf("%q: value %g is outside what %s allows", spec, v, s.Key)
			}
			if i > 0 && v <= s.Values[i-1] {
				t.Fatalf("%q: values %v are not ascending", spec, s.Values)
			}
			if k.kind != kindFloat && v != math.Trunc(v) {
				t.Fatalf("%q: value %g of a whole-number key", spec, v)
			}
			if s.Label(v) == "" {
				t.Fatalf("%q: empty label for %g", spec, v)
			}
		}
	})
}

func TestSweepWith(t *testing.T) {
	fixed := taskscaler.Policy{Periods: []string{"* 8-18 * * mon-fri"}, Timezone: "Europe/Berlin", IdleCount: 5, IdleTime: 20 * time.Minute,
		ScaleFactor: 0.5, PreemptiveMode: boolPtr(true)}
	fc := taskscaler.Policy{Mode: taskscaler.ModeForecast, IdleCount: 2, TargetWait: 9 * time.Second}
	base := Params{Scaler: taskscaler.Options{MaxUseCount: 3, Policies: []taskscaler.Policy{{}, fixed, fc}}}
	orig := slices.Clone(base.Scaler.Policies)
	spec := func(s string) SweepSpec {
		t.Helper()
		sp, err := ParseSweep(s)
		if err != nil {
			t.Fatal(err)
		}
		return sp
	}

	p := spec("idle_count=7..7").With(base, 7)
	for i, pol := range p.Scaler.Policies {
		if pol.IdleCount != 7 {
			t.Errorf("policy[%d].IdleCount = %d: a policy key is set on every policy", i, pol.IdleCount)
		}
	}
	if !slices.EqualFunc(base.Scaler.Policies, orig, func(a, b taskscaler.Policy) bool { return a.IdleCount == b.IdleCount }) {
		t.Error("With changed the caller's policies")
	}
	if p := spec("idle_count=1..1").With(Params{}, 1); len(p.Scaler.Policies) != 1 || p.Scaler.Policies[0].IdleCount != 1 {
		t.Errorf("no policies: got %+v, want one always-active policy with the value", p.Scaler.Policies)
	}
	if p := spec("max_use_count=1..1").With(base, 1); p.Scaler.MaxUseCount != 1 || p.Scaler.Policies[1].IdleCount != 5 {
		t.Errorf("max_use_count: options %d, policy idle_count %d: want the runner's key set and the policies as they were", p.Scaler.MaxUseCount, p.Scaler.Policies[1].IdleCount)
	}
	p = spec("target_wait=2s..2s").With(base, float64(2*time.Second))
	want := []taskscaler.Policy{
		{Mode: taskscaler.ModeForecast, TargetWait: 2 * time.Second},
		{Periods: fixed.Periods, Timezone: fixed.Timezone, IdleTime: fixed.IdleTime, Mode: taskscaler.ModeForecast, TargetWait: 2 * time.Second},
		{Mode: taskscaler.ModeForecast, IdleCount: 2, TargetWait: 2 * time.Second}, // a forecast policy keeps its floor
	}
	for i := range want {
		if got := p.Scaler.Policies[i]; !policyEqual(got, want[i]) {
			t.Errorf("target_wait: policy[%d] = %+v, want %+v", i, got, want[i])
		}
	}
}

func policyEqual(a, b taskscaler.Policy) bool {
	return slices.Equal(a.Periods, b.Periods) && a.Timezone == b.Timezone && a.IdleCount == b.IdleCount && a.IdleTime == b.IdleTime &&
		a.ScaleFactor == b.ScaleFactor && a.ScaleFactorLimit == b.ScaleFactorLimit && (a.PreemptiveMode == nil) == (b.PreemptiveMode == nil) &&
		a.Mode == b.Mode && a.TargetWait == b.TargetWait && a.TargetPercentile == b.TargetPercentile
}

func TestForecastParams(t *testing.T) {
	fixed := taskscaler.Policy{Periods: []string{"* 8-18 * * *"}, Timezone: "UTC", IdleCount: 5, IdleTime: time.Minute, ScaleFactor: 1, PreemptiveMode: boolPtr(true)}
	fc := taskscaler.Policy{Mode: taskscaler.ModeForecast, IdleCount: 1, TargetWait: 3 * time.Second}
	tests := []struct {
		name    string
		in      []taskscaler.Policy
		want    []taskscaler.Policy
		already bool
	}{
		{"no policy", nil, []taskscaler.Policy{{Mode: taskscaler.ModeForecast}}, false},
		{"fixed: mode forecast, default targets, no floor, not preemptive", []taskscaler.Policy{fixed},
			[]taskscaler.Policy{{Periods: fixed.Periods, Timezone: "UTC", IdleTime: time.Minute, Mode: taskscaler.ModeForecast}}, false},
		{"mixed: the forecast policy is kept", []taskscaler.Policy{fixed, fc},
			[]taskscaler.Policy{{Periods: fixed.Periods, Timezone: "UTC", IdleTime: time.Minute, Mode: taskscaler.ModeForecast}, fc}, false},
		{"all forecast: the config's own", []taskscaler.Policy{fc, fc}, []taskscaler.Policy{fc, fc}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, already := ForecastParams(Params{Scaler: taskscaler.Options{Policies: tt.in}})
			if already != tt.already || !slices.EqualFunc(p.Scaler.Policies, tt.want, policyEqual) {
				t.Errorf("got %+v, %v\nwant %+v, %v", p.Scaler.Policies, already, tt.want, tt.already)
			}
		})
	}
}

// TestRunSweepFrontier sweeps idle_count on a CI-shaped trace with ephemeral instances:
// with no idle slot a job waits a boot, and each idle slot costs more. Each point is
// the run of a config with that value, and the forecast point is the run of the
// config made forecast.
func TestRunSweepFrontier(t *testing.T) {
	jobs := mustGenerate(t, GenerateOptions{Seed: 2, Jobs: 600, MaxFanout: 8})
	boot := time.Minute
	p := Params{Boot: BootTime{Fixed: boot}, Seed: 1, Scaler: taskscaler.Options{MaxUseCount: 1, CapacityPerInstance: 1,
		Policies: []taskscaler.Policy{{IdleTime: 5 * time.Minute, PreemptiveMode: boolPtr(false)}}}}
	spec, err := ParseSweep("idle_count=0..10:2")
	if err != nil {
		t.Fatal(err)
	}
	sw, err := RunSweep(context.Background(), jobs, p, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(sw.Points) != 6 || sw.Key != "idle_count" || sw.Points[0].Value != "0" || sw.Points[5].Value != "10" {
		t.Fatalf("points %d (%q … %q) of %q: want 6, 0 … 10 of idle_count", len(sw.Points), sw.Points[0].Value, sw.Points[len(sw.Points)-1].Value, sw.Key)
	}
	first, last := sw.Points[0], sw.Points[len(sw.Points)-1]
	if first.WaitP95S < 0.9*boot.Seconds() {
		t.Errorf("idle_count 0: wait p95 %.1f s, want about a boot (%s)", first.WaitP95S, boot)
	}
	if last.WaitP95S >= first.WaitP95S || last.CostOverFloor <= first.CostOverFloor {
		t.Errorf("idle_count 10: wait p95 %.1f s at %.2f × the floor, want less wait than idle_count 0 (%.1f s) at more cost (%.2f)",
			last.WaitP95S, last.CostOverFloor, first.WaitP95S, first.CostOverFloor)
	}
	for i := 1; i < len(sw.Points); i++ {
		if a, b := sw.Points[i-1], sw.Points[i]; b.CostOverFloor < 0.98*a.CostOverFloor {
			t.Errorf("cost falls from %.3f (idle_count %s) to %.3f (idle_count %s): more idle slots cost more", a.CostOverFloor, a.Value, b.CostOverFloor, b.Value)
		}
	}
	for _, pt := range sw.Points {
		if !near(pt.CostOverFloor, pt.InstanceSeconds/pt.ClairvoyantInstanceSeconds) || pt.QueuedJobs != 0 {
			t.Errorf("idle_count %s: cost / floor %.3f, queued %d: want instance-seconds / C* and no GitLab queue (not preemptive)", pt.Value, pt.CostOverFloor, pt.QueuedJobs)
		}
	}

	// A point is the run of the config with that value.
	direct := run(t, jobs, spec.With(p, 4))
	if pt := sw.Points[2]; pt.Value != "4" || pt.InstanceSeconds != direct.InstanceSeconds || pt.WaitP95S != direct.WaitP95S {
		t.Errorf("point %s: %.0f instance-seconds, p95 %.1f s; a run with idle_count 4: %.0f, %.1f s", pt.Value, pt.InstanceSeconds, pt.WaitP95S, direct.InstanceSeconds, direct.WaitP95S)
	}
	fp, _ := ForecastParams(p)
	fdirect := run(t, jobs, fp)
	if sw.Forecast.Value != "forecast" || sw.ForecastIsConfig || sw.Forecast.InstanceSeconds != fdirect.InstanceSeconds || sw.Forecast.WaitP95S != fdirect.WaitP95S {
		t.Errorf("forecast point %q (config's own %v): %.0f instance-seconds, p95 %.1f s; the forecast run: %.0f, %.1f s",
			sw.Forecast.Value, sw.ForecastIsConfig, sw.Forecast.InstanceSeconds, sw.Forecast.WaitP95S, fdirect.InstanceSeconds, fdirect.WaitP95S)
	}

	var text bytes.Buffer
	if err := WriteSweepText(&text, sw); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(text.String()), "\n")
	if !strings.Contains(lines[0], "idle_count") || !strings.Contains(lines[0], "cost / floor") || !strings.HasPrefix(strings.TrimSpace(lines[1]), "0 ") ||
		!strings.HasPrefix(strings.TrimSpace(lines[7]), "forecast ") || !strings.Contains(text.String(), `mode = "forecast"`) {
		t.Errorf("table:\n%s", text.String())
	}
	js, err := json.Marshal(sw)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Key    string           `json:"key"`
		Points []map[string]any `json:"points"`
		Fc     map[string]any   `json:"forecast"`
	}
	if err := json.Unmarshal(js, &m); err != nil || m.Key != "idle_count" || len(m.Points) != 6 || m.Points[1]["value"] != "2" ||
		m.Points[1]["wait_p95_s"] == nil || m.Points[1]["cost_over_floor"] == nil || m.Fc["value"] != "forecast" {
		t.Errorf("JSON (%v):\n%s", err, js)
	}
}

// TestRunSweepForecastConfig: when the config's policies are all forecast, the
// forecast point is the config's own run.
func TestRunSweepForecastConfig(t *testing.T) {
	jobs := mustGenerate(t, GenerateOptions{Seed: 3, Jobs: 200, MaxFanout: 8})
	p := Params{Boot: BootTime{Fixed: 30 * time.Second}, Scaler: taskscaler.Options{MaxUseCount: 1,
		Policies: []taskscaler.Policy{{Mode: taskscaler.ModeForecast, IdleTime: time.Minute, TargetWait: 10 * time.Second}}}}
	spec, err := ParseSweep("max_use_count=1..2")
	if err != nil {
		t.Fatal(err)
	}
	sw, err := RunSweep(context.Background(), jobs, p, spec)
	if err != nil {
		t.Fatal(err)
	}
	own := run(t, jobs, p)
	if !sw.ForecastIsConfig || sw.Forecast.InstanceSeconds != own.InstanceSeconds || sw.Forecast.WaitP95S != own.WaitP95S {
		t.Errorf("forecast point (config's own %v): %.0f instance-seconds, p95 %.1f s; the config's run: %.0f, %.1f s",
			sw.ForecastIsConfig, sw.Forecast.InstanceSeconds, sw.Forecast.WaitP95S, own.InstanceSeconds, own.WaitP95S)
	}
	var text bytes.Buffer
	if err := WriteSweepText(&text, sw); err != nil || !strings.Contains(text.String(), "the config's own policies") {
		t.Errorf("table (%v):\n%s", err, text.String())
	}
}

func TestRunSweepCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	spec, _ := ParseSweep("idle_count=0..3")
	_, err := RunSweep(ctx, js(0, 10), Params{Boot: BootTime{Fixed: time.Second}}, spec)
	if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "sweep") {
		t.Fatalf("err %v, want the cancellation, naming the run", err)
	}
	// A config the scaler refuses fails every run; the error names the first.
	bad := Params{Boot: BootTime{Fixed: time.Second}, Scaler: taskscaler.Options{Policies: []taskscaler.Policy{{Timezone: "Nowhere/Else"}}}}
	_, err = RunSweep(context.Background(), js(0, 10), bad, spec)
	if err == nil || !strings.HasPrefix(err.Error(), "sweep") || !strings.Contains(err.Error(), "Nowhere/Else") {
		t.Fatalf("err %v, want the scaler's refusal, naming the run", err)
	}
}
