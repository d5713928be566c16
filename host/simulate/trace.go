// Package simulate replays a CI job trace through the real taskscaler, on a virtual
// clock and a simulated cloud, and scores the result against the physical limits of
// the benchmarks reference: the clairvoyant cost floor and the zero-idle wait floor.
// It answers "what would this policy cost, and how long would my jobs wait" in
// seconds, for a day or a week of jobs, without a cloud account.
package simulate

import (
	"bufio"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Job is one row of a trace: it becomes ready (visible to the runner) Arrival after
// the start of the trace and runs for Duration once it has a slot.
type Job struct {
	Arrival  time.Duration
	Duration time.Duration
}

// TraceHeader is the first line of a trace file.
const TraceHeader = "arrival_s,duration_s"

// ReadTraceFile reads a trace from path; see ReadTrace.
func ReadTraceFile(path string) ([]Job, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open trace: %w", err)
	}
	defer f.Close()
	return ReadTrace(f, path)
}

// ReadTrace parses a CSV trace with the header "arrival_s,duration_s" and one job a
// row, both in (possibly fractional) seconds from the start. Rows need not be sorted;
// the result is sorted by arrival. name labels errors with file:line.
func ReadTrace(r io.Reader, name string) ([]Job, error) {
	cr := csv.NewReader(bufio.NewReader(r))
	cr.FieldsPerRecord = -1
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	head, err := cr.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty trace: want the header %q", name, TraceHeader)
		}
		return nil, fmt.Errorf("%s: read header: %w", name, err)
	}
	if len(head) != 2 || strings.TrimSpace(head[0]) != "arrival_s" || strings.TrimSpace(head[1]) != "duration_s" {
		line, _ := cr.FieldPos(0)
		return nil, fmt.Errorf("%s:%d: header %q: want %q", name, line, strings.Join(head, ","), TraceHeader)
	}
	var jobs []Job
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		line, _ := cr.FieldPos(0)
		if len(rec) != 2 {
			return nil, fmt.Errorf("%s:%d: %d fields: want 2 (arrival_s,duration_s)", name, line, len(rec))
		}
		var v [2]float64
		for i, f := range rec {
			x, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil || math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
				return nil, fmt.Errorf("%s:%d: %s %q: want a number of seconds >= 0", name, line, []string{"arrival_s", "duration_s"}[i], f)
			}
			v[i] = x
		}
		jobs = append(jobs, Job{Arrival: seconds(v[0]), Duration: seconds(v[1])})
	}
	if len(jobs) == 0 {
		return nil, fmt.Errorf("%s: no jobs after the header", name)
	}
	sort.SliceStable(jobs, func(i, j int) bool { return jobs[i].Arrival < jobs[j].Arrival })
	return jobs, nil
}

// WriteTrace writes jobs in the trace format, with millisecond precision.
func WriteTrace(w io.Writer, jobs []Job) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, TraceHeader)
	for _, j := range jobs {
		fmt.Fprintf(bw, "%s,%s\n", fmtSeconds(j.Arrival), fmtSeconds(j.Duration))
	}
	return bw.Flush()
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }

func fmtSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Round(time.Millisecond).Seconds(), 'f', -1, 64)
}

// GenerateOptions shape a synthetic CI trace. Zero values take the defaults noted.
type GenerateOptions struct {
	// Seed makes the trace reproducible: the same options give the same trace.
	Seed uint64
	// Jobs is the number of jobs (default 10000).
	Jobs int
	// Days is the length of the trace (default 1). Day 0 is a Monday.
	Days int
	// WeekendFactor scales the arrival rate on Saturdays and Sundays (default 0.25;
	// 1 disables the weekday weighting).
	WeekendFactor float64
	// MedianDuration and DurationP99 set the log-normal job duration (default 3m and
	// 20m).
	MedianDuration time.Duration
	DurationP99    time.Duration
	// MeanFanout is the mean number of parallel jobs of one pipeline stage (default 4).
	MeanFanout float64
	// MaxFanout caps the jobs of one stage (0 = no cap). Without a cap, 2 % of the
	// stages are big bursts of 20 to 80 more jobs (a monorepo's test matrix).
	MaxFanout int
}

