// Package pipelinerun runs a planned .gitlab-ci.yml pipeline (`runner exec`) on an
// autoscaled pool: every job whose dependencies allow it gets a slot from the
// taskscaler, runs through an executor on that slot's instance, and releases the slot;
// independent jobs run concurrently. A job whose instance failed under it (a system
// failure) is retried once on a new slot. Progress is reported as it happens, and every
// job's full log is kept in a file.
package pipelinerun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Slot is a job slot on an instance (a *taskscaler.Acquisition).
type Slot interface {
	InstanceID() string
	Slot() int
	ConnectInfo(ctx context.Context) (provider.ConnectInfo, error)
	WithContext(ctx context.Context) (context.Context, context.CancelFunc)
}

// Pool hands out slots.
type Pool interface {
	Acquire(ctx context.Context, key string) (Slot, error)
	Release(key string)
}

// EnvFactory builds the executor environment for a job on a slot. ctx is bounded by
// the slot: it ends if the instance disappears.
type EnvFactory func(ctx context.Context, job *jobs.Job, slot Slot) (executors.Env, error)

// State is where a job is in its life.
type State string

// Job states reported to Progress.
const (
	StatePending   State = "pending"
	StateWaiting   State = "waiting for an instance"
	StateRunning   State = "running"
	StateRetrying  State = "retrying"
	StatePassed    State = "passed"
	StateFailed    State = "failed"
	StateAllowed   State = "failed (allowed)"
	StateSkipped   State = "skipped"
	StateCancelled State = "canceled"
)

// Progress receives job state changes as they happen, from the jobs' goroutines:
// implementations must be safe for concurrent use.
type Progress interface {
	JobState(job string, state State, detail string)
}

// Runner runs pipelines on a pool.
type Runner struct {
	Pool   Pool
	NewEnv EnvFactory
	// Concurrent bounds jobs running at once (config `concurrent`); 0 means no bound
	// beyond the pool's.
	Concurrent int
	// LogDir receives <job>.log for every job that ran; required.
	LogDir string
	// Progress, if set, is told of every state change.
	Progress Progress
	// Options are passed to the job runtime.
	Options executors.RunOptions
	// Follow, if set, also receives every job's log as it runs, in readable lines
	// prefixed with the job's name.
	Follow io.Writer
	// Stops, if set, end the pipeline early in the ways cancelling Run's ctx does not:
	// a drain and an abort (see Stops).
	Stops Stops

	followMu    sync.Mutex
	followWidth int // the longest job name of the plan, to align the prefixes
}

// Stops are the ways to end jobs early beyond cancelling their context, which
// cancels a job but still runs its after_script and cleanup. A nil channel never
// fires.
type Stops struct {
	// Drain, once closed, starts no more jobs: a job that has no slot yet (waiting
	// for its dependencies, for `concurrent` or for an instance) ends as canceled
	// without running, while the running ones go on to their end (SIGQUIT).
	Drain <-chan struct{}
	// Abort, once closed, cuts every remaining step of a running job short:
	// after_script, the cache upload and the cleanup are not waited for (a second
	// stop signal). The job ends canceled, or failed if it was not canceled.
	Abort <-chan struct{}
}

// ErrNotStarted is the cause of a job that a drain kept from starting.
var ErrNotStarted = errors.New("not started: the runner is stopping and starts no new jobs")

// ErrAborted is the cause of a step cut short by Stops.Abort.
var ErrAborted = errors.New("aborted: the runner is stopping without waiting for its jobs")

// JobResult is how one job of the pipeline ended.
type JobResult struct {
	Name, Stage string
	State       State
	Result      executors.Result
	InstanceID  string
	Attempts    int
	LogPath     string
	Reason      string // why it was skipped or not started
	Waited      time.Duration
}

// Summary is how the pipeline ended.
type Summary struct {
	Jobs []JobResult
	// Passed is false if any job failed without allow_failure, or was cancelled.
	Passed   bool
	Duration time.Duration
}

