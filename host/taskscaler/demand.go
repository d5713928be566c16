package taskscaler

// What the scaler observes of its jobs, for policies that forecast: arrivals (a job
// arrives when it first asks for a slot), how long each waited for one, bursts of
// arrivals, boot times, and the rate by time of week learned from them, kept in the
// state store.

import (
	"math"
	"slices"
	"sort"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
)

const (
	// demandBucket is the width of one rate bucket of the history.
	demandBucket = 15 * time.Minute
	weekBuckets  = int(7 * 24 * time.Hour / demandBucket)
	dayBuckets   = int(24 * time.Hour / demandBucket)
	// recentWindow is how far back freed slots are kept one by one.
	recentWindow = time.Hour
	// rateTau is the time constant of the arrival rate's exponential average.
	rateTau = time.Hour
	// burstGap separates bursts: arrivals closer than this to the previous one belong
	// to the same burst (a pipeline stage's jobs become ready within seconds).
	burstGap = 10 * time.Second
	// maxBurst is the largest burst size tracked apart; larger ones count as it.
	maxBurst = 64
	// bootSamples is how many boot times are kept.
	bootSamples = 32
	// waitSamples is how many job waits are kept for status and the forecast's
	// feedback.
	waitSamples = 500
	// seenCap bounds the weeks (days) a bucket's mean is taken over before it becomes
	// an exponential average, so that a change in habits shows within a few weeks.
	seenCap = 4
	// burstDecay is how much older bursts count against a new one.
	burstDecay = 0.995
)

// demand is the scaler's record of arrivals. It is used under the scaler's lock.
type demand struct {
	hist     state.Demand
	frees    []time.Time // slots freed for another job within recentWindow, oldest first
	curStart time.Time   // the bucket being counted
	curCount int
	// burst being counted: its size and last arrival.
	burstSize int
	burstLast time.Time
	waiting   map[string]time.Time // keys that arrived and have no slot yet
	// rate is the arrival rate (jobs/s) weighted exponentially with time constant
	// rateTau, as of rateTime.
	rate     float64
	rateTime time.Time
	waits    []time.Duration // the last waitSamples waits, oldest first
	waitSeq  uint64          // waits ever recorded; waits[i] has sequence waitSeq-len(waits)+i+1
	valueSeq uint64          // the last wait the forecast's job value has learned from
	dirty    bool
}

func newDemand(rec *state.Demand) *demand {
	d := &demand{waiting: map[string]time.Time{}}
	if rec != nil && rec.BucketSeconds == int(demandBucket/time.Second) && len(rec.Week) == weekBuckets &&
		len(rec.WeekSeen) == weekBuckets && len(rec.Day) == dayBuckets && len(rec.DaySeen) == dayBuckets {
		d.hist = *rec
	} else {
		d.hist = state.Demand{BucketSeconds: int(demandBucket / time.Second),
			Week: make([]float64, weekBuckets), WeekSeen: make([]int, weekBuckets),
			Day: make([]float64, dayBuckets), DaySeen: make([]int, dayBuckets)}
		if rec != nil {
			d.hist.BootsS, d.hist.JobValueS = rec.BootsS, rec.JobValueS
		}
	}
	if len(d.hist.Bursts) != maxBurst {
		d.hist.Bursts = make([]float64, maxBurst)
	}
	return d
}

func weekBucket(t time.Time) int {
	t = t.UTC()
	wd := (int(t.Weekday()) + 6) % 7 // Monday = 0
	return (wd*24*60 + t.Hour()*60 + t.Minute()) / int(demandBucket/time.Minute)
}

// advance closes every bucket that ended by now, folding its count into the tables.
// A gap of more than a week (the host was down) skips the buckets nobody saw.
func (d *demand) advance(now time.Time) {
	start := now.Truncate(demandBucket)
	if d.curStart.IsZero() {
		d.curStart = start
		return
	}
	if d.curStart.Before(start) {
		// A key that asked once without waiting (TryAcquire) and never came back is
		// forgotten after a day, as GitLab forgets a pending job.
		for k, at := range d.waiting {
			if now.Sub(at) > 24*time.Hour {
				delete(d.waiting, k)
			}
		}
	}
	for d.curStart.Before(start) {
		d.fold(d.curStart, float64(d.curCount))
		d.curCount = 0
		d.curStart = d.curStart.Add(demandBucket)
		if start.Sub(d.curStart) > 7*24*time.Hour {
			d.curStart = start
		}
	}
	d.frees = trimRecent(d.frees, now)
	if d.burstSize > 0 && now.Sub(d.burstLast) > burstGap {
		d.endBurst()
	}
}

