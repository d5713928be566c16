package simulate

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
)

// Params are the inputs of one simulation besides the trace.
type Params struct {
	// Scaler holds the [runners.autoscaler] keys and policies. Clock, Manual, Store
	// and Logger are set by Run.
	Scaler taskscaler.Options
	// Boot is the simulated cloud's boot-time distribution.
	Boot BootTime
	// CapacityErrorRate is the probability that one requested instance is refused.
	CapacityErrorRate float64
	// Seed drives the cloud's randomness (boot samples, capacity errors).
	Seed uint64
	// Start is the wall-clock time of the trace's second 0; policy periods are
	// matched against it. Zero means Monday 2026-03-02 00:00 UTC.
	Start time.Time
	// Buckets is the number of time buckets of the series kept for plots (0 = 600).
	Buckets int
	// Runner is the name of the [[runners]] entry simulated, for reports.
	Runner string
}

// PendingTimeout is how long a job that never got a reservation (preemptive mode
// without an idle slot) waits in GitLab's queue before it is dropped, as GitLab drops
// jobs pending for a day.
const PendingTimeout = 24 * time.Hour

// DefaultStart is the default wall-clock time of a trace's second 0: a Monday.
var DefaultStart = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)

// Result is what a simulation measured. Durations are in seconds in JSON.
type Result struct {
	Jobs       int     `json:"jobs"`
	FailedJobs int     `json:"failed_jobs"`
	HorizonS   float64 `json:"horizon_s"`
	// InstanceSeconds = BusyInstanceSeconds + IdleInstanceSeconds + BootingInstanceSeconds.
	InstanceSeconds        float64 `json:"instance_seconds"`
	BusyInstanceSeconds    float64 `json:"busy_instance_seconds"`
	IdleInstanceSeconds    float64 `json:"idle_instance_seconds"`
	BootingInstanceSeconds float64 `json:"booting_instance_seconds"`
	// IdlePerJobS is (idle + booting) instance-seconds per job: the benchmarks'
	// "provisioned but not running a job, boots included".
	IdlePerJobS float64 `json:"idle_per_job_s"`
	// Wait percentiles are over every job; a failed job counts as waiting until it
	// failed.
	WaitMeanS float64 `json:"wait_mean_s"`
	WaitP50S  float64 `json:"wait_p50_s"`
	WaitP95S  float64 `json:"wait_p95_s"`
	WaitP99S  float64 `json:"wait_p99_s"`
	WaitMaxS  float64 `json:"wait_max_s"`
	// QueueWait is the part of the wait a job spent without a reservation: queued in
	// GitLab, because the runner did not ask for it (preemptive mode without an idle
	// slot, all of max_instances in use, reservation throttling). Percentiles are over
	// every job; QueuedJobs counts the jobs that waited there at all.
	QueueWaitP50S float64 `json:"queue_wait_p50_s"`
	QueueWaitP95S float64 `json:"queue_wait_p95_s"`
	QueueWaitMaxS float64 `json:"queue_wait_max_s"`
	QueuedJobs    int     `json:"queued_jobs"`
	// PeakHourlyJobs is the most jobs that arrived within one hour of the trace.
	PeakHourlyJobs   int `json:"peak_hourly_jobs"`
	MaxInstancesSeen int `json:"max_instances_seen"`
	InstancesCreated int `json:"instances_created"`
	CapacityRefused  int `json:"capacity_refused"`
	// ClairvoyantInstanceSeconds is the cost floor C*; ExcessOverFloor is
	// InstanceSeconds/C* − 1.
	ClairvoyantInstanceSeconds float64 `json:"clairvoyant_instance_seconds"`
	ExcessOverFloor            float64 `json:"excess_over_floor"`
	// ZeroIdleWaitS is the zero-idle wait floor (median boot + 0 decision latency on
	// the virtual clock); ZeroIdleWaitP95S its 95th percentile.
	ZeroIdleWaitS    float64 `json:"zero_idle_wait_s"`
	ZeroIdleWaitP95S float64 `json:"zero_idle_wait_p95_s"`
	Boot             string  `json:"boot_time"`
	// CapacityPerInstance is the slots per instance the policy ran with.
	CapacityPerInstance int `json:"capacity_per_instance"`
	Reconciles          int `json:"reconciles"`
	// Warnings explain a material GitLab queue time (see QueueWait): what capped the
	// throughput and what to change.
	Warnings []string `json:"warnings,omitempty"`
	// Series is the per-bucket time series behind --plot.
	Series *Series `json:"-"`
}