// Run runs plan and returns when every job has ended or been skipped. Cancelling ctx
// cancels the running jobs (their after_script and cleanup still run).
func (r *Runner) Run(ctx context.Context, plan *pipeline.Plan) (Summary, error) {
	if err := os.MkdirAll(r.LogDir, 0o755); err != nil {
		return Summary{}, fmt.Errorf("create log directory: %w", err)
	}
	start := time.Now()
	for _, j := range plan.Jobs {
		r.followWidth = max(r.followWidth, len(j.Name))
	}
	done := map[string]chan struct{}{}
	results := map[string]*JobResult{}
	for _, j := range plan.Jobs {
		done[j.Name] = make(chan struct{})
		results[j.Name] = &JobResult{Name: j.Name, Stage: j.Stage, State: StatePending}
		r.report(j.Name, StatePending, "")
	}
	var sem chan struct{}
	if r.Concurrent > 0 {
		sem = make(chan struct{}, r.Concurrent)
	}
	var wg sync.WaitGroup
	for i, j := range plan.Jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[j.Name])
			res := results[j.Name]
			var outcomes []pipeline.Outcome
			for _, d := range plan.Deps[j.Name] {
				<-done[d]
				outcomes = append(outcomes, outcome(results[d]))
			}
			if ctx.Err() != nil {
				res.State, res.Reason = StateCancelled, "pipeline cancelled"
				r.report(j.Name, res.State, res.Reason)
				return
			}
			if closed(r.Stops.Drain) {
				res.State, res.Reason = StateCancelled, ErrNotStarted.Error()
				r.report(j.Name, res.State, res.Reason)
				return
			}
			if !pipeline.ShouldRun(j, outcomes) {
				res.State, res.Reason = StateSkipped, "when: "+j.When+" and the jobs it depends on did not allow it"
				r.report(j.Name, res.State, res.Reason)
				return
			}
			if sem != nil {
				select {
				case sem <- struct{}{}:
					defer func() { <-sem }()
				case <-ctx.Done():
					res.State, res.Reason = StateCancelled, "pipeline cancelled"
					r.report(j.Name, res.State, res.Reason)
					return
				case <-r.Stops.Drain:
					res.State, res.Reason = StateCancelled, ErrNotStarted.Error()
					r.report(j.Name, res.State, res.Reason)
					return
				}
			}
			r.runJob(ctx, j, strconv.Itoa(i+1), res)
		}()
	}
	wg.Wait()
	sum := Summary{Passed: true, Duration: time.Since(start)}
	for _, j := range plan.Jobs {
		res := *results[j.Name]
		if res.State == StateFailed || res.State == StateCancelled {
			sum.Passed = false
		}
		sum.Jobs = append(sum.Jobs, res)
	}
	for _, s := range plan.Skipped {
		sum.Jobs = append(sum.Jobs, JobResult{Name: s.Name, State: StateSkipped, Reason: s.Reason})
	}
	return sum, nil
}

// closed reports whether ch is closed (false for nil).
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func outcome(r *JobResult) pipeline.Outcome {
	switch r.State {
	case StatePassed:
		return pipeline.Succeeded
	case StateAllowed:
		return pipeline.FailedAllowed
	case StateFailed:
		return pipeline.Failed
	}
	return pipeline.NotRun
}

func (r *Runner) report(job string, s State, detail string) {
	if r.Progress != nil {
		r.Progress.JobState(job, s, detail)
	}
}

// maxAttempts: a job that failed because of the infrastructure is tried once more.
const maxAttempts = 2