// rateAt is the exponentially weighted arrival rate at now.
func (d *demand) rateAt(now time.Time) float64 {
	if d.rateTime.IsZero() {
		return 0
	}
	return d.rate * math.Exp(-now.Sub(d.rateTime).Seconds()/rateTau.Seconds())
}

// trimRecent drops the times older than recentWindow.
func trimRecent(ts []time.Time, now time.Time) []time.Time {
	if len(ts) == 0 || now.Sub(ts[0]) <= recentWindow {
		return ts
	}
	i := sort.Search(len(ts), func(i int) bool { return now.Sub(ts[i]) <= recentWindow })
	return slices.Delete(ts, 0, i)
}

// freed records that a job's slot became free for another job.
func (d *demand) freed(now time.Time) {
	d.advance(now)
	d.frees = append(d.frees, now)
}

// fold adds one finished bucket's count to the week and day tables: a plain mean
// over the first seenCap observations, then an exponential average.
func (d *demand) fold(start time.Time, n float64) {
	upd := func(v []float64, seen []int, i int) {
		k := min(seen[i]+1, seenCap)
		v[i] += (n - v[i]) / float64(k)
		seen[i] = k
	}
	w := weekBucket(start)
	upd(d.hist.Week, d.hist.WeekSeen, w)
	upd(d.hist.Day, d.hist.DaySeen, w%dayBuckets)
	d.hist.UpdatedAt = start.Add(demandBucket)
	d.dirty = true
}

func (d *demand) endBurst() {
	for i := range d.hist.Bursts {
		d.hist.Bursts[i] *= burstDecay
	}
	d.hist.Bursts[min(d.burstSize, maxBurst)-1]++
	d.burstSize = 0
}

// arrive records that key asked for a slot for the first time.
func (d *demand) arrive(now time.Time, key string) {
	if _, ok := d.waiting[key]; ok {
		return
	}
	d.advance(now)
	d.waiting[key] = now
	d.rate = d.rateAt(now) + 1/rateTau.Seconds()
	d.rateTime = now
	d.curCount++
	if d.burstSize > 0 && now.Sub(d.burstLast) > burstGap {
		d.endBurst()
	}
	d.burstSize++
	d.burstLast = now
}

// served records that key got a slot; a key that never arrived (a reservation bound
// before its job asked) waited nothing.
func (d *demand) served(now time.Time, key string) {
	at, ok := d.waiting[key]
	if !ok {
		return
	}
	delete(d.waiting, key)
	d.addWait(now.Sub(at))
}

// abandoned records that key gave up (timed out, cancelled): it waited until now.
func (d *demand) abandoned(now time.Time, key string) { d.served(now, key) }

func (d *demand) addWait(w time.Duration) {
	if len(d.waits) == waitSamples {
		d.waits = slices.Delete(d.waits, 0, 1)
	}
	d.waits = append(d.waits, w)
	d.waitSeq++
}

// booted records an instance's boot time.
func (d *demand) booted(took time.Duration) {
	if took <= 0 {
		return
	}
	if len(d.hist.BootsS) >= bootSamples {
		d.hist.BootsS = slices.Delete(d.hist.BootsS, 0, len(d.hist.BootsS)-bootSamples+1)
	}
	d.hist.BootsS = append(d.hist.BootsS, took.Seconds())
	d.dirty = true
}

// take returns the record to store if it changed.
func (d *demand) take() *state.Demand {
	if !d.dirty {
		return nil
	}
	d.dirty = false
	rec := d.hist
	rec.Week, rec.WeekSeen = slices.Clone(rec.Week), slices.Clone(rec.WeekSeen)
	rec.Day, rec.DaySeen = slices.Clone(rec.Day), slices.Clone(rec.DaySeen)
	rec.Bursts, rec.BootsS = slices.Clone(rec.Bursts), slices.Clone(rec.BootsS)
	return &rec
}

