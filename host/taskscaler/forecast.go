package taskscaler

import (
	"fmt"
	"math"
	"time"
)

// Forecast policy defaults.
const (
	// DefaultTargetWait is how long a job may wait for a slot under a forecast policy
	// unless target_wait says otherwise.
	DefaultTargetWait = 5 * time.Second
	// DefaultTargetPercentile is the share of jobs, in percent, that should start
	// within target_wait.
	DefaultTargetPercentile = 95.0
	// assumedBoot is the boot time a forecast assumes before it saw an instance boot.
	assumedBoot = time.Minute
	// freedWindow is the window over which slots freed by ending jobs are counted.
	freedWindow = 20 * time.Minute
)

// forecastPolicy keeps as many idle slots as the jobs it expects before a new
// instance could be ready are worth. Demand within the next boot (less the wait a job
// may have) is modelled as bursts (pipeline stages fanning out) arriving at a rate
// learned from the same quarter hour of past weeks (or days) and from the last hour
// (an exponential average), whichever is higher, with the burst sizes observed;
// slots that jobs ending on reusable instances free within the window count against
// it. One more idle slot is kept while the chance that it is needed is worth its
// cost: P(demand > S) ≥ h /
// (value × capacity), where h is that window and value is what a job starting in
// time is worth in instance-seconds. value is learned from the waits the jobs had: it
// rises while more jobs than the target percentile allows wait longer than
// target_wait, and falls while fewer do, so the policy spends its misses where slots
// are dearest (quiet hours) and holds the target over the day.
//
// GitLab's keys keep their meaning: idle_count and scale_factor are a floor under
// the forecast; idle_time is how long an unneeded idle instance stays; periods say
// when the policy applies. It is not preemptive unless preemptive_mode says so,
// since preemptive mode caps throughput at the idle slots (see docs/simulate.md).
type forecastPolicy struct{ p Policy }

func (f forecastPolicy) IdleTime() time.Duration { return f.p.IdleTime }

func (f forecastPolicy) Preemptive() bool { return f.p.PreemptiveMode != nil && *f.p.PreemptiveMode }

func (f forecastPolicy) targetWait() time.Duration {
	if f.p.TargetWait > 0 {
		return f.p.TargetWait
	}
	return DefaultTargetWait
}

func (f forecastPolicy) percentile() float64 {
	if f.p.TargetPercentile > 0 {
		return f.p.TargetPercentile
	}
	return DefaultTargetPercentile
}

// Forecast is what a forecast policy concluded, for status and logs.
type Forecast struct {
	// Window is the time a new instance would take to serve a job now: the boot time
	// less target_wait.
	Window time.Duration `json:"window"`
	// Boot is the boot time used and where it came from.
	Boot     time.Duration `json:"boot"`
	BootFrom string        `json:"boot_from"`
	// Rate is the arrival rate used (jobs/s), from RateFrom.
	Rate     float64 `json:"rate"`
	RateFrom string  `json:"rate_from"`
	// Expected is the jobs expected within Window; Freed the slots expected to be freed
	// by jobs ending on instances that take more jobs.
	Expected float64 `json:"expected"`
	Freed    float64 `json:"freed"`
	// Slots is the idle slots the forecast wants (before the idle_count floor).
	Slots int `json:"slots"`
	// JobValue is the value of a job starting in time, in instance-seconds.
	JobValue float64 `json:"job_value_s"`
	// Jobs and Late are the recent jobs and those that waited longer than the target.
	Jobs int `json:"recent_jobs"`
	Late int `json:"recent_late"`
	// Unreachable is set when, with JobValue at its cap, more of the recent jobs are
	// late than the target allows.
	Unreachable bool `json:"unreachable,omitempty"`
}

