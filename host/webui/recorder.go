package webui

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
)

// StatusSource is what a Recorder samples: a pool, or its taskscaler.
type StatusSource interface {
	Status() taskscaler.Status
}

// RecorderOptions bound what a Recorder keeps; zero values take the defaults.
type RecorderOptions struct {
	// Jobs is how many finished jobs are kept (50); unfinished ones are always kept.
	Jobs int
	// Decisions is how many decisions (runs of the same outcome) are kept (20).
	Decisions int
	// Every is the interval of the history samples (15s) and Span how far back they go
	// (6h): Span/Every samples are kept.
	Every, Span time.Duration
	// WaitWindow is how far back a sample's wait percentiles look (5m).
	WaitWindow time.Duration
}

func (o RecorderOptions) withDefaults() RecorderOptions {
	o.Jobs = cmp.Or(max(o.Jobs, 0), 50)
	o.Decisions = cmp.Or(max(o.Decisions, 0), 20)
	o.Every = cmp.Or(max(o.Every, 0), 15*time.Second)
	o.Span = cmp.Or(max(o.Span, 0), 6*time.Hour)
	o.WaitWindow = cmp.Or(max(o.WaitWindow, 0), 5*time.Minute)
	return o
}

// Recorder keeps what the page shows of one runner entry's past beyond its Status: the
// recent jobs (fed by JobReceived, JobOnSlot and JobFinished), the scaling decisions
// and the history samples (both taken by Observe). Everything is bounded and in
// memory: a restart starts it afresh. It is safe for concurrent use.
type Recorder struct {
	src  StatusSource
	opts RecorderOptions

	mu        sync.Mutex
	active    map[int64]*Job // received, not finished
	finished  []Job          // oldest first, at most opts.Jobs
	decisions []Decision     // oldest first, at most opts.Decisions
	samples   []Sample       // oldest first, at most Span/Every
	waits     []slotWait     // waits that ended within WaitWindow, oldest first
}

type slotWait struct {
	at   time.Time
	wait time.Duration
}

// NewRecorder returns a Recorder of src's decisions and samples.
func NewRecorder(src StatusSource, o RecorderOptions) *Recorder {
	return &Recorder{src: src, opts: o.withDefaults(), active: map[int64]*Job{}}
}

// JobReceived records that a job request returned job id at.
func (r *Recorder) JobReceived(id int64, name string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active[id] = &Job{ID: id, Name: name, State: JobWaiting, Received: at}
}

// JobOnSlot records that job id got its slot on instance at: its wait ends.
func (r *Recorder) JobOnSlot(id int64, instance string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	j, ok := r.active[id]
	if !ok {
		return
	}
	j.Instance, j.Slot, j.State = instance, at, JobRunning
	r.addWaitLocked(at, at.Sub(j.Received))
}

// JobFinished records job id's final state (JobPassed or JobFailed) and failure reason.
// A job that never got a slot counts as having waited until its end.
func (r *Recorder) JobFinished(id int64, state, reason string, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	j, ok := r.active[id]
	if !ok {
		return
	}
	delete(r.active, id)
	if j.Slot.IsZero() {
		r.addWaitLocked(at, at.Sub(j.Received))
	}
	j.State, j.FailureReason, j.Finished = state, reason, at
	if len(r.finished) == r.opts.Jobs {
		r.finished = slices.Delete(r.finished, 0, 1)
	}
	r.finished = append(r.finished, *j)
}

// waitsKept caps the waits kept for the percentiles, whatever the job rate.
const waitsKept = 10000

func (r *Recorder) addWaitLocked(at time.Time, w time.Duration) {
	if len(r.waits) == waitsKept {
		r.waits = slices.Delete(r.waits, 0, 1)
	}
	r.waits = append(r.waits, slotWait{at, w})
}