// Demand is what a policy sees of the scaler's jobs when it decides. Its methods
// read the scaler's record; a policy must not keep it beyond the call.
type Demand struct {
	d   *demand
	now time.Time
}

// Rate returns the arrival rate in jobs per second over about the last hour,
// weighted exponentially: each arrival raises it at once by 1/hour, and it decays
// with a time constant of an hour.
func (v Demand) Rate() float64 {
	if v.d == nil {
		return 0
	}
	return v.d.rateAt(v.now)
}

// Frees returns how many slots were freed for another job within the last window
// (at most an hour): a job ended on an instance that may take more.
func (v Demand) Frees(window time.Duration) int {
	if v.d == nil {
		return 0
	}
	return countSince(v.d.frees, v.now, window)
}

func countSince(ts []time.Time, now time.Time, window time.Duration) int {
	i := sort.Search(len(ts), func(i int) bool { return now.Sub(ts[i]) < window })
	return len(ts) - i
}

// Seasonal returns the learned arrival rate, in jobs per second, at t: the same
// quarter hour of past weeks if it was seen, else of past days; ok is false when
// neither was seen.
func (v Demand) Seasonal(t time.Time) (rate float64, from string, ok bool) {
	if v.d == nil {
		return 0, "", false
	}
	w := weekBucket(t)
	per := demandBucket.Seconds()
	if v.d.hist.WeekSeen[w] > 0 {
		return v.d.hist.Week[w] / per, "week", true
	}
	if v.d.hist.DaySeen[w%dayBuckets] > 0 {
		return v.d.hist.Day[w%dayBuckets] / per, "day", true
	}
	return 0, "", false
}

// Bursts returns the observed distribution of burst sizes: p[k-1] is the share of
// bursts of k jobs. ok is false before the first burst ended.
func (v Demand) Bursts() (p []float64, ok bool) {
	if v.d == nil {
		return nil, false
	}
	var total float64
	for _, x := range v.d.hist.Bursts {
		total += x
	}
	if total == 0 {
		return nil, false
	}
	p = make([]float64, len(v.d.hist.Bursts))
	for i, x := range v.d.hist.Bursts {
		p[i] = x / total
	}
	return p, true
}

// BootTime returns the q-quantile of the observed boot times; ok is false before the
// first instance became ready.
func (v Demand) BootTime(q float64) (time.Duration, bool) {
	if v.d == nil || len(v.d.hist.BootsS) == 0 {
		return 0, false
	}
	s := slices.Clone(v.d.hist.BootsS)
	slices.Sort(s)
	return time.Duration(quantileSorted(s, q) * float64(time.Second)), true
}

// Waits returns how many of the last jobs (up to 500) got a slot, and how many of
// them waited longer than limit.
func (v Demand) Waits(limit time.Duration) (jobs, over int) {
	if v.d == nil {
		return 0, 0
	}
	for _, w := range v.d.waits {
		if w > limit {
			over++
		}
	}
	return len(v.d.waits), over
}

// LearnJobValue lets the forecast policy update its job value from the waits recorded
// since it last did: learn gets each new wait, oldest first, and the value, and
// returns the new value, which is kept (and stored with the history).
func (v Demand) LearnJobValue(initial float64, learn func(value float64, wait time.Duration) float64) float64 {
	if v.d == nil {
		return initial
	}
	x := v.d.hist.JobValueS
	if x <= 0 {
		x = initial
	}
	// Only the waits recorded since the last call: every decision calls this, and most
	// see none.
	unseen := min(v.d.waitSeq-v.d.valueSeq, uint64(len(v.d.waits)))
	for _, w := range v.d.waits[uint64(len(v.d.waits))-unseen:] {
		x = learn(x, w)
	}
	v.d.valueSeq = v.d.waitSeq
	if x != v.d.hist.JobValueS && !math.IsNaN(x) && !math.IsInf(x, 0) {
		v.d.hist.JobValueS = x
		v.d.dirty = true
	}
	return x
}

// quantileSorted is the nearest-rank q-quantile of sorted values.
func quantileSorted(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
