package simulate

import (
	"context"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// MaxSweepPoints caps the values of one sweep: each is a full simulation.
const MaxSweepPoints = 200

// sweepKind is how a swept key's values are written.
type sweepKind int

const (
	kindInt      sweepKind = iota // a count
	kindDuration                  // a Go duration; values are nanoseconds
	kindFloat                     // a number
)

// sweepKey is one key --sweep can vary: its kind, the values it allows, and how it is
// set on the scaler's options.
type sweepKey struct {
	kind sweepKind
	// lo and hi bound the values; loOpen and hiOpen exclude the bound itself.
	lo, hi         float64
	loOpen, hiOpen bool
	// policy keys are set on every [[runners.autoscaler.policy]]; the others on
	// [runners.autoscaler].
	policy bool
	set    func(o *taskscaler.Options, pol *taskscaler.Policy, v float64)
}

// sweepKeys are the keys --sweep accepts, by their config.toml names.
var sweepKeys = map[string]sweepKey{
	"idle_count": {kind: kindInt, hi: config.MaxIdleSlots, policy: true,
		set: func(_ *taskscaler.Options, p *taskscaler.Policy, v float64) { p.IdleCount = int(v) }},
	"idle_time": {kind: kindDuration, hi: float64(365 * 24 * time.Hour), policy: true,
		set: func(_ *taskscaler.Options, p *taskscaler.Policy, v float64) { p.IdleTime = time.Duration(v) }},
	"scale_factor": {kind: kindFloat, hi: config.MaxScaleFactor, policy: true,
		set: func(_ *taskscaler.Options, p *taskscaler.Policy, v float64) { p.ScaleFactor = v }},
	"scale_factor_limit": {kind: kindInt, hi: config.MaxIdleSlots, policy: true,
		set: func(_ *taskscaler.Options, p *taskscaler.Policy, v float64) { p.ScaleFactorLimit = int(v) }},
	// target_wait and target_percentile are read only by a forecast policy, so sweeping
	// them makes every fixed policy one, as ForecastParams does.
	"target_wait": {kind: kindDuration, loOpen: true, hi: float64(24 * time.Hour), policy: true,
		set: func(_ *taskscaler.Options, p *taskscaler.Policy, v float64) {
			*p = asForecast(*p)
			p.TargetWait = time.Duration(v)
		}},
	"target_percentile": {kind: kindFloat, loOpen: true, hi: 100, hiOpen: true, policy: true,
		set: func(_ *taskscaler.Options, p *taskscaler.Policy, v float64) {
			*p = asForecast(*p)
			p.TargetPercentile = v
		}},
	"capacity_per_instance": {kind: kindInt, lo: 1, hi: config.MaxCapacityPerInstance,
		set: func(o *taskscaler.Options, _ *taskscaler.Policy, v float64) { o.CapacityPerInstance = int(v) }},
	"max_use_count": {kind: kindInt, hi: math.MaxInt32,
		set: func(o *taskscaler.Options, _ *taskscaler.Policy, v float64) { o.MaxUseCount = int(v) }},
	"max_instances": {kind: kindInt, hi: config.MaxInstancesBound,
		set: func(o *taskscaler.Options, _ *taskscaler.Policy, v float64) { o.MaxInstances = int(v) }},
}

// SweepKeys lists the keys --sweep accepts, sorted.
func SweepKeys() []string {
	keys := make([]string, 0, len(sweepKeys))
	for k := range sweepKeys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// SweepSpec is a parsed --sweep KEY=FROM..TO[:STEP]: the key and its values in
// ascending order (nanoseconds for a duration key).
type SweepSpec struct {
	Key    string
	Values []float64
}

// Label writes v as the key's values are written in config.toml.
func (s SweepSpec) Label(v float64) string {
	switch sweepKeys[s.Key].kind {
	case kindInt:
		return strconv.FormatInt(int64(v), 10)
	case kindDuration:
		return time.Duration(v).String()
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// ParseSweep parses --sweep KEY=FROM..TO[:STEP]. FROM, TO and STEP are written as the
// key is in config.toml: counts, Go durations ("30s", "20m") or numbers. STEP
// defaults to 1 for a count and to a tenth of the range otherwise. The values are
// FROM, FROM+STEP, … up to TO, at most MaxSweepPoints of them.
func ParseSweep(spec string) (SweepSpec, error) {
	bad := func(format string, args ...any) (SweepSpec, error) {
		return SweepSpec{}, fmt.Errorf("--sweep %q: %s", spec, fmt.Sprintf(format, args...))
	}
	key, rng, ok := strings.Cut(spec, "=")
	if !ok {
		return bad("want KEY=FROM..TO[:STEP], e.g. idle_count=0..10 or idle_time=1m..30m:1m")
	}
	key = strings.TrimSpace(key)
	k, ok := sweepKeys[key]
	if !ok {
		return bad("unknown key %q: want one of %s", key, strings.Join(SweepKeys(), ", "))
	}
	from, to, ok := strings.Cut(rng, "..")
	if !ok {
		return bad("want FROM..TO[:STEP] after %s=, e.g. %s", key, exampleRange(k.kind))
	}
	step := ""
	if i := strings.LastIndex(to, ":"); i >= 0 {
		to, step = to[:i], to[i+1:]
	}
	parse := func(what, s string) (float64, error) {
		s = strings.TrimSpace(s)
		var v float64
		var err error
		switch k.kind {
		case kindInt:
			var n int64
			n, err = strconv.ParseInt(s, 10, 64)
			v = float64(n)
		case kindDuration:
			var d time.Duration
			d, err = time.ParseDuration(s)
			v = float64(d)
		default:
			v, err = strconv.ParseFloat(s, 64)
			if err == nil && (math.IsNaN(v) || math.IsInf(v, 0)) {
				err = fmt.Errorf("not a finite number")
			}
		}
		if err != nil {
			return 0, fmt.Errorf("%s %q is not %s", what, s, kindNoun(k.kind))
		}
		return v, nil
	}
	lo, err := parse("FROM", from)
	if err != nil {
		return bad("%v", err)
	}
	hi, err := parse("TO", to)
	if err != nil {
		return bad("%v", err)
	}
	if lo > hi {
		return bad("FROM %s is above TO %s", strings.TrimSpace(from), strings.TrimSpace(to))
	}
	for _, v := range []struct {
		what string
		v    float64
		text string
	}{{"FROM", lo, from}, {"TO", hi, to}} {
		if v.v < k.lo || (k.loOpen && v.v <= k.lo) || v.v > k.hi || (k.hiOpen && v.v >= k.hi) {
			return bad("%s %s is out of range for %s: %s", v.what, strings.TrimSpace(v.text), key, rangeText(k))
		}
	}
	var st float64
	switch {
	case step != "":
		if st, err = parse("STEP", step); err != nil {
			return bad("%v", err)
		}
		if st <= 0 {
			return bad("STEP %s must be above 0", strings.TrimSpace(step))
		}
	case k.kind == kindInt:
		st = 1
	default:
		st = (hi - lo) / 10
	}
	n := 1.0
	if hi > lo {
		n = math.Floor((hi-lo)/st*(1+1e-12)) + 1
	}
	if n > MaxSweepPoints {
		return bad("%.0f values; at most %d: use a larger STEP", n, MaxSweepPoints)
	}
	out := SweepSpec{Key: key, Values: make([]float64, 0, int(n))}
	for i := range int(n) {
		v := lo + float64(i)*st
		switch k.kind {
		case kindInt, kindDuration:
			v = math.Round(v)
		default:
			// Round away binary noise (0.1+0.2), keeping 12 significant digits.
			v, _ = strconv.ParseFloat(strconv.FormatFloat(v, 'g', 12, 64), 64)
		}
		v = min(v, hi)
		if len(out.Values) > 0 && v == out.Values[len(out.Values)-1] {
			continue // a step below the key's resolution (a nanosecond)
		}
		out.Values = append(out.Values, v)
	}
	return out, nil
}

func kindNoun(k sweepKind) string {
	switch k {
	case kindInt:
		return "a whole number"
	case kindDuration:
		return `a duration such as "90s" or "20m"`
	}
	return "a number"
}

func exampleRange(k sweepKind) string {
	switch k {
	case kindInt:
		return "0..10 or 0..20:2"
	case kindDuration:
		return "1m..30m:1m"
	}
	return "0..1:0.1"
}

func rangeText(k sweepKey) string {
	f := func(v float64) string {
		if k.kind == kindDuration {
			return time.Duration(v).String()
		}
		return strconv.FormatFloat(v, 'g', -1, 64)
	}
	lo, hi := "at least "+f(k.lo), "at most "+f(k.hi)
	if k.loOpen {
		lo = "above " + f(k.lo)
	}
	if k.hiOpen {
		hi = "below " + f(k.hi)
	}
	return lo + " and " + hi
}

// With returns p with the swept key set to v: on every policy for a policy key (on a
// new always-active policy when there is none), on the runner's autoscaler otherwise.
// p's policies are not changed.
func (s SweepSpec) With(p Params, v float64) Params {
	k := sweepKeys[s.Key]
	p.Scaler.Policies = slices.Clone(p.Scaler.Policies)
	if k.policy {
		if len(p.Scaler.Policies) == 0 {
			p.Scaler.Policies = []taskscaler.Policy{{}}
		}
		for i := range p.Scaler.Policies {
			k.set(&p.Scaler, &p.Scaler.Policies[i], v)
		}
		return p
	}
	k.set(&p.Scaler, nil, v)
	return p
}

// ForecastParams returns p with every fixed policy made a forecast policy with the
// default targets (target_wait 5s at the 95th percentile), and whether p already was
// all forecast. A converted policy keeps its periods, timezone and idle_time; its
// idle_count, scale_factor and preemptive_mode are dropped, since under a forecast they
// would be a floor and a throughput cap. Forecast policies are kept as they are; no
// policy at all becomes one always-active forecast policy.
func ForecastParams(p Params) (Params, bool) {
	if len(p.Scaler.Policies) == 0 {
		p.Scaler.Policies = []taskscaler.Policy{{Mode: taskscaler.ModeForecast}}
		return p, false
	}
	ps := slices.Clone(p.Scaler.Policies)
	already := true
	for i, pol := range ps {
		already = already && pol.Mode == taskscaler.ModeForecast
		ps[i] = asForecast(pol)
	}
	p.Scaler.Policies = ps
	return p, already
}

// asForecast returns a fixed policy as a forecast policy with the default targets,
// keeping its periods, timezone and idle_time (see ForecastParams); a forecast policy
// is returned as it is.
func asForecast(pol taskscaler.Policy) taskscaler.Policy {
	if pol.Mode == taskscaler.ModeForecast {
		return pol
	}
	return taskscaler.Policy{Periods: pol.Periods, Timezone: pol.Timezone, IdleTime: pol.IdleTime, Mode: taskscaler.ModeForecast}
}

// SweepPoint is one run of a sweep: the swept value as written in config.toml and the
// run's result.
type SweepPoint struct {
	Value string `json:"value"`
	// CostOverFloor is instance-seconds over the clairvoyant floor C*.
	CostOverFloor float64 `json:"cost_over_floor"`
	*Result
}

// Sweep is the cost–wait frontier of one key: one run per value, and the forecast
// policy's run of the same config (ForecastParams) to compare with.
type Sweep struct {
	Key    string       `json:"key"`
	Points []SweepPoint `json:"points"`
	// Forecast is the forecast policy's point; ForecastIsConfig says that the config's
	// policies already were all forecast, so it is the config's own run.
	Forecast         SweepPoint `json:"forecast"`
	ForecastIsConfig bool       `json:"forecast_is_config"`
}

// RunSweep runs the simulation of jobs once per value of spec, and once more with
// ForecastParams, on as many CPUs as Go may use. Each run is the same as Run's, so
// a point equals the run of a config with that value.
func RunSweep(ctx context.Context, jobs []Job, p Params, spec SweepSpec) (*Sweep, error) {
	if _, ok := sweepKeys[spec.Key]; !ok || len(spec.Values) == 0 {
		return nil, fmt.Errorf("sweep: no values of a known key (parse it with ParseSweep)")
	}
	fp, already := ForecastParams(p)
	params := make([]Params, 0, len(spec.Values)+1)
	for _, v := range spec.Values {
		params = append(params, spec.With(p, v))
	}
	params = append(params, fp)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make([]*Result, len(params))
	var (
		mu       sync.Mutex
		firstErr error // the first failure; the runs it cancels fail after it
		wg       sync.WaitGroup
	)
	fail := func(i int, err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr != nil {
			return
		}
		if i < len(spec.Values) {
			firstErr = fmt.Errorf("sweep %s = %s: %w", spec.Key, spec.Label(spec.Values[i]), err)
		} else {
			firstErr = fmt.Errorf("sweep: forecast run: %w", err)
		}
		cancel()
	}
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, pp := range params {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := ctx.Err(); err != nil {
				fail(i, err)
				return
			}
			r, err := Run(ctx, jobs, pp)
			if err != nil {
				fail(i, err)
				return
			}
			results[i] = r
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	point := func(label string, r *Result) SweepPoint {
		pt := SweepPoint{Value: label, Result: r}
		if r.ClairvoyantInstanceSeconds > 0 {
			pt.CostOverFloor = r.InstanceSeconds / r.ClairvoyantInstanceSeconds
		}
		return pt
	}
	sw := &Sweep{Key: spec.Key, ForecastIsConfig: already}
	for i, v := range spec.Values {
		sw.Points = append(sw.Points, point(spec.Label(v), results[i]))
	}
	sw.Forecast = point("forecast", results[len(results)-1])
	return sw, nil
}

// WriteSweepText prints the frontier as a table: one row per value and the forecast
// policy's row last.
func WriteSweepText(w io.Writer, sw *Sweep) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\twait p50 s\tp95 s\tp99 s\tcost / floor\tidle+boot s/job\tfailed jobs\tGitLab queue p95 s\t\n", sw.Key)
	queued := false
	row := func(pt SweepPoint) {
		mark := ""
		if len(pt.Warnings) > 0 {
			mark, queued = " *", true
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.2f\t%.1f\t%d\t%.1f%s\t\n", pt.Value, pt.WaitP50S, pt.WaitP95S, pt.WaitP99S,
			pt.CostOverFloor, pt.IdlePerJobS, pt.FailedJobs, pt.QueueWaitP95S, mark)
	}
	for _, pt := range sw.Points {
		row(pt)
	}
	row(sw.Forecast)
	if err := tw.Flush(); err != nil {
		return err
	}
	if sw.ForecastIsConfig {
		fmt.Fprintln(w, "\nforecast: the config's own policies (all forecast), unchanged.")
	} else {
		fmt.Fprintf(w, "\nforecast: the same config with mode = \"forecast\" and the default targets (target_wait %s at the %gth percentile) in every fixed policy, without its idle_count and scale_factor.\n",
			taskscaler.DefaultTargetWait, taskscaler.DefaultTargetPercentile)
	}
	if queued {
		fmt.Fprintln(w, "*: jobs waited in GitLab's queue longer than a boot before the runner asked for them; run without --sweep, with that value, for the reason.")
	}
	_, err := fmt.Fprintf(w, "cost / floor is instance-seconds over the clairvoyant floor C*; zero-idle wait floor %.1f s (p95 %.1f s).\n",
		sw.Forecast.ZeroIdleWaitS, sw.Forecast.ZeroIdleWaitP95S)
	return err
}