// Observe takes the source's status at now: it records its last decision and its last
// shortfall if they are new, and a history sample once Every has passed since the last
// one. It returns the status.
//
// The taskscaler keeps only its last decision and its last shortfall, so a decision
// that another replaced between two calls is not seen, unless it was a shortfall:
// those, the decisions that explain a slow scale-up, are never missed.
func (r *Recorder) Observe(now time.Time) taskscaler.Status {
	st := r.src.Status()
	r.mu.Lock()
	defer r.mu.Unlock()
	if d := st.LastShortfall; d != nil {
		r.decisionLocked(*d) // never after LastDecision: recorded first
	}
	if d := st.LastDecision; !d.Time.IsZero() {
		r.decisionLocked(d)
	}
	if n := len(r.samples); n == 0 || now.Sub(r.samples[n-1].Time) >= r.opts.Every {
		r.sampleLocked(now, st)
	}
	return st
}

// decisionLocked adds d unless it was seen already; a decision with the outcome of the
// last one kept extends that one.
func (r *Recorder) decisionLocked(d taskscaler.Decision) {
	if n := len(r.decisions); n > 0 {
		last := &r.decisions[n-1]
		if !d.Time.After(last.Last) {
			return
		}
		if sameOutcome(last.Decision, d) {
			last.Last = d.Time
			last.Count++
			return
		}
	}
	if len(r.decisions) == r.opts.Decisions {
		r.decisions = slices.Delete(r.decisions, 0, 1)
	}
	r.decisions = append(r.decisions, Decision{Decision: d, Last: d.Time, Count: 1, Shortfall: d.Requested < d.Wanted})
}

func sameOutcome(a, b taskscaler.Decision) bool {
	return a.Reason == b.Reason && a.Wanted == b.Wanted && a.Requested == b.Requested && a.Accepted == b.Accepted && a.Error == b.Error
}

func (r *Recorder) sampleLocked(now time.Time, st taskscaler.Status) {
	from := now.Add(-r.opts.WaitWindow)
	i, _ := slices.BinarySearchFunc(r.waits, from, func(w slotWait, t time.Time) int { return w.at.Compare(t) })
	r.waits = slices.Delete(r.waits, 0, i)
	var ws []time.Duration
	for _, w := range r.waits {
		ws = append(ws, w.wait)
	}
	for _, j := range r.active {
		if j.Slot.IsZero() {
			ws = append(ws, now.Sub(j.Received))
		}
	}
	s := Sample{Time: now, Instances: st.Instances, Tasks: st.Tasks, Waits: len(ws)}
	if len(ws) > 0 {
		slices.Sort(ws)
		s.WaitP50, s.WaitP95 = percentile(ws, 50), percentile(ws, 95)
	}
	keep := int(r.opts.Span / r.opts.Every)
	if len(r.samples) >= keep {
		r.samples = slices.Delete(r.samples, 0, len(r.samples)-keep+1)
	}
	r.samples = append(r.samples, s)
}

// percentile is the nearest-rank percentile p of sorted ws.
func percentile(ws []time.Duration, p int) time.Duration {
	rank := (p*len(ws) + 99) / 100 // ceil(p/100 × n), at least 1 for n > 0
	return ws[max(rank, 1)-1]
}

// Past returns copies of what the Recorder kept: the jobs (unfinished ones first, then
// the finished, each newest first), the decisions and the samples (oldest first).
func (r *Recorder) Past() (jobs []Job, decisions []Decision, history []Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, j := range r.active {
		jobs = append(jobs, *j)
	}
	slices.SortFunc(jobs, func(a, b Job) int { return cmp.Or(b.Received.Compare(a.Received), cmp.Compare(b.ID, a.ID)) })
	for i := len(r.finished) - 1; i >= 0; i-- {
		jobs = append(jobs, r.finished[i])
	}
	return jobs, slices.Clone(r.decisions), slices.Clone(r.samples)
}

// Poll observes every Recorder that recorders returns each poll interval of clk
// until ctx ends: decisions are caught within poll of being made (the taskscaler keeps
// only its last), and the Recorders take their history samples at their own interval.
func Poll(ctx context.Context, clk clock.Clock, poll time.Duration, recorders func() []*Recorder) {
	if clk == nil {
		clk = clock.Real{}
	}
	if poll <= 0 {
		poll = time.Second
	}
	for {
		now := clk.Now()
		for _, r := range recorders() {
			r.Observe(now)
		}
		t := clk.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}