func (f forecastPolicy) IdleTarget(s Snapshot) Target {
	floor := fixedPolicy{f.p}.IdleTarget(s)
	fc := f.forecast(s)
	slots := max(fc.Slots, floor.Slots)
	why := fmt.Sprintf("forecast %.1f jobs in the next %s (boot %s %s − target_wait %s; %.3g jobs/s from %s); keeping %d slots idle",
		fc.Expected, fc.Window.Round(time.Second), fc.Boot.Round(time.Second), fc.BootFrom, f.targetWait(), fc.Rate, fc.RateFrom, slots)
	if floor.Slots > fc.Slots {
		why += " (" + floor.Why + ")"
	}
	if fc.Jobs > 0 {
		why += fmt.Sprintf("; %d of the last %d jobs waited over %s", fc.Late, fc.Jobs, f.targetWait())
	}
	if fc.Unreachable {
		why += fmt.Sprintf("; the target (%g%% within %s) is not met even at the highest job value, %.0f boot times: jobs arrive in bursts no sensible idle pool covers; raise target_wait or lower target_percentile to pay less",
			f.percentile(), f.targetWait(), maxJobValue)
	}
	return Target{Slots: slots, Why: why, Forecast: &fc}
}

// forecast computes the idle slots wanted now.
func (f forecastPolicy) forecast(s Snapshot) Forecast {
	var fc Forecast
	d := s.Demand
	var ok bool
	if fc.Boot, ok = d.BootTime(0.9); ok {
		fc.BootFrom = "p90 of recent boots"
	} else {
		fc.Boot, fc.BootFrom = assumedBoot, "assumed, none seen yet"
	}
	fc.Window = fc.Boot - f.targetWait()
	fc.JobValue = f.jobValue(s, &fc)
	if fc.Window <= 0 {
		fc.RateFrom = "not needed: a new instance is ready within target_wait"
		return fc
	}
	h := fc.Window.Seconds()

	// The rate: the higher of history (this quarter hour or the next, so that a
	// morning ramp is met) and the last hour. The hour is an exponential average, so
	// that every arrival raises it at once (a burst moves the target in the same
	// decision) and a quiet spell lowers it gradually: a count over a window would
	// swing the target, and with it instances, each time a burst leaves the window.
	fc.Rate, fc.RateFrom = d.Rate(), "the last hour"
	for _, t := range []time.Time{s.Now, s.Now.Add(demandBucket)} {
		if r, from, ok := d.Seasonal(t); ok && r > fc.Rate {
			fc.Rate, fc.RateFrom = r, "this time last "+from
		}
	}
	fc.Expected = fc.Rate * h
	if fc.Expected <= 0 {
		return fc
	}
	bursts, ok := d.Bursts()
	if !ok {
		bursts = defaultBursts()
	}
	// Slots freed by jobs ending on instances that take more jobs serve arrivals too.
	fc.Freed = float64(d.Frees(freedWindow)) / freedWindow.Seconds() * h
	threshold := h / (fc.JobValue * float64(max(s.CapacityPerInstance, 1)))
	fc.Slots = slotsFor(fc.Expected, bursts, fc.Freed, threshold)
	return fc
}

// jobValue is the value of a job starting in time, learned from the waits the jobs
// had (an integral controller). With m the share of late jobs aimed at (the
// percentile's allowance with a margin), each job that waited longer than
// target_wait raises the value by a factor e^(η(1−m)/m), each one in time lowers it by
// e^(−η), so that it settles where m of the jobs are late, and moves by a fixed step
// per job whatever the target. It starts at a value that suits the instances (high
// for instances used once, whose every job needs a booted instance; lower for reused
// ones, whose ending jobs free slots) and stays within [minJobValue, maxJobValue]
// boot times, so that a cause no idle slot can fix (max_instances, a failing cloud,
// bursts larger than any sensible pool) does not drive it without bound.
func (f forecastPolicy) jobValue(s Snapshot, fc *Forecast) float64 {
	boot := fc.Boot.Seconds()
	aim := (1 - f.percentile()/100) * lateMargin
	tw := f.targetWait()
	initial := initialJobValueReused * boot
	if s.MaxUseCount == 1 {
		initial = initialJobValueOnce * boot
	}
	v := s.Demand.LearnJobValue(initial, func(v float64, wait time.Duration) float64 {
		if wait > tw {
			v *= math.Exp(learnRate * (1 - aim) / aim)
		} else {
			v *= math.Exp(-learnRate)
		}
		return min(max(v, minJobValue*boot), maxJobValue*boot)
	})
	fc.Jobs, fc.Late = s.Demand.Waits(tw)
	fc.Unreachable = fc.Jobs >= 100 && v >= maxJobValue*boot*0.99 && float64(fc.Late) > float64(fc.Jobs)*(1-f.percentile()/100)
	return v
}

