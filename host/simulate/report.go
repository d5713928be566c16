package simulate

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// WriteText prints r for people: costs, waits, and the floors they are scored
// against.
func WriteText(w io.Writer, r *Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	sec := func(s float64) string {
		return (time.Duration(s * float64(time.Second))).Round(100 * time.Millisecond).String()
	}
	fmt.Fprintf(tw, "jobs\t%d (%d failed: no slot within instance_acquire_timeout of their reservation, or none within 24h)\n", r.Jobs, r.FailedJobs)
	fmt.Fprintf(tw, "simulated time\t%s (%d reconcile cycles)\n", sec(r.HorizonS), r.Reconciles)
	fmt.Fprintf(tw, "boot time\t%s\n", r.Boot)
	fmt.Fprintf(tw, "instance-seconds\t%.0f (busy %.0f, idle %.0f, booting %.0f)\n", r.InstanceSeconds, r.BusyInstanceSeconds, r.IdleInstanceSeconds, r.BootingInstanceSeconds)
	fmt.Fprintf(tw, "idle+booting per job\t%.1f s\n", r.IdlePerJobS)
	fmt.Fprintf(tw, "job wait p50/p95/p99\t%s / %s / %s (mean %s, max %s)\n", sec(r.WaitP50S), sec(r.WaitP95S), sec(r.WaitP99S), sec(r.WaitMeanS), sec(r.WaitMaxS))
	fmt.Fprintf(tw, "queued in GitLab\t%d jobs, p50/p95 %s / %s (max %s): part of the wait before the runner asked for the job\n", r.QueuedJobs, sec(r.QueueWaitP50S), sec(r.QueueWaitP95S), sec(r.QueueWaitMaxS))
	fmt.Fprintf(tw, "instances\t%d created, %d at most at once, %d refused by the cloud\n", r.InstancesCreated, r.MaxInstancesSeen, r.CapacityRefused)
	fmt.Fprintf(tw, "clairvoyant cost floor\t%.0f instance-seconds (this policy: %+.1f%%)\n", r.ClairvoyantInstanceSeconds, 100*r.ExcessOverFloor)
	fmt.Fprintf(tw, "zero-idle wait floor\t%s (p95 %s): a job without idle capacity waits a boot\n", sec(r.ZeroIdleWaitS), sec(r.ZeroIdleWaitP95S))
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, msg := range r.Warnings {
		if _, err := fmt.Fprintf(w, "\n%s\n", msg); err != nil {
			return err
		}
	}
	return nil
}

// Report is what --report renders into one HTML file: the run of the config and, with
// --sweep, the sweep's frontier. It renders the Result and Sweep that the text and
// JSON reports print, so that the three agree.
type Report struct {
	// Config and Trace name the input files in the heading; Runner the [[runners]]
	// entry simulated.
	Config, Trace, Runner string
	Result                *Result
	// Sweep is nil without --sweep.
	Sweep *Sweep
}

//go:embed report.html.tmpl
var reportHTML string

var reportTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"secs":  htmlSeconds,
	"s1":    func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"int":   groupThousands,
	"pct":   func(v float64) string { return fmt.Sprintf("%+.1f %%", 100*v) },
	"ratio": func(v float64) string { return fmt.Sprintf("%.2f", v) },
	"delta": func(a, b float64) string { return fmt.Sprintf("%+.1f s", a-b) },
	// share is part's width in percent of a bar that stands for whole.
	"share": func(part, whole float64) float64 {
		if whole <= 0 {
			return 0
		}
		return math.Round(1000*part/whole) / 10
	},
}).Parse(reportHTML))

// WriteHTML writes rep as one self-contained HTML page: inline CSS and SVG, no script,
// nothing loaded from anywhere, readable on a phone (the plots and tables scroll
// sideways on a narrow screen).
func WriteHTML(w io.Writer, rep Report) error {
	r := rep.Result
	if r == nil {
		return fmt.Errorf("report: no result (run a simulation first)")
	}
	var day, frontier strings.Builder
	if err := writeDaySVG(&day, r, false); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	queued := false
	if rep.Sweep != nil {
		if err := writeSweepSVG(&frontier, rep.Sweep, false); err != nil {
			return fmt.Errorf("report: %w", err)
		}
		for _, pt := range append(slices.Clone(rep.Sweep.Points), rep.Sweep.Forecast) {
			queued = queued || len(pt.Warnings) > 0
		}
	}
	start := DefaultStart
	if r.Series != nil && !r.Series.Start.IsZero() {
		start = r.Series.Start
	}
	data := struct {
		Report
		// The plots are SVG this package wrote, with every text it took from input
		// escaped (xmlEscape).
		DayPlot, FrontierPlot template.HTML
		Start, Zone           string
		// BarMax is the length of the cost bars: the larger of cost and floor.
		BarMax                       float64
		SweepQueued                  bool
		TargetWait, TargetPercentile string
	}{
		Report:           rep,
		DayPlot:          template.HTML(day.String()),
		FrontierPlot:     template.HTML(frontier.String()),
		Start:            start.Format("Mon 2 Jan 2006 15:04 ") + ZoneName(start),
		Zone:             ZoneName(start),
		BarMax:           max(r.InstanceSeconds, r.ClairvoyantInstanceSeconds),
		SweepQueued:      queued,
		TargetWait:       taskscaler.DefaultTargetWait.String(),
		TargetPercentile: strconv.FormatFloat(taskscaler.DefaultTargetPercentile, 'g', -1, 64),
	}
	return reportTemplate.Execute(w, data)
}

// htmlSeconds writes seconds with one decimal, and as a duration too from a minute on
// ("74.6 s (1m14.6s)"), so that the number reads like the JSON's and the duration
// like the text report's.
func htmlSeconds(s float64) string {
	out := fmt.Sprintf("%.1f s", s)
	if math.Abs(s) >= 60 {
		out += " (" + time.Duration(s*float64(time.Second)).Round(100*time.Millisecond).String() + ")"
	}
	return out
}

// groupThousands writes v rounded to a whole number with its digits grouped by a
// narrow no-break space, as "1 214 989".
func groupThousands(v float64) string {
	s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteRune('\u202f')
		}
		b.WriteRune(c)
	}
	return b.String()
}
