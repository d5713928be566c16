package webui

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// The charts are inline SVG drawn on the server: a viewBox of chartW × chartH units,
// scaled to the page's width, with the plot inside the margins.
const (
	chartW, chartH                             = 420, 170
	marginL, marginR, marginT, marginB         = 42, 24, 8, 22
	maxPoints                                  = 200 // about two units per point
	minChartRange                              = 10 * time.Second
	plotW, plotH                       float64 = chartW - marginL - marginR, chartH - marginT - marginB
)

// seriesDef is one line (or band of a stacked chart): its legend label, its CSS class
// (the colour) and how to read it off a sample (ok false: no value, a gap).
type seriesDef struct {
	label, class string
	value        func(Sample) (float64, bool)
}

type chartView struct {
	ID, Title string
	// Empty, when set, is shown instead of the plot (too few samples yet).
	Empty                      string
	W, H                       int
	PlotX, PlotY, PlotW, PlotH float64
	// PlotRight is the right edge of the plot, LabelY the baseline of the time labels.
	PlotRight, LabelY float64
	Paths             []pathView
	XTicks, YTicks    []tickView
	Legend            []legendView
	// Caption says what the chart spans and the time zone of its axis.
	Caption string
}

type pathView struct {
	Class string
	D     string
	Area  bool
}

type tickView struct {
	X, Y  float64
	Label string
}

type legendView struct {
	Class, Label, Now string
}

// buildChart draws defs over hist, the samples of the last span before now. A stacked
// chart draws bands on top of each other (instances by state); otherwise lines.
func buildChart(id, title string, hist []Sample, now time.Time, span time.Duration, stacked bool, unit string, defs []seriesDef) chartView {
	c := chartView{ID: id, Title: title, W: chartW, H: chartH, PlotX: marginL, PlotY: marginT, PlotW: plotW, PlotH: plotH,
		PlotRight: marginL + plotW, LabelY: marginT + plotH + 14}
	from := now.Add(-span)
	start := 0
	for start < len(hist) && hist[start].Time.Before(from) {
		start++
	}
	hist = hist[start:]
	for _, d := range defs {
		l := legendView{Class: d.class, Label: d.label, Now: "–"}
		if n := len(hist); n > 0 {
			if v, ok := d.value(hist[n-1]); ok {
				l.Now = formatValue(v, unit)
			}
		}
		c.Legend = append(c.Legend, l)
	}
	if len(hist) < 2 {
		c.Empty = "collecting samples: the chart starts with the second one"
		return c
	}
	t0 := hist[0].Time
	if min := now.Add(-minChartRange); min.Before(t0) {
		t0 = min
	}
	if t0.Before(from) {
		t0 = from
	}
	c.Caption = "last " + shortDuration(now.Sub(t0)) + ", times in " + now.Format("MST")
	pts := downsample(hist)
	// values[i][k] is series i at point k (NaN: none); tops are the stacked sums.
	values := make([][]float64, len(defs))
	top := 0.0
	for i, d := range defs {
		values[i] = make([]float64, len(pts))
		for k, s := range pts {
			v, ok := d.value(s)
			if !ok {
				v = math.NaN()
			}
			if stacked {
				if math.IsNaN(v) {
					v = 0
				}
				if i > 0 {
					v += values[i-1][k]
				}
			}
			values[i][k] = v
			if !math.IsNaN(v) {
				top = math.Max(top, v)
			}
		}
	}
	ymax := niceCeil(top, unit == "")
	if unit == "s" {
		ymax = max(ymax, 1) // waits well under a second read as "none", not as a scale of milliseconds
	}
	x := func(t time.Time) float64 { return marginL + plotW*float64(t.Sub(t0))/float64(now.Sub(t0)) }
	y := func(v float64) float64 { return marginT + plotH*(1-v/ymax) }
	for i, d := range defs {
		var b strings.Builder
		if stacked {
			for k, s := range pts {
				b.WriteString(map[bool]string{true: "M", false: "L"}[k == 0])
				writePoint(&b, x(s.Time), y(values[i][k]))
			}
			for k := len(pts) - 1; k >= 0; k-- {
				base := 0.0
				if i > 0 {
					base = values[i-1][k]
				}
				b.WriteString("L")
				writePoint(&b, x(pts[k].Time), y(base))
			}
			b.WriteString("Z")
		} else {
			pen := false
			for k, s := range pts {
				v := values[i][k]
				if math.IsNaN(v) {
					pen = false
					continue
				}
				b.WriteString(map[bool]string{true: "L", false: "M"}[pen])
				writePoint(&b, x(s.Time), y(v))
				pen = true
			}
		}
		c.Paths = append(c.Paths, pathView{Class: d.class, D: b.String(), Area: stacked})
	}
	yticks := []float64{0, ymax / 2, ymax}
	if unit == "" && ymax == 1 {
		yticks = []float64{0, 1}
	}
	for _, v := range yticks {
		c.YTicks = append(c.YTicks, tickView{X: marginL - 4, Y: y(v), Label: formatValue(v, unit)})
	}
	step := timeStep(now.Sub(t0))
	layout := "15:04"
	if step < time.Minute {
		layout = "15:04:05"
	}
	for t := t0.Truncate(step); !t.After(now); t = t.Add(step) {
		if t.Before(t0) {
			continue
		}
		c.XTicks = append(c.XTicks, tickView{X: x(t), Y: marginT + plotH, Label: t.Format(layout)})
	}
	return c
}

