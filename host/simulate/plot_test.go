package simulate

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

func TestClockTicks(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	monday := DefaultStart // 2026-03-02 00:00 UTC
	// A tick is written "label / date" where it carries the date.
	tests := []struct {
		name   string
		start  time.Time
		span   time.Duration
		labels []string
		first  time.Duration // the first tick's offset from start
	}{
		{"one-day trace: clock times, the date on the first tick and at midnight", monday, 24*time.Hour + 10*time.Minute,
			[]string{"00:00 / Mon 2 Mar", "03:00", "06:00", "09:00", "12:00", "15:00", "18:00", "21:00", "00:00 / Tue 3 Mar"}, 0},
		{"start between ticks: the first tick is the next round time", monday.Add(7 * time.Minute), 20 * time.Hour,
			[]string{"03:00 / Mon 2 Mar", "06:00", "09:00", "12:00", "15:00", "18:00"}, 3*time.Hour - 7*time.Minute},
		{"two hours", monday.Add(6*time.Hour + 30*time.Minute), 2 * time.Hour,
			[]string{"06:30 / Mon 2 Mar", "06:45", "07:00", "07:15", "07:30", "07:45", "08:00", "08:15", "08:30"}, 0},
		{"two days: the date where it changes", monday, 48 * time.Hour,
			[]string{"00:00 / Mon 2 Mar", "06:00", "12:00", "18:00", "00:00 / Tue 3 Mar", "06:00", "12:00", "18:00", "00:00 / Wed 4 Mar"}, 0},
		{"a week: one tick a day, labelled with the date", monday, 7*24*time.Hour + time.Hour,
			[]string{"Mon 2 Mar", "Tue 3 Mar", "Wed 4 Mar", "Thu 5 Mar", "Fri 6 Mar", "Sat 7 Mar", "Sun 8 Mar", "Mon 9 Mar"}, 0},
		{"four weeks", monday, 28 * 24 * time.Hour,
			[]string{"Mon 2 Mar", "Sat 7 Mar", "Thu 12 Mar", "Tue 17 Mar", "Sun 22 Mar", "Fri 27 Mar"}, 0},
		{"the start's zone: Berlin's midnight", time.Date(2026, 3, 2, 0, 0, 0, 0, berlin), 12 * time.Hour,
			[]string{"00:00 / Mon 2 Mar", "02:00", "04:00", "06:00", "08:00", "10:00", "12:00"}, 0},
		{"the same instant in UTC: Sunday 23:00, so the first tick is Monday's midnight", time.Date(2026, 3, 2, 0, 0, 0, 0, berlin).UTC(), 12 * time.Hour,
			[]string{"00:00 / Mon 2 Mar", "02:00", "04:00", "06:00", "08:00", "10:00"}, time.Hour},
		{"clocks go forward: 02:00 does not exist, the ticks stay on round hours", time.Date(2026, 3, 29, 0, 0, 0, 0, berlin), 12 * time.Hour,
			[]string{"00:00 / Sun 29 Mar", "03:00", "04:00", "06:00", "08:00", "10:00", "12:00"}, 0},
		{"clocks go back: 02:00 comes twice, one tick", time.Date(2026, 10, 25, 0, 0, 0, 0, berlin), 12 * time.Hour,
			[]string{"00:00 / Sun 25 Oct", "02:00", "04:00", "06:00", "08:00", "10:00"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ticks := ClockTicks(tt.start, tt.span, 9)
			var labels []string
			for i, tk := range ticks {
				l := tk.Label
				if tk.Date != "" {
					l += " / " + tk.Date
				}
				labels = append(labels, l)
				if tk.At < 0 || tk.At > tt.span || (i > 0 && tk.At <= ticks[i-1].At) {
					t.Errorf("tick %d at %s: want ascending offsets within [0, %s]", i, tk.At, tt.span)
				}
				if got := tt.start.Add(tk.At).In(tt.start.Location()); got.Minute()%15 != 0 || got.Second() != 0 {
					t.Errorf("tick %d at %s: not a round wall-clock time", i, got)
				}
			}
			if !slices.Equal(labels, tt.labels) {
				t.Errorf("labels %q\nwant   %q", labels, tt.labels)
			}
			if len(ticks) > 0 && ticks[0].At != tt.first {
				t.Errorf("first tick at %s, want %s", ticks[0].At, tt.first)
			}
		})
	}
}

func TestAxisZone(t *testing.T) {
	utc1 := DefaultStart.In(time.FixedZone("", 3600))
	tests := []struct {
		name     string
		policies []taskscaler.Policy
		start    time.Time
		want     string
	}{
		{"no policy: the start's zone", nil, DefaultStart, "UTC"},
		{"no timezone: the start's offset", []taskscaler.Policy{{IdleCount: 1}}, utc1, "UTC+01:00"},
		{"one policy's zone", []taskscaler.Policy{{}, {Timezone: "Europe/Berlin"}}, DefaultStart, "Europe/Berlin"},
		{"policies that agree", []taskscaler.Policy{{Timezone: "America/New_York"}, {}, {Timezone: "America/New_York"}}, utc1, "America/New_York"},
		{"policies that differ: the start's zone", []taskscaler.Policy{{Timezone: "Europe/Berlin"}, {Timezone: "Asia/Tokyo"}}, DefaultStart, "UTC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ZoneName(tt.start.In(AxisZone(tt.policies, tt.start))); got != tt.want {
				t.Errorf("zone %q, want %q", got, tt.want)
			}
		})
	}
}