// Series holds averages per time bucket.
type Series struct {
	// Start is the wall-clock time of the first bucket's start (Params.Start), in the
	// zone the plot's axis is drawn in (AxisZone).
	Start   time.Time
	Step    time.Duration
	Demand  []float64 // jobs waiting or running
	Booting []float64 // instances
	Idle    []float64
	Busy    []float64
	WaitP95 []float64 // seconds, over jobs that started in the bucket (NaN: none)
	WaitMax []float64
}

type simJob struct {
	idx      int
	key      string
	arrival  time.Duration
	dur      time.Duration
	reserved bool
	started  bool
	failed   bool
	failAt   time.Duration
	resAt    time.Duration
	start    time.Duration
	inst     string
}

type endHeap []*simJob

func (h endHeap) Len() int { return len(h) }
func (h endHeap) Less(i, j int) bool {
	a, b := h[i].start+h[i].dur, h[j].start+h[j].dur
	if a != b {
		return a < b
	}
	return h[i].idx < h[j].idx
}
func (h endHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *endHeap) Push(x any)   { *h = append(*h, x.(*simJob)) }
func (h *endHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Run replays jobs through a real taskscaler in Manual mode on a fake clock. Time
// jumps from event to event (an arrival, a job end, the scaler's next reconcile, an
// acquire timeout), so a day of jobs takes seconds. The scaler is driven as its
// background loop would drive it: Reconcile every NextInterval, and at once after a
// scale-up or a drained max_use_count instance (the loop's kicks).
//
// Each arriving job does what the runner does: Reserve (non-preemptive mode counts
// the demand and scales up at once), then TryAcquire; a job that gets no slot waits
// in FIFO order and tries again whenever a slot may have freed up. A job still
// holding a reservation for instance_acquire_timeout without a slot fails, as Acquire
// would; one that never got a reservation (preemptive mode) waits in GitLab's queue
// and fails only after PendingTimeout.
func Run(ctx context.Context, jobs []Job, p Params) (*Result, error) {
	if len(jobs) == 0 {
		return nil, errors.New("simulate: the trace has no jobs")
	}
	if err := p.Boot.Validate(); err != nil {
		return nil, err
	}
	if p.CapacityErrorRate < 0 || p.CapacityErrorRate >= 1 {
		return nil, fmt.Errorf("capacity_error_rate %g: want 0 <= rate < 1", p.CapacityErrorRate)
	}
	if !sort.SliceIsSorted(jobs, func(i, j int) bool { return jobs[i].Arrival < jobs[j].Arrival }) {
		return nil, errors.New("simulate: jobs must be sorted by arrival")
	}
	start := p.Start
	if start.IsZero() {
		start = DefaultStart
	}
	clk := clock.NewFake(start)
	cloud := NewCloud(clk, CloudOptions{Boot: p.Boot, CapacityErrorRate: p.CapacityErrorRate, Seed: p.Seed})
	kicked := false
	cloud.onIncrease = func(int) { kicked = true }

	o := p.Scaler
	o.Clock, o.Manual, o.Store = clk, true, state.NewMemory()
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	o.Ready, o.Probe, o.Metrics = nil, nil, nil
	s, err := taskscaler.New(ctx, cloud, o)
	if err != nil {
		return nil, err
	}
	defer s.Shutdown(context.WithoutCancel(ctx))
	timeout := acquireTimeout(o)

	sj := make([]*simJob, len(jobs))
	width := len(strconv.Itoa(len(jobs)))
	for i, j := range jobs {
		sj[i] = &simJob{idx: i, key: fmt.Sprintf("job-%0*d", width, i), arrival: j.Arrival, dur: j.Duration}
	}
	at := func() time.Duration { return clk.Now().Sub(start) }
	var (
		queue     []*simJob
		resOrder  []*simJob // reserved jobs in reservation order, for the acquire timeout
		running   endHeap
		next      int
		nextRec   time.Duration // the loop reconciles at once when it starts
		uses      = map[string]int{}
		onInst    = map[string]int{}
		res       = &Result{Jobs: len(jobs), Boot: p.Boot.String(), CapacityPerInstance: max(o.CapacityPerInstance, 1)}
		sameTime  int
		lastRecAt = time.Duration(-1)
	)
	// reserve and acquire are the runner's two steps for one job. A refused Reserve
	// (preemptive mode without an idle slot, reservation throttling, all potential
	// capacity in use) leaves the job queued in GitLab; the runner asks again later.
	reserve := func(j *simJob) bool {
		if !j.reserved && s.Reserve(ctx, j.key) == nil {
			j.reserved, j.resAt = true, at()
			resOrder = append(resOrder, j)
		}
		return j.reserved
	}
	acquire := func(j *simJob) bool {
		a, err := s.TryAcquire(ctx, j.key)
		if err != nil {
			return false
		}
		j.started, j.start, j.inst = true, at(), a.InstanceID()
		uses[j.inst]++
		onInst[j.inst]++
		heap.Push(&running, j)
		return true
	}
	// drain retries the queued jobs in arrival order. Once a Reserve is refused, later
	// ones would be too; once an acquisition fails, no ready slot is free, and the
	// scaler binds reservations to slots oldest first, so later ones would fail too.
	drain := func() {
		reserveBlocked, acquireBlocked := false, false
		kept := queue[:0]
		for _, j := range queue {
			if !(reserveBlocked && acquireBlocked) {
				if !j.reserved && !reserveBlocked && !reserve(j) {
					reserveBlocked = true
				}
				if j.reserved && !acquireBlocked && !acquire(j) {
					acquireBlocked = true
				}
			}
			if !j.started {
				kept = append(kept, j)
			}
		}
		clear(queue[len(kept):])
		queue = kept
	}

	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if next == len(sj) && len(running) == 0 && len(queue) == 0 {
			break
		}
		// The next event.
		t := nextRec
		if next < len(sj) {
			t = min(t, sj[next].arrival)
		}
		if len(running) > 0 {
			t = min(t, running[0].start+running[0].dur)
		}
		for len(resOrder) > 0 && (resOrder[0].started || resOrder[0].failed) {
			resOrder = resOrder[1:]
		}
		if len(resOrder) > 0 {
			t = min(t, resOrder[0].resAt+timeout)
		}
		for _, j := range queue {
			if !j.reserved && !j.failed {
				t = min(t, j.arrival+PendingTimeout)
				break
			}
		}
		t = max(t, at())
		clk.Set(start.Add(t))

		freed := false
		for len(running) > 0 && running[0].start+running[0].dur <= t {
			j := heap.Pop(&running).(*simJob)
			s.Release(j.key)
			onInst[j.inst]--
			if o.MaxUseCount > 0 && uses[j.inst] >= o.MaxUseCount && onInst[j.inst] == 0 {
				kicked = true // Release kicks the loop to retire a used-up instance
			}
			freed = true
		}
		fail := func(j *simJob) {
			j.failed, j.failAt = true, t
			res.FailedJobs++
			if j.reserved {
				s.Unreserve(j.key)
			}
		}
		failed := false
		for len(resOrder) > 0 {
			j := resOrder[0]
			if !j.started && !j.failed {
				if j.resAt+timeout > t {
					break
				}
				fail(j)
				failed = true
			}
			resOrder = resOrder[1:]
		}
		for _, j := range queue {
			if j.arrival+PendingTimeout > t {
				break
			}
			if !j.reserved && !j.failed {
				fail(j)
				failed = true
			}
		}
		if failed {
			kept := queue[:0]
			for _, j := range queue {
				if !j.failed {
					kept = append(kept, j)
				}
			}
			clear(queue[len(kept):])
			queue = kept
		}
		for next < len(sj) && sj[next].arrival <= t {
			j := sj[next]
			next++
			// Every job reserves on arrival, so that its demand counts at once even
			// behind a queue; it runs now only if its reservation is bound to a
			// ready slot (or one is free).
			if !reserve(j) || !acquire(j) {
				queue = append(queue, j)
			}
		}
		if freed {
			drain()
		}
		if t >= nextRec || kicked {
			if t == lastRecAt {
				sameTime++
			} else {
				sameTime = 0
			}
			if sameTime > 100 {
				return nil, fmt.Errorf("simulate: the scaler keeps asking to reconcile at %s without time passing", t)
			}
			lastRecAt = t
			kicked = false
			if err := s.Reconcile(ctx); err != nil {
				return nil, fmt.Errorf("simulate at %s: %w", t, err)
			}
			res.Reconciles++
			drain()
			nextRec = t + s.NextInterval()
			if kicked {
				nextRec = t
			}
		}
	}
	horizon := at()
	account(res, sj, cloud, horizon, start, p)
	res.PeakHourlyJobs = PeakHourlyJobs(jobs)
	res.Warnings = queueWarnings(res, jobs, p)
	return res, nil
}