func (o GenerateOptions) withDefaults() (GenerateOptions, error) {
	if o.Jobs == 0 {
		o.Jobs = 10000
	}
	if o.Days == 0 {
		o.Days = 1
	}
	if o.WeekendFactor == 0 {
		o.WeekendFactor = 0.25
	}
	if o.MedianDuration == 0 {
		o.MedianDuration = 3 * time.Minute
	}
	if o.DurationP99 == 0 {
		o.DurationP99 = 20 * time.Minute
	}
	if o.MeanFanout == 0 {
		o.MeanFanout = 4
	}
	switch {
	case o.Jobs < 0:
		return o, fmt.Errorf("jobs = %d: want a positive number", o.Jobs)
	case o.Days < 0:
		return o, fmt.Errorf("days = %d: want a positive number", o.Days)
	case o.WeekendFactor < 0:
		return o, fmt.Errorf("weekend factor %g: want a factor >= 0", o.WeekendFactor)
	case o.MedianDuration < 0 || o.DurationP99 < o.MedianDuration:
		return o, fmt.Errorf("duration median %s, p99 %s: want 0 < median <= p99", o.MedianDuration, o.DurationP99)
	case o.MeanFanout < 1:
		return o, fmt.Errorf("mean fan-out %g: want at least 1", o.MeanFanout)
	case o.MaxFanout < 0:
		return o, fmt.Errorf("max fan-out %d: want 0 (no cap) or a positive number", o.MaxFanout)
	}
	return o, nil
}

// diurnalRate is the relative pipeline rate at hour-of-day h: a night floor, a
// working-day hump peaking early afternoon, and a small morning bump when people
// push the previous evening's work.
func diurnalRate(h float64) float64 {
	g := func(mu, sd float64) float64 { return math.Exp(-0.5 * ((h - mu) / sd) * ((h - mu) / sd)) }
	return 0.06 + g(14, 3.2) + 0.35*g(9.5, 1.2)
}

// Generate returns a seeded synthetic CI trace: pipelines arrive with a diurnal rate
// (weekends lighter), each has one to three stages, each stage fans out into several
// jobs that become ready within a few seconds of each other, and the next stage
// starts when the stage's longest job would have finished. Durations are log-normal.
func Generate(o GenerateOptions) ([]Job, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(o.Seed, 0x5eed))
	sigma := math.Log(float64(o.DurationP99)/float64(o.MedianDuration)) / z99
	dur := func() time.Duration {
		d := time.Duration(float64(o.MedianDuration) * math.Exp(sigma*rng.NormFloat64()))
		return max(d, time.Second).Round(time.Second)
	}
	// Pipeline shapes first, until the job count is reached: each stage's jobs as
	// offsets from the pipeline's start.
	var shapes [][]Job
	n := 0
	for n < o.Jobs {
		stages := 1 + rng.IntN(3)
		var jobs []Job
		var at time.Duration
		for range stages {
			// Geometric fan-out with the requested mean; a few pipelines are big bursts.
			k := 1
			for rng.Float64() > 1/o.MeanFanout {
				k++
			}
			if rng.Float64() < 0.02 {
				k += 20 + rng.IntN(60)
			}
			if o.MaxFanout > 0 {
				k = min(k, o.MaxFanout)
			}
			var longest time.Duration
			for range k {
				j := Job{Arrival: at + time.Duration(rng.IntN(3000))*time.Millisecond, Duration: dur()}
				longest = max(longest, j.Arrival-at+j.Duration)
				jobs = append(jobs, j)
			}
			at += longest + time.Duration(1+rng.IntN(5))*time.Second
		}
		if n+len(jobs) > o.Jobs {
			jobs = jobs[:o.Jobs-n]
		}
		n += len(jobs)
		shapes = append(shapes, jobs)
	}
	// Pipeline start times by inverse transform over a per-minute rate grid.
	minutes := o.Days * 24 * 60
	cdf := make([]float64, minutes)
	total := 0.0
	for m := range minutes {
		r := diurnalRate(float64(m%(24*60)) / 60)
		if wd := (m / (24 * 60)) % 7; wd >= 5 {
			r *= o.WeekendFactor
		}
		total += r
		cdf[m] = total
	}
	starts := make([]time.Duration, len(shapes))
	for i := range starts {
		u := rng.Float64() * total
		m := sort.SearchFloat64s(cdf, u)
		starts[i] = time.Duration(m)*time.Minute + time.Duration(rng.IntN(60000))*time.Millisecond
	}
	sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
	out := make([]Job, 0, o.Jobs)
	for i, shape := range shapes {
		for _, j := range shape {
			out = append(out, Job{Arrival: (starts[i] + j.Arrival).Round(time.Millisecond), Duration: j.Duration})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Arrival < out[j].Arrival })
	return out, nil
}

// z99 is the 99th percentile of the standard normal distribution: a log-normal with
// median m and 99th percentile p has sigma = ln(p/m) / z99.
const z99 = 2.3263478740408408
