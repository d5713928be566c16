package taskscaler

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/fake"
)

func TestSlotsFor(t *testing.T) {
	single := []float64{1}
	fours := []float64{0, 0, 0, 1}
	cases := []struct {
		name      string
		expected  float64
		bursts    []float64
		freed     float64
		threshold float64
		want      int
	}{
		{"no demand", 0, single, 0, 0.05, 0},
		{"a slot is never worth keeping", 5, single, 0, 1, 0},
		// Poisson(2): P(D>4) = 0.0527, P(D>5) = 0.0166.
		{"single jobs", 2, single, 0, 0.05, 5},
		// Bursts of 4 at rate 0.5: P(D>7) = P(N≥2) = 0.090, P(D>8) = P(N≥3) = 0.014.
		{"bursts of four", 2, fours, 0, 0.05, 8},
		// Ten slots freed on average cover two arrivals: P(D > F) < 0.05.
		{"freed slots serve arrivals", 2, single, 10, 0.05, 0},
		// Beyond 500 bursts a window: the normal approximation, 2000 + 1.645·√2000.
		{"many bursts", 2000, single, 0, 0.05, 2074},
		// Many jobs and as many freed: 1.645·√(900 + 900) above the difference, 0.
		{"many jobs, as many freed", 900, single, 900, 0.05, 70},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := slotsFor(c.expected, c.bursts, c.freed, c.threshold); got != c.want {
				t.Fatalf("slotsFor(%g, %v, %g, %g) = %d, want %d", c.expected, c.bursts, c.freed, c.threshold, got, c.want)
			}
		})
	}
}

// A burst of arrivals raises the forecast in the same decision, and the target says
// why in words.
func TestForecastReactsToABurstAndSaysWhy(t *testing.T) {
	d := newDemand(nil)
	p := forecastPolicy{Policy{Mode: ModeForecast}}
	snap := func(now time.Time) Snapshot {
		return Snapshot{Now: now, CapacityPerInstance: 1, MaxUseCount: 1, Demand: Demand{d: d, now: now}}
	}
	before := p.IdleTarget(snap(t0))
	if before.Slots != 0 || before.Forecast == nil || before.Forecast.Expected != 0 {
		t.Fatalf("with no history and no arrivals: %+v", before)
	}
	for i := range 8 {
		d.arrive(t0.Add(time.Duration(i)*300*time.Millisecond), fmt.Sprintf("job-%d", i))
	}
	now := t0.Add(3 * time.Second)
	after := p.IdleTarget(snap(now))
	if after.Slots < 1 || after.Forecast.Expected <= 0 {
		t.Fatalf("after a burst of 8: %+v", after)
	}
	for _, want := range []string{"forecast ", "jobs in the next 55s", "boot 1m0s assumed", fmt.Sprintf("keeping %d slots idle", after.Slots)} {
		if !strings.Contains(after.Why, want) {
			t.Errorf("why %q lacks %q", after.Why, want)
		}
	}
	// idle_count is a floor under the forecast.
	floor := forecastPolicy{Policy{Mode: ModeForecast, IdleCount: after.Slots + 3}}.IdleTarget(snap(now))
	if floor.Slots != after.Slots+3 || !strings.Contains(floor.Why, "idle_count") {
		t.Fatalf("idle_count floor: %+v", floor)
	}
}

