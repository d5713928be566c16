package taskscaler

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestPolicyPeriods(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skipf("no tzdata: %v", err)
	}
	_ = berlin
	mon0930 := time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC) // Monday
	sat0930 := time.Date(2026, 3, 7, 9, 30, 0, 0, time.UTC) // Saturday
	sun0930 := time.Date(2026, 3, 8, 9, 30, 0, 0, time.UTC) // Sunday
	cases := []struct {
		name     string
		policies []Policy
		at       time.Time
		want     int
	}{
		{"no policies: none active", nil, mon0930, -1},
		{"default period is always", []Policy{{IdleCount: 1}}, sat0930, 0},
		{"weekday names and hour range", []Policy{{Periods: []string{"* 8-17 * * mon-fri"}, Timezone: "UTC"}}, mon0930, 0},
		{"weekday range excludes saturday", []Policy{{Periods: []string{"* 8-17 * * mon-fri"}, Timezone: "UTC"}}, sat0930, -1},
		{"hour range excludes evening", []Policy{{Periods: []string{"* 8-17 * * *"}, Timezone: "UTC"}}, mon0930.Add(9 * time.Hour), -1},
		{"step in minutes matches", []Policy{{Periods: []string{"*/15 * * * *"}, Timezone: "UTC"}}, mon0930, 0},
		{"step in minutes misses", []Policy{{Periods: []string{"*/20 * * * *"}, Timezone: "UTC"}}, mon0930, -1},
		{"seconds inside the minute still match", []Policy{{Periods: []string{"30 9 * * *"}, Timezone: "UTC"}}, mon0930.Add(59 * time.Second), 0},
		{"list of periods", []Policy{{Periods: []string{"* 1 * * *", "* 9 * * *"}, Timezone: "UTC"}}, mon0930, 0},
		// GitLab: day of week "1 - 7 or MON-SUN, 0 is an alias for Sunday".
		{"day of week 7 is sunday", []Policy{{Periods: []string{"* * * * 7"}, Timezone: "UTC"}}, sun0930, 0},
		{"day of week 0 is sunday", []Policy{{Periods: []string{"* * * * 0"}, Timezone: "UTC"}}, sun0930, 0},
		{"day of week 7 is not monday", []Policy{{Periods: []string{"* * * * 7"}, Timezone: "UTC"}}, mon0930, -1},
		{"range 1-7 includes sunday", []Policy{{Periods: []string{"* * * * 1-7"}, Timezone: "UTC"}}, sun0930, 0},
		{"range 1-7 includes monday", []Policy{{Periods: []string{"* * * * 1-7"}, Timezone: "UTC"}}, mon0930, 0},
		{"MON-SUN includes sunday", []Policy{{Periods: []string{"* * * * MON-SUN"}, Timezone: "UTC"}}, sun0930, 0},
		{"MON-SUN includes saturday", []Policy{{Periods: []string{"* * * * MON-SUN"}, Timezone: "UTC"}}, sat0930, 0},
		{"SAT-SUN is the weekend", []Policy{{Periods: []string{"* * * * SAT-SUN"}, Timezone: "UTC"}}, sun0930, 0},
		{"SAT-SUN excludes monday", []Policy{{Periods: []string{"* * * * sat-sun"}, Timezone: "UTC"}}, mon0930, -1},
		{"upper-case SUN", []Policy{{Periods: []string{"0-30 9,16 * * SUN"}, Timezone: "UTC"}}, sun0930, 0},
		{"stepped range to 7", []Policy{{Periods: []string{"* * * * 1-7/6"}, Timezone: "UTC"}}, sun0930, 0},
		{"stepped range to 7 misses", []Policy{{Periods: []string{"* * * * 2-7/6"}, Timezone: "UTC"}}, sun0930, -1},
		{"month names", []Policy{{Periods: []string{"* * * mar *"}, Timezone: "UTC"}}, mon0930, 0},
		{"timezone shifts the hour", []Policy{{Periods: []string{"* 10 * * *"}, Timezone: "Europe/Berlin"}}, mon0930, 0},
		{"timezone shifts the hour (miss)", []Policy{{Periods: []string{"* 9 * * *"}, Timezone: "Europe/Berlin"}}, mon0930, -1},
		{"last match wins", []Policy{{IdleCount: 1}, {Periods: []string{"* 9 * * *"}, Timezone: "UTC", IdleCount: 5}}, mon0930, 1},
		{"earlier one when the later misses", []Policy{{IdleCount: 1}, {Periods: []string{"* 22 * * *"}, Timezone: "UTC", IdleCount: 5}}, mon0930, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ps, err := compilePolicies(c.policies)
			if err != nil {
				t.Fatal(err)
			}
			if got := activePolicy(ps, c.at); got.index != c.want {
				t.Fatalf("active policy at %s: got %d, want %d", c.at, got.index, c.want)
			}
		})
	}
}