func writePoint(b *strings.Builder, x, y float64) {
	b.WriteString(strconv.FormatFloat(x, 'f', 1, 64))
	b.WriteString(",")
	b.WriteString(strconv.FormatFloat(y, 'f', 1, 64))
}

// downsample keeps at most maxPoints samples: each kept one stands for a run of
// consecutive samples and has, per series, the run's highest value, so that a short
// peak stays visible.
func downsample(hist []Sample) []Sample {
	if len(hist) <= maxPoints {
		return hist
	}
	k := (len(hist) + maxPoints - 1) / maxPoints
	var out []Sample
	for i := 0; i < len(hist); i += k {
		run := hist[i:min(i+k, len(hist))]
		out = append(out, peak(run))
	}
	return out
}

// peak is the last sample of run with every charted count and wait raised to the run's
// highest.
func peak(run []Sample) Sample {
	s := run[len(run)-1]
	for _, r := range run {
		s.Instances.Requested = max(s.Instances.Requested, r.Instances.Requested)
		s.Instances.Creating = max(s.Instances.Creating, r.Instances.Creating)
		s.Instances.Booting = max(s.Instances.Booting, r.Instances.Booting)
		s.Instances.Running = max(s.Instances.Running, r.Instances.Running)
		s.Instances.Deleting = max(s.Instances.Deleting, r.Instances.Deleting)
		s.Instances.Unvouched = max(s.Instances.Unvouched, r.Instances.Unvouched)
		s.Tasks.Acquired = max(s.Tasks.Acquired, r.Tasks.Acquired)
		s.Tasks.Pending = max(s.Tasks.Pending, r.Tasks.Pending)
		s.Tasks.Idle = max(s.Tasks.Idle, r.Tasks.Idle)
		if r.Waits > 0 {
			s.WaitP50, s.WaitP95, s.Waits = max(s.WaitP50, r.WaitP50), max(s.WaitP95, r.WaitP95), max(s.Waits, r.Waits)
		}
	}
	return s
}

// niceCeil rounds v up to 1, 2 or 5 × a power of ten; counts (whole numbers) round
// to 1 or an even number up to 10, so that the middle tick is a whole number too.
func niceCeil(v float64, counts bool) float64 {
	switch {
	case v <= 0 || (counts && v <= 1):
		return 1
	case counts && v <= 10:
		return 2 * math.Ceil(v/2)
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5} {
		if m*p >= v*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

// timeStep is the spacing of the time axis labels: at most six over d (five for
// labels with seconds, which are wider).
func timeStep(d time.Duration) time.Duration {
	for _, s := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute,
		30 * time.Minute, time.Hour, 2 * time.Hour, 3 * time.Hour} {
		if d/s <= 6 && (s >= time.Minute || d/s <= 5) {
			return s
		}
	}
	return 6 * time.Hour
}

// formatValue prints a chart value: a count, or with unit "s" a duration.
func formatValue(v float64, unit string) string {
	if unit == "s" {
		return shortDuration(time.Duration(v * float64(time.Second)))
	}
	if v == math.Floor(v) {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}