func (r *Runner) runJob(ctx context.Context, pj *pipeline.Job, id string, res *JobResult) {
	job := pj.Job
	job.ID = id
	res.LogPath = filepath.Join(r.LogDir, logName(pj.Name))
	logFile, err := os.Create(res.LogPath)
	if err != nil {
		res.State, res.Reason = StateFailed, fmt.Sprintf("create log file: %v", err)
		r.report(pj.Name, res.State, res.Reason)
		return
	}
	defer logFile.Close()
	var log io.Writer = logFile
	if r.Follow != nil {
		fw := &followWriter{mu: &r.followMu, out: r.Follow, prefix: fmt.Sprintf("%-*s │ ", r.followWidth, pj.Name)}
		defer fw.flush()
		log = io.MultiWriter(logFile, fw)
	}
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		res.Attempts = attempt
		result, instance, waited := r.attempt(ctx, &job, attempt, log)
		res.Result, res.InstanceID, res.Waited = result, instance, res.Waited+waited
		// A retry is for a job whose instance failed under it. One that got no slot
		// has already waited out instance_acquire_timeout for one: waiting as long
		// again would only double the wait. And a drain or an abort hands out no slot.
		if result.SystemFailure() && instance != "" && attempt < maxAttempts && ctx.Err() == nil && !closed(r.Stops.Drain) && !closed(r.Stops.Abort) {
			r.report(pj.Name, StateRetrying, fmt.Sprintf("system failure on %s: %v; retrying on a new slot", instance, result.Err))
			fmt.Fprintf(log, "\n--- system failure; retrying the job on a new slot (attempt %d of %d) ---\n\n", attempt+1, maxAttempts)
			continue
		}
		break
	}
	switch {
	case res.Result.Status == executors.StatusSuccess:
		res.State = StatePassed
	case res.Result.Status == executors.StatusCanceled:
		res.State = StateCancelled
	case res.Result.AllowedFailure:
		res.State = StateAllowed
	default:
		res.State = StateFailed
	}
	r.report(pj.Name, res.State, describe(res))
}

func logName(job string) string {
	safe := []rune(job)
	for i, c := range safe {
		if c == '/' || c == ':' || c == ' ' || c == os.PathSeparator {
			safe[i] = '_'
		}
	}
	return string(safe) + ".log"
}

func describe(res *JobResult) string {
	r := res.Result
	d := r.Duration.Round(10 * time.Millisecond).String()
	if res.InstanceID != "" {
		d += " on " + res.InstanceID
	}
	switch {
	case r.FailureReason == executors.ScriptFailure:
		return fmt.Sprintf("exit code %d, %s", r.ExitCode, d)
	case r.FailureReason != "":
		msg := string(r.FailureReason)
		if r.Err != nil {
			msg += ": " + r.Err.Error()
		}
		return msg
	}
	return d
}

// Why says why a job that did not pass ended as it did: its failure reason (as
// GitLab names it: script_failure, runner_system_failure, …) and the error behind it,
// or why it was skipped or not started; "" for a passed job.
func (j JobResult) Why() string {
	switch j.State {
	case StatePassed, StatePending, StateRunning, StateWaiting, StateRetrying:
		return ""
	case StateSkipped:
		return j.Reason
	}
	if j.Attempts == 0 {
		return j.Reason
	}
	r := j.Result
	switch {
	case r.FailureReason == executors.ScriptFailure:
		return fmt.Sprintf("%s: exit code %d", r.FailureReason, r.ExitCode)
	case r.FailureReason != "" && r.Err != nil:
		return fmt.Sprintf("%s: %v", r.FailureReason, r.Err)
	case r.FailureReason != "":
		return string(r.FailureReason)
	case r.Err != nil:
		return r.Err.Error()
	}
	return j.Reason
}

// attempt gets a slot, runs the job once on it and releases it.
func (r *Runner) attempt(ctx context.Context, job *jobs.Job, attempt int, log io.Writer) (executors.Result, string, time.Duration) {
	key := fmt.Sprintf("exec-%s-%s-%d", job.ID, job.Name, attempt)
	r.report(job.Name, StateWaiting, "")
	waitStart := time.Now()
	var waited time.Duration
	res, inst := RunOnSlot(ctx, r.Stops, r.Pool, r.NewEnv, job, key, log, r.Options, func(slot Slot) {
		waited = time.Since(waitStart)
		r.report(job.Name, StateRunning, fmt.Sprintf("on %s slot %d (waited %s)", slot.InstanceID(), slot.Slot(), waited.Round(10*time.Millisecond)))
	})
	if inst == "" {
		waited = time.Since(waitStart)
	}
	return res, inst, waited
}

