package simulate

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// WriteSVG draws r's series as a self-contained SVG: the top panel stacks busy, idle
// and booting instances with demand (jobs waiting or running) as a line; the bottom
// panel shows the 95th percentile and the maximum of job wait per time bucket. The
// time axis is wall-clock time in the zone of r.Series.Start.
func WriteSVG(w io.Writer, r *Result) error { return writeDaySVG(w, r, true) }

// writeDaySVG draws the day plot; standalone adds what a file of its own needs (the
// XML namespace, a fixed size), which an SVG inline in HTML does without.
func writeDaySVG(w io.Writer, r *Result, standalone bool) error {
	se := r.Series
	if se == nil || len(se.Busy) == 0 {
		return fmt.Errorf("plot: no series (run a simulation first)")
	}
	capa := float64(max(r.CapacityPerInstance, 1))
	// With more than one slot per instance, demand is in jobs on an axis of its own
	// on the right; with one slot, a job is an instance and one axis serves both.
	twoAxes := capa > 1
	const (
		W, H           = 1000.0, 640.0
		left           = 70.0
		top1, bottom1  = 70.0, 340.0
		top2, bottom2  = 405.0, 560.0
		colBusy        = "#2f7ed8"
		colIdle        = "#f7a35c"
		colBoot        = "#c9c9c9"
		colDemand      = "#222222"
		colWait, colMx = "#d62728", "#f2b6b6"
	)
	right := 20.0
	if twoAxes {
		right = 64
	}
	n := len(se.Busy)
	demand := make([]float64, n)
	for i, d := range se.Demand {
		demand[i] = d / capa
	}
	stack := [3][]float64{make([]float64, n), make([]float64, n), make([]float64, n)}
	yMax1 := 1.0
	for i := range n {
		stack[0][i] = se.Busy[i]
		stack[1][i] = stack[0][i] + se.Idle[i]
		stack[2][i] = stack[1][i] + se.Booting[i]
		yMax1 = max(yMax1, stack[2][i], demand[i])
	}
	yMax2 := 1.0
	for i := range n {
		if !math.IsNaN(se.WaitMax[i]) {
			yMax2 = max(yMax2, se.WaitMax[i])
		}
	}
	tick1, tick2 := niceCeil(yMax1/5), niceCeil(yMax2/4)
	yMax1, yMax2 = tick1*math.Ceil(yMax1/tick1), tick2*math.Ceil(yMax2/tick2)
	span := float64(n) * se.Step.Seconds()
	x := func(i float64) float64 { return left + (W-left-right)*i*se.Step.Seconds()/span }
	y1 := func(v float64) float64 { return bottom1 - (bottom1-top1)*v/yMax1 }
	y2 := func(v float64) float64 { return bottom2 - (bottom2-top2)*v/yMax2 }
	start := se.Start
	if start.IsZero() {
		start = DefaultStart
	}
	bucket := strings.TrimSuffix(strings.TrimSuffix(se.Step.String(), "0s"), "0m")

	b := bufio.NewWriter(w)
	if standalone {
		fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	} else {
		fmt.Fprintf(b, `<svg viewBox="0 0 %g %g" font-family="sans-serif" font-size="12" role="img" aria-labelledby="day-plot-title">`+"\n", W, H)
	}
	fmt.Fprintf(b, `<title id="day-plot-title">Instances (busy, idle, booting), demand and job wait over the trace, from %s</title>`+"\n", xmlEscape(start.Format("Mon 2 Jan 2006 15:04 ")+ZoneName(start)))
	fmt.Fprintf(b, `<rect width="%g" height="%g" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(b, `<text x="%g" y="18" font-size="14" font-weight="bold">runner simulate: %d jobs, boot time %s</text>`+"\n", left, r.Jobs, xmlEscape(r.Boot))
	fmt.Fprintf(b, `<text x="%g" y="34">%.0f instance-seconds (clairvoyant floor %.0f, %+.0f%%), %.0f idle+booting s/job, wait p50 %.1f s, p95 %.1f s, p99 %.1f s</text>`+"\n",
		left, r.InstanceSeconds, r.ClairvoyantInstanceSeconds, 100*r.ExcessOverFloor, r.IdlePerJobS, r.WaitP50S, r.WaitP95S, r.WaitP99S)

	// Grid lines first, so that the data paints over them.
	for _, g := range []struct {
		ymax, tick float64
		y          func(float64) float64
	}{{yMax1, tick1, y1}, {yMax2, tick2, y2}} {
		for v := g.tick; v <= g.ymax+g.tick/2; v += g.tick {
			fmt.Fprintf(b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#e5e5e5"/>`+"\n", left+1, g.y(v), W-right, g.y(v))
		}
	}

	// Stacked areas, top layer first so that lower ones paint over it.
	layers := []struct {
		col    string
		hi, lo []float64
	}{
		{colBoot, stack[2], stack[1]},
		{colIdle, stack[1], stack[0]},
		{colBusy, stack[0], nil},
	}
	for _, l := range layers {
		var pts strings.Builder
		for i := range n {
			fmt.Fprintf(&pts, "%.1f,%.1f %.1f,%.1f ", x(float64(i)), y1(l.hi[i]), x(float64(i+1)), y1(l.hi[i]))
		}
		for i := n - 1; i >= 0; i-- {
			lo := 0.0
			if l.lo != nil {
				lo = l.lo[i]
			}
			fmt.Fprintf(&pts, "%.1f,%.1f %.1f,%.1f ", x(float64(i+1)), y1(lo), x(float64(i)), y1(lo))
		}
		fmt.Fprintf(b, `<polygon fill="%s" stroke="none" points="%s"/>`+"\n", l.col, strings.TrimSpace(pts.String()))
	}
	var dp strings.Builder
	for i := range n {
		fmt.Fprintf(&dp, "%.1f,%.1f ", x(float64(i)+0.5), y1(demand[i]))
	}
	fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.2" points="%s"/>`+"\n", colDemand, strings.TrimSpace(dp.String()))

	// Wait panel: one polyline per run of buckets in which jobs started.
	for _, s := range []struct {
		v   []float64
		col string
		w   float64
	}{{se.WaitMax, colMx, 1}, {se.WaitP95, colWait, 1.5}} {
		var seg strings.Builder
		flush := func() {
			if seg.Len() > 0 {
				fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="%g" points="%s"/>`+"\n", s.col, s.w, strings.TrimSpace(seg.String()))
				seg.Reset()
			}
		}
		for i := range n {
			if math.IsNaN(s.v[i]) {
				flush()
				continue
			}
			fmt.Fprintf(&seg, "%.1f,%.1f ", x(float64(i)+0.5), y2(s.v[i]))
			if s.col == colWait && s.v[i] > 0 {
				fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="1.6" fill="%s"/>`+"\n", x(float64(i)+0.5), y2(s.v[i]), s.col)
			}
		}
		flush()
	}

	// Axes, ticks and labels. The time labels of the bottom axis carry the date where
	// it changes; the top axis repeats the times only.
	ticks := ClockTicks(start, time.Duration(span*float64(time.Second)), 9)
	axis := func(top, bottom, ymax, tick float64, y func(float64) float64, label string, dates bool) {
		fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", left, bottom, W-right, bottom)
		fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", left, top, left, bottom)
		for v := 0.0; v <= ymax+tick/2; v += tick {
			fmt.Fprintf(b, `<text x="%g" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, fmtTick(v))
		}
		fmt.Fprintf(b, `<text transform="translate(16,%.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", (top+bottom)/2, label)
		for _, t := range ticks {
			px := left + (W-left-right)*t.At.Seconds()/span
			fmt.Fprintf(b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="black"/>`+"\n", px, bottom, px, bottom+4)
			fmt.Fprintf(b, `<text class="time-tick" x="%.1f" y="%g" text-anchor="middle">%s</text>`+"\n", px, bottom+16, t.Label)
			if dates && t.Date != "" {
				fmt.Fprintf(b, `<text class="date-tick" x="%.1f" y="%g" text-anchor="middle" font-weight="bold">%s</text>`+"\n", px, bottom+31, t.Date)
			}
		}
	}
	if twoAxes {
		axis(top1, bottom1, yMax1, tick1, y1, "instances", false)
		fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", W-right, top1, W-right, bottom1)
		for v := 0.0; v <= yMax1+tick1/2; v += tick1 {
			fmt.Fprintf(b, `<text x="%g" y="%.1f">%s</text>`+"\n", W-right+6, y1(v)+4, fmtTick(v*capa))
		}
		fmt.Fprintf(b, `<text transform="translate(%g,%.1f) rotate(90)" text-anchor="middle">jobs waiting or running</text>`+"\n", W-12, (top1+bottom1)/2)
	} else {
		axis(top1, bottom1, yMax1, tick1, y1, "instances, or jobs (one slot each)", false)
	}
	axis(top2, bottom2, yMax2, tick2, y2, "job wait (s)", true)
	fmt.Fprintf(b, `<text x="%g" y="%g" text-anchor="middle">wall-clock time in %s; the trace starts %s</text>`+"\n",
		(left+W-right)/2, bottom2+54, xmlEscape(ZoneName(start)), start.Format("Mon 2 Jan 2006 15:04"))

	demandName := "demand: jobs waiting or running"
	if twoAxes {
		demandName += " (right axis)"
	}
	legend := func(y float64, entries []struct{ col, name string }) {
		lx := left + 10
		for _, l := range entries {
			fmt.Fprintf(b, `<rect x="%.1f" y="%g" width="12" height="12" fill="%s"/><text class="legend" x="%.1f" y="%g">%s</text>`+"\n", lx, y, l.col, lx+16, y+10, xmlEscape(l.name))
			lx += 32 + 6.5*float64(len(l.name))
		}
	}
	legend(44, []struct{ col, name string }{
		{colBusy, "busy instances (running a job)"}, {colIdle, "idle instances"}, {colBoot, "booting instances"}, {colDemand, demandName},
	})
	legend(380, []struct{ col, name string }{
		{colWait, "job wait p95 of the jobs that started in each " + bucket + " bucket"}, {colMx, "longest job wait in the bucket"},
	})
	fmt.Fprintf(b, `<text x="%g" y="%g" text-anchor="end" fill="#666">%s buckets</text>`+"\n", W-right, H-8, bucket)
	fmt.Fprintln(b, "</svg>")
	return b.Flush()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func fmtTick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// Tick is one labelled mark of the time axis: At from the trace's start.
type Tick struct {
	At time.Duration
	// Label is the wall-clock time ("15:04"), or the date ("Mon 2 Jan") when ticks
	// are a day or more apart.
	Label string
	// Date is the tick's date ("Mon 2 Mar") on the first tick and on each tick whose
	// date differs from the tick before it, so that a reader sees where days begin;
	// empty otherwise, and always empty when Label is a date.
	Date string
}

// tickSteps are the wall-clock spacings of time-axis ticks; longer spans use whole
// days.
var tickSteps = []time.Duration{time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute,
	30 * time.Minute, time.Hour, 2 * time.Hour, 3 * time.Hour, 4 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour}

// ClockTicks returns at most maxTicks (at least 2) ticks over [start, start+span], on
// round wall-clock times of start's zone (06:00, 12:00, midnight) so that policy
// periods can be read off the axis. Ticks less than a day apart are labelled with the
// time and carry the date where it changes (see Tick.Date); ticks a day or more apart
// are labelled with the date.
func ClockTicks(start time.Time, span time.Duration, maxTicks int) []Tick {
	maxTicks = max(maxTicks, 2)
	const dateLayout = "Mon 2 Jan"
	if span <= 0 {
		return []Tick{{0, start.Format("15:04"), start.Format(dateLayout)}}
	}
	step := time.Duration(0)
	for _, s := range tickSteps {
		if span/s < time.Duration(maxTicks) {
			step = s
			break
		}
	}
	if step == 0 {
		days := math.Ceil(span.Hours() / 24 / float64(maxTicks-1))
		step = time.Duration(niceCeil(days)) * 24 * time.Hour
	}
	// Ticks count in wall-clock time from the start's midnight, so that they stay on
	// round hours across a daylight-saving change (time.Date moves a time that does not
	// exist, 02:00 on the day clocks go forward, to one that does).
	y, m, d := start.Date()
	at := func(k int) time.Time {
		if step >= 24*time.Hour {
			return time.Date(y, m, d+k*int(step/(24*time.Hour)), 0, 0, 0, 0, start.Location())
		}
		return time.Date(y, m, d, 0, k*int(step/time.Minute), 0, 0, start.Location())
	}
	var out []Tick
	prevDate := ""
	var last time.Time
	for k := 0; !at(k).After(start.Add(span)); k++ {
		t := at(k)
		if t.Before(start) || (!last.IsZero() && !t.After(last)) {
			continue
		}
		last = t
		if step >= 24*time.Hour {
			out = append(out, Tick{At: t.Sub(start), Label: t.Format(dateLayout)})
			continue
		}
		tk := Tick{At: t.Sub(start), Label: t.Format("15:04")}
		if date := t.Format(dateLayout); date != prevDate {
			tk.Date, prevDate = date, date
		}
		out = append(out, tk)
	}
	return out
}

// AxisZone is the zone the day plot's time axis is drawn in: the timezone the
// policies name, when those that name one agree, so that their periods can be read off
// the axis; otherwise start's own zone (UTC for the default start, a fixed offset for
// --start 2026-03-02T00:00:00+01:00).
func AxisZone(policies []taskscaler.Policy, start time.Time) *time.Location {
	name := ""
	for _, p := range policies {
		switch {
		case p.Timezone == "" || p.Timezone == name:
		case name == "":
			name = p.Timezone
		default:
			return start.Location() // zones differ: no one zone reads them all
		}
	}
	if name == "" {
		return start.Location()
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return start.Location() // the scaler refuses the policy before a plot is drawn
	}
	return loc
}

// ZoneName names t's zone for an axis: its IANA name, or UTC±hh:mm for a bare offset.
func ZoneName(t time.Time) string {
	name := t.Location().String()
	if name == "" || name == "Local" {
		if _, off := t.Zone(); off == 0 {
			return "UTC"
		}
		return "UTC" + t.Format("-07:00")
	}
	return name
}
