package simulate

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// WriteSVG draws r's series as a self-contained SVG: the top panel stacks busy, idle
// and booting instances with demand (jobs waiting or running, divided by
// capacity_per_instance) as a line; the bottom panel shows the 95th percentile and
// the maximum of job wait per time bucket.
func WriteSVG(w io.Writer, r *Result) error {
	se := r.Series
	if se == nil || len(se.Busy) == 0 {
		return fmt.Errorf("plot: no series (run a simulation first)")
	}
	const (
		W, H           = 1000.0, 600.0
		left, right    = 70.0, 20.0
		top1, bottom1  = 64.0, 340.0
		top2, bottom2  = 400.0, 550.0
		colBusy        = "#2f7ed8"
		colIdle        = "#f7a35c"
		colBoot        = "#c9c9c9"
		colDemand      = "#222222"
		colWait, colMx = "#d62728", "#f2b6b6"
	)
	n := len(se.Busy)
	capa := float64(max(r.CapacityPerInstance, 1))
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

	b := bufio.NewWriter(w)
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
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
		name   string
	}{
		{colBoot, stack[2], stack[1], "booting"},
		{colIdle, stack[1], stack[0], "idle"},
		{colBusy, stack[0], nil, "busy"},
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

	// Axes, ticks and labels.
	start := se.Start
	if start.IsZero() {
		start = DefaultStart
	}
	ticks := ClockTicks(start, time.Duration(span*float64(time.Second)), 9)
	axis := func(top, bottom, ymax, tick float64, y func(float64) float64, label string) {
		fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", left, bottom, W-right, bottom)
		fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", left, top, left, bottom)
		for v := 0.0; v <= ymax+tick/2; v += tick {
			fmt.Fprintf(b, `<text x="%g" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, fmtTick(v))
		}
		fmt.Fprintf(b, `<text transform="translate(16,%.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", (top+bottom)/2, label)
		for _, t := range ticks {
			px := left + (W-left-right)*t.At.Seconds()/span
			fmt.Fprintf(b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="black"/>`+"\n", px, bottom, px, bottom+4)
			fmt.Fprintf(b, `<text x="%.1f" y="%g" text-anchor="middle">%s</text>`+"\n", px, bottom+16, t.Label)
		}
	}
	axis(top1, bottom1, yMax1, tick1, y1, "instances")
	axis(top2, bottom2, yMax2, tick2, y2, "job wait (s)")
	fmt.Fprintf(b, `<text x="%g" y="%g" text-anchor="middle">time (%s), from the trace's start %s</text>`+"\n",
		(left+W-right)/2, bottom2+36, xmlEscape(ZoneName(start)), start.Format("Mon 2 Jan 2006 15:04"))

	legend := []struct{ col, name string }{
		{colBusy, "busy"}, {colIdle, "idle"}, {colBoot, "booting"},
		{colDemand, fmt.Sprintf("demand (jobs waiting or running ÷ %g)", capa)},
	}
	lx := left + 10
	for _, l := range legend {
		fmt.Fprintf(b, `<rect x="%.1f" y="44" width="12" height="12" fill="%s"/><text x="%.1f" y="54">%s</text>`+"\n", lx, l.col, lx+16, xmlEscape(l.name))
		lx += 30 + 7*float64(len(l.name))
	}
	lx = left + 10
	for _, l := range []struct{ col, name string }{{colWait, "wait p95 per bucket"}, {colMx, "wait max per bucket"}} {
		fmt.Fprintf(b, `<rect x="%.1f" y="380" width="12" height="12" fill="%s"/><text x="%.1f" y="390">%s</text>`+"\n", lx, l.col, lx+16, l.name)
		lx += 30 + 7*float64(len(l.name))
	}
	fmt.Fprintf(b, `<text x="%g" y="%g" text-anchor="end" fill="#666">bucket %s</text>`+"\n", W-right, H-8, strings.TrimSuffix(strings.TrimSuffix(se.Step.String(), "0s"), "0m"))
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
	At    time.Duration
	Label string
}

// tickSteps are the wall-clock spacings of time-axis ticks; longer spans use whole
// days.
var tickSteps = []time.Duration{time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute,
	30 * time.Minute, time.Hour, 2 * time.Hour, 3 * time.Hour, 4 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour}

// ClockTicks returns at most maxTicks (at least 2) ticks over [start, start+span], on
// round wall-clock times of start's zone (06:00, 12:00, midnight) so that policy
// periods can be read off the axis. A trace within one calendar day is labelled
// "15:04" (a tick on the next day, such as its closing midnight, "Tue 00:00"); a
// longer one "Mon 15:04", and one with a tick a day or more apart "Mon 2 Jan".
func ClockTicks(start time.Time, span time.Duration, maxTicks int) []Tick {
	maxTicks = max(maxTicks, 2)
	if span <= 0 {
		return []Tick{{0, start.Format("15:04")}}
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
	y, m, d := start.Date()
	midnight := time.Date(y, m, d, 0, 0, 0, 0, start.Location())
	first := midnight.Add((start.Sub(midnight) + step - 1) / step * step)
	var ts []time.Time
	for t := first; !t.After(start.Add(span)); t = t.Add(step) {
		ts = append(ts, t)
	}
	sameDay := func(t time.Time) bool {
		ty, tm, td := t.Date()
		return ty == y && tm == m && td == d
	}
	oneDay := true
	for i, t := range ts {
		if i < len(ts)-1 && !sameDay(t) {
			oneDay = false
		}
	}
	out := make([]Tick, 0, len(ts))
	for _, t := range ts {
		layout := "Mon 15:04"
		switch {
		case step >= 24*time.Hour:
			layout = "Mon 2 Jan"
		case oneDay && sameDay(t):
			layout = "15:04"
		}
		out = append(out, Tick{At: t.Sub(start), Label: t.Format(layout)})
	}
	return out
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
