package webui

import (
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

func TestNiceCeil(t *testing.T) {
	tests := []struct {
		v      float64
		counts bool
		want   float64
	}{
		{0, true, 1}, {1, true, 1}, {3, true, 4}, {4, true, 4}, {9, true, 10}, {11, true, 20}, {26, true, 50}, {120, true, 200},
		{0, false, 1}, {0.3, false, 0.5}, {7, false, 10}, {12.5, false, 20}, {61, false, 100},
	}
	for _, tt := range tests {
		if got := niceCeil(tt.v, tt.counts); got != tt.want {
			t.Errorf("niceCeil(%v, %v) = %v, want %v", tt.v, tt.counts, got, tt.want)
		}
	}
}

func TestShortDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"}, {0, "0s"}, {400 * time.Millisecond, "0.4s"}, {9500 * time.Millisecond, "9.5s"}, {12 * time.Second, "12s"},
		{185 * time.Second, "3m05s"}, {2*time.Hour + 4*time.Minute, "2h04m"}, {76 * time.Hour, "3d4h"},
	}
	for _, tt := range tests {
		if got := shortDuration(tt.d); got != tt.want {
			t.Errorf("shortDuration(%s) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// TestCharts draws the three charts from samples: an empty history says so, six hours
// at 15s are thinned to at most maxPoints per series with the peaks kept, a wait line
// breaks where no job waited, and the time axis is labelled in wall-clock time.
func TestCharts(t *testing.T) {
	if cs := charts("r0", nil, t0, 6*time.Hour); len(cs) != 3 || cs[0].Empty == "" || len(cs[0].Paths) != 0 {
		t.Errorf("no samples: %+v, want three empty charts", cs)
	}
	var hist []Sample
	for i := range 1441 { // 6h every 15s
		s := Sample{Time: t0.Add(-6 * time.Hour).Add(time.Duration(i) * 15 * time.Second)}
		s.Instances.Running = 1
		if i == 700 {
			s.Instances.Running = 7 // a peak of one sample
		}
		if i < 1000 {
			s.Waits, s.WaitP50, s.WaitP95 = 1, time.Second, 3*time.Second
		}
		hist = append(hist, s)
	}
	cs := charts("r0", hist, t0, 6*time.Hour)
	inst, wait := cs[0], cs[2]
	if inst.Empty != "" || len(inst.Paths) != 4 {
		t.Fatalf("instances chart %+v", inst)
	}
	if n := strings.Count(inst.Paths[0].D, "L") + 1; n > 2*maxPoints+1 {
		t.Errorf("instances band has %d points, want at most %d", n, 2*maxPoints+1)
	}
	// The peak of 7 keeps the axis at 8, with 4 in the middle.
	if got := []string{inst.YTicks[0].Label, inst.YTicks[1].Label, inst.YTicks[2].Label}; got[2] != "8" || got[1] != "4" {
		t.Errorf("instances axis %v, want 0 4 8", got)
	}
	if inst.Caption != "last 6h00m, times in UTC" {
		t.Errorf("caption %q", inst.Caption)
	}
	var labels []string
	for _, x := range inst.XTicks {
		labels = append(labels, x.Label)
	}
	if strings.Join(labels, " ") != "09:00 10:00 11:00 12:00 13:00 14:00" {
		t.Errorf("time axis %v", labels)
	}
	if n := strings.Count(wait.Paths[1].D, "M"); n != 1 {
		t.Errorf("p95 line has %d pieces, want one that stops where the waits stop", n)
	}
	if wait.Legend[1].Now != "–" || wait.YTicks[2].Label != "5.0s" {
		t.Errorf("wait chart: legend %+v, axis %+v", wait.Legend, wait.YTicks)
	}

	// A runner up for a few minutes gets an axis of those minutes, not six hours of
	// nothing; one up for seconds, half a minute, labelled to the second.
	tests := []struct {
		up      time.Duration
		caption string
		labels  string
	}{
		{2 * time.Minute, "last 2m00s, times in UTC", "14:28:00 14:28:30 14:29:00 14:29:30 14:30:00"},
		{4 * time.Second, "last 10s, times in UTC", "14:29:50 14:29:52 14:29:54 14:29:56 14:29:58 14:30:00"},
		{25 * time.Second, "last 25s, times in UTC", "14:29:35 14:29:40 14:29:45 14:29:50 14:29:55 14:30:00"},
	}
	for _, tt := range tests {
		short := []Sample{{Time: t0.Add(-tt.up)}, {Time: t0, Instances: taskscaler.InstanceCounts{Running: 1}}}
		c := charts("r0", short, t0, 6*time.Hour)[0]
		var labels []string
		for _, x := range c.XTicks {
			labels = append(labels, x.Label)
		}
		if c.Caption != tt.caption || strings.Join(labels, " ") != tt.labels {
			t.Errorf("up %s: %q, time labels %v; want %q, %s", tt.up, c.Caption, labels, tt.caption, tt.labels)
		}
	}
}