type interval struct{ from, to time.Duration }

// account bills every instance the cloud ever created, from Increase to Decrease
// (or the end of the trace), splitting its life into booting (until running), busy
// (running at least one job) and idle (the rest).
func account(res *Result, jobs []*simJob, cloud *Cloud, horizon time.Duration, start time.Time, p Params) {
	nb := p.Buckets
	if nb <= 0 {
		nb = 600
	}
	step := niceStep(horizon / time.Duration(nb))
	nb = int(horizon/step) + 1
	se := &Series{Start: start.In(AxisZone(p.Scaler.Policies, start)), Step: step, Demand: make([]float64, nb), Booting: make([]float64, nb), Idle: make([]float64, nb),
		Busy: make([]float64, nb), WaitP95: make([]float64, nb), WaitMax: make([]float64, nb)}
	add := func(series []float64, from, to time.Duration) {
		for from < to {
			b := int(from / step)
			end := min(time.Duration(b+1)*step, to)
			series[b] += (end - from).Seconds() / step.Seconds()
			from = end
		}
	}

	busyBy := map[string][]interval{}
	var waits, queued []float64
	bucketWaits := make([][]float64, nb)
	var waitSum float64
	for _, j := range jobs {
		q := j.failAt - j.arrival // never reserved: queued in GitLab until it failed
		if j.reserved {
			q = j.resAt - j.arrival
		}
		queued = append(queued, q.Seconds())
		if q > 0 {
			res.QueuedJobs++
		}
		if j.failed {
			// A failed job counts as waiting until it failed: a lower bound on what
			// its user waited, which keeps the percentiles honest.
			w := (j.failAt - j.arrival).Seconds()
			add(se.Demand, j.arrival, j.failAt)
			waits = append(waits, w)
			waitSum += w
			continue
		}
		w := (j.start - j.arrival).Seconds()
		waits = append(waits, w)
		waitSum += w
		b := int(j.start / step)
		bucketWaits[b] = append(bucketWaits[b], w)
		busyBy[j.inst] = append(busyBy[j.inst], interval{j.start, j.start + j.dur})
		add(se.Demand, j.arrival, j.start+j.dur)
	}
	cloud.mu.Lock()
	all := cloud.all
	res.MaxInstancesSeen = cloud.maxLive
	res.CapacityRefused = cloud.refused
	cloud.mu.Unlock()
	res.InstancesCreated = len(all)
	var total, booting, busy time.Duration
	for _, in := range all {
		c := in.created.Sub(start)
		e := horizon
		if !in.deleted.IsZero() {
			e = min(in.deleted.Sub(start), horizon)
		}
		if e <= c {
			continue
		}
		total += e - c
		r := min(in.running.Sub(start), e)
		booting += r - c
		add(se.Booting, c, r)
		iv := busyBy[in.id]
		sort.Slice(iv, func(a, b int) bool { return iv[a].from < iv[b].from })
		// Union of the job intervals, clipped to the instance's life.
		cur := interval{-1, -1}
		var merged []interval
		for _, x := range iv {
			x.from, x.to = max(x.from, r), min(x.to, e)
			if x.to <= x.from {
				continue
			}
			if cur.to >= x.from && cur.from >= 0 {
				cur.to = max(cur.to, x.to)
				continue
			}
			if cur.from >= 0 {
				merged = append(merged, cur)
			}
			cur = x
		}
		if cur.from >= 0 {
			merged = append(merged, cur)
		}
		last := r
		for _, m := range merged {
			busy += m.to - m.from
			add(se.Busy, m.from, m.to)
			add(se.Idle, last, m.from)
			last = m.to
		}
		add(se.Idle, last, e)
	}
	res.HorizonS = horizon.Seconds()
	res.InstanceSeconds = total.Seconds()
	res.BootingInstanceSeconds = booting.Seconds()
	res.BusyInstanceSeconds = busy.Seconds()
	res.IdleInstanceSeconds = (total - booting - busy).Seconds()
	res.IdlePerJobS = (res.IdleInstanceSeconds + res.BootingInstanceSeconds) / float64(len(jobs))

	sort.Float64s(waits)
	if len(waits) > 0 {
		res.WaitMeanS = waitSum / float64(len(waits))
		res.WaitP50S, res.WaitP95S, res.WaitP99S = quantile(waits, 0.50), quantile(waits, 0.95), quantile(waits, 0.99)
		res.WaitMaxS = waits[len(waits)-1]
	}
	sort.Float64s(queued)
	if len(queued) > 0 {
		res.QueueWaitP50S, res.QueueWaitP95S = quantile(queued, 0.50), quantile(queued, 0.95)
		res.QueueWaitMaxS = queued[len(queued)-1]
	}
	for b, ws := range bucketWaits {
		if len(ws) == 0 {
			se.WaitP95[b], se.WaitMax[b] = math.NaN(), math.NaN()
			continue
		}
		sort.Float64s(ws)
		se.WaitP95[b], se.WaitMax[b] = quantile(ws, 0.95), ws[len(ws)-1]
	}
	res.Series = se

	plain := make([]Job, len(jobs))
	for i, j := range jobs {
		plain[i] = Job{Arrival: j.arrival, Duration: j.dur}
	}
	floor := ClairvoyantFloor(plain, p.Boot.Mean(), max(p.Scaler.CapacityPerInstance, 1), p.Scaler.MaxUseCount)
	res.ClairvoyantInstanceSeconds = floor.Seconds()
	if floor > 0 {
		res.ExcessOverFloor = res.InstanceSeconds/res.ClairvoyantInstanceSeconds - 1
	}
	p50, p95 := ZeroIdleWait(p.Boot)
	res.ZeroIdleWaitS, res.ZeroIdleWaitP95S = p50.Seconds(), p95.Seconds()
}

// quantile is the nearest-rank q-quantile of sorted values.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func acquireTimeout(o taskscaler.Options) time.Duration {
	if o.InstanceAcquireTimeout > 0 {
		return o.InstanceAcquireTimeout
	}
	return taskscaler.DefaultInstanceAcquireTimeout
}

// niceStep rounds d up to a step a reader can count in: 1, 2, 5, 10, 15, 30 s or min,
// or whole hours.
func niceStep(d time.Duration) time.Duration {
	for _, unit := range []time.Duration{time.Second, time.Minute} {
		for _, m := range []time.Duration{1, 2, 5, 10, 15, 30} {
			if m*unit >= d {
				return m * unit
			}
		}
	}
	return max(d.Round(time.Hour), time.Hour)
}