// The job value's controller: its start (for instances used once, and reused), its
// bounds (in boot times), its step per job, and the share of the allowed late jobs
// it aims at.
const (
	initialJobValueOnce   = 40.0
	initialJobValueReused = 10.0
	minJobValue           = 0.1
	maxJobValue           = 300.0
	learnRate             = 0.003
	lateMargin            = 0.7
)

// defaultBursts is the burst-size distribution assumed before any was seen: geometric
// with mean 3, up to 16 jobs.
func defaultBursts() []float64 {
	p := make([]float64, 16)
	var total float64
	for k := range p {
		p[k] = math.Pow(2.0/3, float64(k))
		total += p[k]
	}
	for k := range p {
		p[k] /= total
	}
	return p
}

// slotsFor returns the smallest S for which P(D − F > S) < threshold, where D is the
// number of jobs in a window with mean jobs expected, arriving in bursts whose sizes
// follow bursts (bursts[k-1] = P(size k)), and F the slots freed in the window by
// jobs ending, Poisson with mean freed. D is compound Poisson; its distribution is
// computed with Panjer's recursion, or a normal approximation when the window holds
// too many bursts or jobs for it.
func slotsFor(expected float64, bursts []float64, freed, threshold float64) int {
	if threshold >= 1 || expected <= 0 {
		return 0
	}
	var m1, m2 float64
	for i, p := range bursts {
		k := float64(i + 1)
		m1 += k * p
		m2 += k * k * p
	}
	lambda := expected / m1 // bursts in the window
	// The exact computation costs O(n·(64 + freed)) for n slots: beyond a few hundred
	// bursts or a thousand jobs a window the normal approximation is as good.
	if lambda > 500 || expected+freed > 1000 {
		// Normal approximation: mean expected, variance lambda·E[K²].
		z := normalQuantile(1 - threshold)
		return max(int(math.Ceil(expected-freed+z*math.Sqrt(lambda*m2+freed))), 0)
	}
	// tail[n] = P(D > n), computed until it is negligible.
	const maxSlots = 100000
	g := []float64{math.Exp(-lambda)}
	tail := []float64{1 - g[0]}
	for n := 1; tail[n-1] >= threshold*1e-3 && n < maxSlots; n++ {
		var sum float64
		for k := 1; k <= min(n, len(bursts)); k++ {
			sum += float64(k) * bursts[k-1] * g[n-k]
		}
		g = append(g, lambda/float64(n)*sum)
		tail = append(tail, tail[n-1]-g[n])
	}
	tailD := func(n int) float64 {
		if n >= len(tail) {
			return 0
		}
		return max(tail[n], 0)
	}
	// P(D − F > S) = Σ_f P(F = f) P(D > S + f).
	for s := 0; s < len(tail); s++ {
		p, pf := 0.0, math.Exp(-freed)
		for f := 0; s+f < len(tail) && (f == 0 || pf > 1e-12 || float64(f) < freed); f++ {
			if f > 0 {
				pf *= freed / float64(f)
			}
			p += pf * tailD(s+f)
		}
		if p < threshold {
			return s
		}
	}
	return len(tail)
}

// normalQuantile is the standard normal quantile function.
func normalQuantile(p float64) float64 {
	if p <= 0 {
		return math.Inf(-1)
	}
	if p >= 1 {
		return math.Inf(1)
	}
	return math.Sqrt2 * math.Erfinv(2*p-1)
}