// RunOnSlot acquires the slot for key (a reservation made with that key is used),
// runs job once on it, writing the log to log, and releases the slot. It returns the
// result and the instance the job ran on ("" if no slot was acquired). onSlot, if set,
// is called once the slot is held. A slot that cannot be had, an environment that
// cannot be built, and an instance that vanishes under the job are system failures;
// only ctx cancellation cancels the job. stops.Drain ends the wait for a slot (the job
// ends canceled, not started) and stops.Abort cuts the job's steps short. Both
// `runner exec` and `runner run` use it.
func RunOnSlot(ctx context.Context, stops Stops, pool Pool, newEnv EnvFactory, job *jobs.Job, key string, log io.Writer,
	opts executors.RunOptions, onSlot func(Slot)) (executors.Result, string) {
	actx, stopAcquire := context.WithCancelCause(ctx)
	defer stopAcquire(nil)
	for _, ch := range []<-chan struct{}{stops.Drain, stops.Abort} {
		if ch != nil {
			stop := afterClose(ch, func() { stopAcquire(ErrNotStarted) })
			defer stop()
		}
	}
	slot, err := pool.Acquire(actx, key)
	if err != nil {
		status := executors.StatusFailed
		if actx.Err() != nil {
			status = executors.StatusCanceled
			if cause := context.Cause(actx); errors.Is(cause, ErrNotStarted) {
				err = cause
			}
		}
		fmt.Fprintf(log, "ERROR: Preparation failed: %v\n", err)
		return executors.Result{Status: status, FailureReason: executors.RunnerSystemFailure, ExitCode: -1, Err: err}, ""
	}
	defer pool.Release(key)
	if onSlot != nil {
		onSlot(slot)
	}
	// The job's steps run to their end although ctx is cancelled (that is how
	// after_script and the cleanup run after a cancel), unless the slot's instance
	// vanishes (a system failure, not a cancellation, which only the user's ctx means)
	// or the run is aborted.
	base, abort := context.WithCancelCause(context.WithoutCancel(ctx))
	defer abort(nil)
	if stops.Abort != nil {
		stop := afterClose(stops.Abort, func() { abort(ErrAborted) })
		defer stop()
	}
	slotCtx, cancel := slot.WithContext(base)
	defer cancel()
	env, err := newEnv(slotCtx, job, slot)
	if err != nil {
		fmt.Fprintf(log, "ERROR: Preparation failed: %v\n", err)
		return executors.Result{Status: executors.StatusFailed, FailureReason: executors.RunnerSystemFailure, ExitCode: -1, Err: err}, slot.InstanceID()
	}
	opts.InstanceID = slot.InstanceID()
	return executors.Run(ctx, job, slotBound{env, slotCtx}, log, opts), slot.InstanceID()
}

// afterClose calls f once ch is closed, unless the returned stop is called first.
func afterClose(ch <-chan struct{}, f func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-ch:
			f()
		case <-done:
		}
	}()
	return func() { close(done) }
}

// slotBound makes an environment's steps end when the slot's instance disappears or
// the run is aborted.
type slotBound struct {
	executors.Env
	slotCtx context.Context
}

func (s slotBound) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	child, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.slotCtx, func() { cancel(s.cause()) })
	return child, func() { stop(); cancel(context.Canceled) }
}

// cause says why the slot's context ended: an abort, or the instance was lost.
func (s slotBound) cause() error {
	cause := context.Cause(s.slotCtx)
	if errors.Is(cause, ErrAborted) {
		return cause
	}
	return errors.Join(errors.New("instance lost"), cause)
}

func (s slotBound) Prepare(ctx context.Context, log io.Writer) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	return s.Env.Prepare(ctx, log)
}

func (s slotBound) Exec(ctx context.Context, script executors.Script, out io.Writer) (int, error) {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	code, err := s.Env.Exec(ctx, script, out)
	if err == nil && s.slotCtx.Err() != nil {
		err = s.cause()
	}
	return code, err
}

func (s slotBound) Cleanup(ctx context.Context) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	return s.Env.Cleanup(ctx)
}

func (s slotBound) Pack(ctx context.Context, paths []string, archive, messages io.Writer) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	return s.Env.Pack(ctx, paths, archive, messages)
}

func (s slotBound) Unpack(ctx context.Context, r io.Reader) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	return s.Env.Unpack(ctx, r)
}