func TestZoneName(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		t    time.Time
		want string
	}{
		{DefaultStart, "UTC"},
		{DefaultStart.In(berlin), "Europe/Berlin"},
		{DefaultStart.In(time.FixedZone("", -5*3600-1800)), "UTC-05:30"},
		{DefaultStart.In(time.FixedZone("", 0)), "UTC"},
	} {
		if got := ZoneName(tt.t); got != tt.want {
			t.Errorf("ZoneName(%s) = %q, want %q", tt.t, got, tt.want)
		}
	}
}

// TestDayPlotClockAxis: the day plot's time axis shows wall-clock times in the
// policies' zone (else the start's), with the date where it changes, and the legend
// says in words what each series is.
func TestDayPlotClockAxis(t *testing.T) {
	jobs := js(0, 60, 6*3600, 60, 20*3600, 60)
	fixed := []taskscaler.Policy{{}}
	tests := []struct {
		name      string
		start     time.Time
		policies  []taskscaler.Policy
		capacity  int
		want, not []string
	}{
		{"default start, one slot", time.Time{}, fixed, 1,
			[]string{">00:00<", ">06:00<", ">18:00<", ">Mon 2 Mar<", "wall-clock time in UTC; the trace starts Mon 2 Mar 2026 00:00",
				">busy instances (running a job)<", ">idle instances<", ">booting instances<", ">demand: jobs waiting or running<",
				">instances, or jobs (one slot each)<", ">job wait p95 of the jobs that started in each 5m bucket<", ">longest job wait in the bucket<"},
			[]string{"right axis", "÷"}},
		{"a start with an offset", time.Date(2026, 3, 6, 8, 0, 0, 0, time.FixedZone("", 3600)), fixed, 1,
			[]string{">09:00<", ">Fri 6 Mar<", ">00:00<", ">Sat 7 Mar<", "wall-clock time in UTC+01:00; the trace starts Fri 6 Mar 2026 08:00"},
			[]string{">Thu", ">Sun"}},
		{"a policy in Berlin, four slots: demand in jobs on the right axis", time.Time{}, []taskscaler.Policy{{Timezone: "Europe/Berlin"}}, 4,
			[]string{">03:00<", ">Mon 2 Mar<", "wall-clock time in Europe/Berlin; the trace starts Mon 2 Mar 2026 01:00",
				">demand: jobs waiting or running (right axis)<", ">jobs waiting or running<", ">instances<"},
			[]string{"(one slot each)", "÷"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, jobs, Params{Boot: BootTime{Fixed: 45 * time.Second}, Start: tt.start,
				Scaler: taskscaler.Options{Policies: tt.policies, CapacityPerInstance: tt.capacity}})
			var svg bytes.Buffer
			if err := WriteSVG(&svg, r); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(svg.String(), w) {
					t.Errorf("the SVG lacks %q", w)
				}
			}
			for _, w := range append(tt.not, "h</text>") {
				if strings.Contains(svg.String(), w) {
					t.Errorf("the SVG has %q", w)
				}
			}
		})
	}
}

// TestFrontierSVG: the frontier plot labels every point by its value, marks the
// forecast point, and draws a point that waited far longer than the others on the
// top edge with its wait written out, unless no point is left below the clip.
func TestFrontierSVG(t *testing.T) {
	pt := func(v string, cost, p95 float64) SweepPoint {
		return SweepPoint{Value: v, CostOverFloor: cost, Result: &Result{Jobs: 100, Boot: "fixed 1m0s", WaitP95S: p95, ZeroIdleWaitS: 60, ZeroIdleWaitP95S: 60}}
	}
	tests := []struct {
		name      string
		sw        Sweep
		want, not []string
	}{
		{"a frontier", Sweep{Key: "idle_count", Points: []SweepPoint{pt("0", 1, 62), pt("5", 1.6, 40), pt("10", 2.4, 3)}, Forecast: pt("forecast", 1.5, 2)},
			[]string{">0<", ">5<", ">10<", `fill="#d62728">forecast<`, "one boot (1m0s)", "clairvoyant floor<", "--sweep idle_count"}, []string{"(p95 "}},
		{"a queue of hours is clipped", Sweep{Key: "idle_count", Points: []SweepPoint{pt("0", 1, 62), pt("1", 1.04, 47643)}, Forecast: pt("forecast", 1.5, 2)},
			[]string{">0<", ">1 (p95 13h14m3s)<", `<polygon points=`}, nil},
		{"nothing below the clip: not clipped", Sweep{Key: "idle_count", Points: []SweepPoint{pt("1", 1.04, 47643), pt("2", 1.1, 8000)}, Forecast: pt("forecast", 1.2, 900)},
			[]string{">1<", ">2<", ">forecast<"}, []string{"(p95 "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteSweepSVG(&b, &tt.sw); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("the SVG lacks %q", w)
				}
			}
			for _, w := range tt.not {
				if strings.Contains(b.String(), w) {
					t.Errorf("the SVG has %q", w)
				}
			}
		})
	}
	if err := WriteSweepSVG(io.Discard, &Sweep{}); err == nil {
		t.Error("an empty sweep: want an error")
	}
}
