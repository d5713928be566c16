package simulate

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// WriteSweepSVG draws a sweep's cost–wait frontier as a self-contained SVG: x is
// instance-seconds over the clairvoyant floor, y the 95th percentile of job wait. The
// swept values are joined in order and labelled; the forecast policy's point stands
// apart. Reference lines mark the floor (x = 1) and one boot (the zero-idle wait
// floor). When some points wait within a few boots, points far above (a preemptive
// policy's queue can hold jobs for hours) are drawn on the top edge with their wait
// written out, so that they do not flatten the rest.
func WriteSweepSVG(w io.Writer, sw *Sweep) error { return writeSweepSVG(w, sw, true) }

// writeSweepSVG draws the frontier; standalone adds what a file of its own needs (the
// XML namespace, a fixed size), which an SVG inline in HTML does without.
func writeSweepSVG(w io.Writer, sw *Sweep, standalone bool) error {
	if len(sw.Points) == 0 || sw.Forecast.Result == nil {
		return fmt.Errorf("plot: the sweep has no points")
	}
	const (
		W, H                     = 800.0, 560.0
		left, right, top, bottom = 80.0, 40.0, 70.0, 490.0
		colLine, colFc, colRef   = "#2f7ed8", "#d62728", "#999999"
	)
	all := append(append([]SweepPoint(nil), sw.Points...), sw.Forecast)
	boot, bootP95 := sw.Forecast.ZeroIdleWaitS, sw.Forecast.ZeroIdleWaitP95S
	xMin, xMax, yMax := 1.0, 1.0, max(boot, 1)
	for _, pt := range all {
		xMin, xMax = min(xMin, pt.CostOverFloor), max(xMax, pt.CostOverFloor)
		yMax = max(yMax, pt.WaitP95S)
	}
	// Clip the y axis at a few boots when some point waited far longer, unless none
	// would be left below the clip to see.
	clip := math.Inf(1)
	if ref := max(bootP95, boot, 1); yMax > 5*ref && slices.ContainsFunc(all, func(pt SweepPoint) bool { return pt.WaitP95S <= 3*ref }) {
		clip = 3 * ref
		yMax = clip
	}
	xTick := niceCeil((xMax - xMin) / 6)
	if xMax == xMin {
		xTick = 0.1
	}
	xMin, xMax = xTick*math.Floor(xMin/xTick), xTick*math.Ceil(xMax/xTick+0.01)
	yTick := niceCeil(yMax / 6)
	yMax = yTick * math.Ceil(yMax/yTick+0.01)
	x := func(v float64) float64 { return left + (W-left-right)*(v-xMin)/(xMax-xMin) }
	y := func(v float64) float64 { return bottom - (bottom-top)*min(v, yMax)/yMax }

	b := bufio.NewWriter(w)
	if standalone {
		fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%g" height="%g" viewBox="0 0 %g %g" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	} else {
		fmt.Fprintf(b, `<svg viewBox="0 0 %g %g" font-family="sans-serif" font-size="12" role="img" aria-labelledby="frontier-title">`+"\n", W, H)
	}
	fmt.Fprintf(b, `<title id="frontier-title">Cost over the clairvoyant floor against job wait p95, one point per value of %s, and the forecast policy</title>`+"\n", xmlEscape(sw.Key))
	fmt.Fprintf(b, `<rect width="%g" height="%g" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(b, `<text x="%g" y="20" font-size="14" font-weight="bold">runner simulate --sweep %s: cost against job wait, %d jobs</text>`+"\n", left, xmlEscape(sw.Key), sw.Forecast.Jobs)
	fmt.Fprintf(b, `<text x="%g" y="38">boot time %s; each point is one run, labelled by its %s; red: the forecast policy</text>`+"\n", left, xmlEscape(sw.Forecast.Boot), xmlEscape(sw.Key))

	for v := xMin; v <= xMax+xTick/2; v += xTick {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="#eeeeee"/>`+"\n", x(v), top, x(v), bottom)
		fmt.Fprintf(b, `<text x="%.1f" y="%g" text-anchor="middle">%s</text>`+"\n", x(v), bottom+18, fmtTick(math.Round(v*1000)/1000))
	}
	for v := 0.0; v <= yMax+yTick/2; v += yTick {
		fmt.Fprintf(b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="#eeeeee"/>`+"\n", left, y(v), W-right, y(v))
		fmt.Fprintf(b, `<text x="%g" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, fmtTick(v))
	}
	// Reference lines: the clairvoyant floor and one boot.
	if xMin <= 1 && 1 <= xMax {
		fmt.Fprintf(b, `<line x1="%.1f" y1="%g" x2="%.1f" y2="%g" stroke="%s" stroke-dasharray="4 3"/>`+"\n", x(1), top, x(1), bottom, colRef)
		fmt.Fprintf(b, `<text x="%.1f" y="%g" fill="#666">clairvoyant floor</text>`+"\n", x(1)+4, top+12)
	}
	if boot > 0 && boot <= yMax {
		fmt.Fprintf(b, `<line x1="%g" y1="%.1f" x2="%g" y2="%.1f" stroke="%s" stroke-dasharray="4 3"/>`+"\n", left, y(boot), W-right, y(boot), colRef)
		fmt.Fprintf(b, `<text x="%g" y="%.1f" text-anchor="end" fill="#666">one boot (%s)</text>`+"\n", W-right-4, y(boot)-4, time.Duration(boot*float64(time.Second)).Round(100*time.Millisecond))
	}

	var line strings.Builder
	for _, pt := range sw.Points {
		fmt.Fprintf(&line, "%.1f,%.1f ", x(pt.CostOverFloor), y(pt.WaitP95S))
	}
	fmt.Fprintf(b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", colLine, strings.TrimSpace(line.String()))
	mark := func(pt SweepPoint, col, label string) {
		px, py := x(pt.CostOverFloor), y(pt.WaitP95S)
		if pt.WaitP95S > clip {
			// Off the scale: a triangle on the top edge, with the wait written out.
			fmt.Fprintf(b, `<polygon points="%.1f,%.1f %.1f,%.1f %.1f,%.1f" fill="%s"/>`+"\n", px, py-5, px-4, py+3, px+4, py+3, col)
			label += " (p95 " + time.Duration(pt.WaitP95S*float64(time.Second)).Round(time.Second).String() + ")"
		} else {
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", px, py, col)
		}
		fmt.Fprintf(b, `<text x="%.1f" y="%.1f" fill="%s">%s</text>`+"\n", px+6, py-6, col, xmlEscape(label))
	}
	for _, pt := range sw.Points {
		mark(pt, colLine, pt.Value)
	}
	mark(sw.Forecast, colFc, "forecast")

	fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", left, bottom, W-right, bottom)
	fmt.Fprintf(b, `<line x1="%g" y1="%g" x2="%g" y2="%g" stroke="black"/>`+"\n", left, top, left, bottom)
	fmt.Fprintf(b, `<text x="%g" y="%g" text-anchor="middle">cost: instance-seconds / clairvoyant floor</text>`+"\n", (left+W-right)/2, bottom+40)
	fmt.Fprintf(b, `<text transform="translate(20,%.1f) rotate(-90)" text-anchor="middle">job wait p95 (s)</text>`+"\n", (top+bottom)/2)
	fmt.Fprintln(b, "</svg>")
	return b.Flush()
}