// Late jobs raise the value of a job in time (and so the idle slots), jobs in time
// lower it.
func TestForecastLearnsFromWaits(t *testing.T) {
	p := forecastPolicy{Policy{Mode: ModeForecast}}
	valueFor := func(maxUse int, waits ...time.Duration) float64 {
		d := newDemand(nil)
		for _, w := range waits {
			d.addWait(w)
		}
		var fc Forecast
		fc.Boot = time.Minute
		return p.jobValue(Snapshot{Now: t0, MaxUseCount: maxUse, Demand: Demand{d: d, now: t0}}, &fc)
	}
	value := func(waits ...time.Duration) float64 { return valueFor(1, waits...) }
	start := value()
	if want := initialJobValueOnce * 60; start != want {
		t.Fatalf("initial value for instances used once %g, want %g", start, want)
	}
	if got, want := valueFor(0), initialJobValueReused*60; got != want {
		t.Fatalf("initial value for reused instances %g, want %g", got, want)
	}
	late, inTime := value(30*time.Second, 40*time.Second), value(0, time.Second)
	// Many late jobs drive the value to its cap, and the policy says the target is
	// out of reach instead of paying ever more.
	waits := make([]time.Duration, 200)
	for i := range waits {
		waits[i] = time.Minute
	}
	d := newDemand(nil)
	for _, w := range waits {
		d.addWait(w)
	}
	tgt := p.IdleTarget(Snapshot{Now: t0, CapacityPerInstance: 1, MaxUseCount: 1, Demand: Demand{d: d, now: t0}})
	if tgt.Forecast.JobValue != maxJobValue*60 || !tgt.Forecast.Unreachable || !strings.Contains(tgt.Why, "not met even at the highest job value") {
		t.Fatalf("after 200 late jobs: value %g, unreachable %v, why %q", tgt.Forecast.JobValue, tgt.Forecast.Unreachable, tgt.Why)
	}
	if late <= start || inTime >= start {
		t.Fatalf("value after two late jobs %g, after two in time %g, start %g", late, inTime, start)
	}
}

// The demand history goes to the state store with the inventory and a restarted
// scaler forecasts from it: the same quarter hour a week later is known.
func TestDemandHistorySurvivesARestart(t *testing.T) {
	o := Options{MaxInstances: 10, Policies: []Policy{{Mode: ModeForecast}}}
	e := newEnv(t, fake.Options{}, o)
	ctx := context.Background()
	for i := range 9 {
		key := fmt.Sprintf("job-%d", i)
		if err := e.s.Reserve(ctx, key); err != nil {
			t.Fatal(err)
		}
		e.s.TryAcquire(ctx, key) // the job arrives; no slot is ready
		e.clk.Advance(time.Minute)
	}
	e.clk.Set(t0.Add(demandBucket)) // the quarter hour ends
	e.reconcile(1)
	if err := e.shutdown(); err != nil {
		t.Fatal(err)
	}

	e.clk.Set(t0.Add(7 * 24 * time.Hour))
	e.start(o)
	e.s.mu.Lock()
	rate, from, ok := Demand{d: e.s.demand, now: e.clk.Now()}.Seasonal(e.clk.Now())
	e.s.mu.Unlock()
	if want := 9 / demandBucket.Seconds(); !ok || from != "week" || rate != want {
		t.Fatalf("after a restart a week later: rate %g from %q (known %v), want %g from the week table", rate, from, ok, want)
	}
	e.s.mu.Lock()
	why := e.s.countLocked(e.clk.Now()).why.Why
	e.s.mu.Unlock()
	if !strings.Contains(why, "from this time last week") {
		t.Fatalf("the decision explains %q", why)
	}
}

// A forecast policy applies only within its periods, like any policy, and status and
// the report for people say which kind is active and why it keeps what it keeps.
func TestForecastPolicyPeriodsAndReport(t *testing.T) {
	o := Options{Policies: []Policy{
		{IdleCount: 1},
		{Periods: []string{"* 8-17 * * *"}, Timezone: "UTC", Mode: ModeForecast, TargetWait: 10 * time.Second},
	}}
	e := newEnv(t, fake.Options{}, o)
	e.clk.Set(time.Date(2026, 3, 3, 3, 0, 0, 0, time.UTC))
	if st := e.s.Status(); st.Mode != ModeFixed || st.IdleTarget != 1 || st.IdleWhy != "idle_count 1" || st.Forecast != nil {
		t.Fatalf("at 03:00: mode %q, target %d, why %q", st.Mode, st.IdleTarget, st.IdleWhy)
	}
	e.clk.Set(time.Date(2026, 3, 3, 10, 0, 0, 0, time.UTC))
	st := e.s.Status()
	if st.Mode != ModeForecast || st.Forecast == nil || st.Forecast.Window != 50*time.Second {
		t.Fatalf("at 10:00: mode %q, forecast %+v", st.Mode, st.Forecast)
	}
	var out strings.Builder
	if err := WriteReport(&out, Report{Scalers: []Status{st}}); err != nil {
		t.Fatal(err)
	}
	if want := "idle target (forecast policy): forecast 0.0 jobs in the next 50s"; !strings.Contains(out.String(), want) {
		t.Fatalf("report lacks %q:\n%s", want, out.String())
	}
}