func TestPolicyErrors(t *testing.T) {
	cases := []struct {
		p    Policy
		want string
	}{
		{Policy{Periods: []string{"* * * *"}}, `policy[0].periods[0] = "* * * *"`},
		{Policy{Periods: []string{"* * * * funday"}}, "periods[0]"},
		{Policy{Periods: []string{"* * * * 8"}}, "periods[0]"},
		{Policy{Periods: []string{"* * * * 1-7/0"}}, "step"},
		{Policy{Timezone: "Mars/Olympus"}, `policy[0].timezone = "Mars/Olympus"`},
		// The scaler refuses what configuration refuses: one parser for both.
		{Policy{Periods: []string{"@hourly"}}, `descriptors such as "@hourly" are not supported`},
		{Policy{Periods: []string{" @every 1h"}}, "write 5 fields"},
	}
	for _, c := range cases {
		_, err := compilePolicies([]Policy{c.p})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want error containing %q", c.p, err, c.want)
		}
	}
}

func TestPreemptiveDefault(t *testing.T) {
	cases := []struct {
		p    Policy
		want bool
	}{
		{Policy{}, false},
		{Policy{IdleCount: 2}, true},
		{Policy{IdleCount: 2, PreemptiveMode: boolp(false)}, false},
		{Policy{PreemptiveMode: boolp(true)}, true},
	}
	for _, c := range cases {
		if got := (fixedPolicy{c.p}).Preemptive(); got != c.want {
			t.Errorf("%+v: preemptive %v, want %v", c.p, got, c.want)
		}
	}
}

// TestFixedPolicyIdleTarget: GitLab's policy keeps idle_count slots, or scale_factor ×
// the acquired slots rounded up if that is more, capped at scale_factor_limit.
func TestFixedPolicyIdleTarget(t *testing.T) {
	cases := []struct {
		name     string
		p        Policy
		acquired int
		want     int
	}{
		{"nothing", Policy{}, 10, 0},
		{"idle_count", Policy{IdleCount: 3}, 10, 3},
		{"scale_factor above idle_count", Policy{IdleCount: 1, ScaleFactor: 0.25}, 10, 3},
		{"scale_factor below idle_count", Policy{IdleCount: 5, ScaleFactor: 0.25}, 10, 5},
		{"scale_factor_limit", Policy{ScaleFactor: 1, ScaleFactorLimit: 4}, 10, 4},
		{"no jobs", Policy{ScaleFactor: 2}, 0, 0},
		{"saturates", Policy{ScaleFactor: 1000}, math.MaxInt / 2, math.MaxInt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := fixedPolicy{c.p}.IdleTarget(Snapshot{Tasks: TaskCounts{Acquired: c.acquired}, CapacityPerInstance: 1}).Slots
			if got != c.want {
				t.Errorf("IdleTarget = %d, want %d", got, c.want)
			}
		})
	}
}
