// Package pipelinerun is the .gitlab-ci.yml DAG scheduler of `runner exec`: it runs a
// planned pipeline on a pool, starting every job whose dependencies allow it (the pool
// runs it on a slot: see package pool); independent jobs run concurrently. A failed
// job is retried as its retry: says; one whose instance failed under it (a system
// failure) is retried once on a new slot in any case. Progress is reported as it happens, and every
// job's full log is kept in a file.
package pipelinerun

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
	"github.com/flotilla-ci/flotilla/host/pool"
)

// JobRunner runs one job on a slot of the pool: *pool.Pool, or pool.Jobs over a
// scaler and an environment factory of the caller's.
type JobRunner interface {
	Run(ctx context.Context, job *jobs.Job, key string, log io.Writer, o pool.RunOptions) (executors.Result, string)
}

// State is where a job is in its life.
type State string

// Job states reported to Progress.
const (
	StatePending  State = "pending"
	StateWaiting  State = "waiting for an instance"
	StateRunning  State = "running"
	StateRetrying State = "retrying"
	StatePassed   State = "passed"
	StateFailed   State = "failed"
	StateAllowed  State = "failed (allowed)"
	StateSkipped  State = "skipped"
	StateCanceled State = "canceled"
)

// Progress receives job state changes as they happen, from the jobs' goroutines:
// implementations must be safe for concurrent use.
type Progress interface {
	JobState(job string, state State, detail string)
}

// Runner runs pipelines on a pool.
type Runner struct {
	Pool JobRunner
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
	// a drain and an abort (see pool.Stops).
	Stops pool.Stops
	// Children, if set, lets trigger jobs run their child pipelines (child.go);
	// without it a trigger job fails.
	Children *Children

	followMu    sync.Mutex
	followWidth int // the longest job name of the plan, to align the prefixes
	// root is the Runner of the top pipeline when this one runs a child pipeline:
	// the child shares its concurrent bound, job IDs and log stream; prefix names
	// the child's jobs ("deploy › ") in progress and the log stream.
	root   *Runner
	prefix string
	// parent is the run of the parent pipeline when this one runs a child
	// pipeline: its jobs' artifacts are what needs:pipeline:job gets.
	parent *parentRun
	sem    chan struct{}
	lastID atomic.Int64
}

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
	// Coverage is the number coverage: found in the job's log, "" without one.
	Coverage string
	// Artifacts is the job's artifacts archive in the run's directory, "" without
	// one; Reports are its report files there.
	Artifacts string
	Reports   []string

	// Parent is the trigger job whose child pipeline the job is in ("deploy", or
	// "deploy › docs" for a grandchild), "" for the pipeline's own jobs.
	Parent string

	id     string
	dotenv jobs.Variables // the dotenv report's variables, for the jobs that get its artifacts
	child  *Summary       // a trigger job's child pipeline
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
		r.followWidth = max(r.followWidth, utf8.RuneCountInString(r.prefix+j.Name))
	}
	root := r.rootRunner()
	// Job IDs (CI_JOB_ID) are unique within the run, child pipelines' jobs included.
	firstID := root.lastID.Add(int64(len(plan.Jobs))) - int64(len(plan.Jobs)) + 1
	done := map[string]chan struct{}{}
	results := map[string]*JobResult{}
	for _, j := range plan.Jobs {
		done[j.Name] = make(chan struct{})
		results[j.Name] = &JobResult{Name: j.Name, Stage: j.Stage, State: StatePending}
		r.report(j.Name, StatePending, "")
	}
	// One bound for the jobs of the pipeline and of its child pipelines.
	if root.sem == nil && root.Concurrent > 0 {
		root.sem = make(chan struct{}, root.Concurrent)
	}
	sem := root.sem
	// groups holds a one-slot semaphore per resource_group: its jobs run one at a time.
	groups := map[string]chan struct{}{}
	for _, j := range plan.Jobs {
		if g := j.ResourceGroup; g != "" && groups[g] == nil {
			groups[g] = make(chan struct{}, 1)
		}
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
				res.State, res.Reason = StateCanceled, "pipeline cancelled"
				r.report(j.Name, res.State, res.Reason)
				return
			}
			if closed(r.Stops.Drain) {
				res.State, res.Reason = StateCanceled, pool.ErrNotStarted.Error()
				r.report(j.Name, res.State, res.Reason)
				return
			}
			if !pipeline.ShouldRun(j, outcomes) {
				res.State, res.Reason = StateSkipped, "when: "+j.When+" and the jobs it depends on did not allow it"
				r.report(j.Name, res.State, res.Reason)
				return
			}
			// The resource group first: a job waiting for its group holds no slot of
			// the concurrent bound.
			for _, s := range []chan struct{}{groups[j.ResourceGroup], sem} {
				if s == nil || (j.Trigger != nil && s == sem) {
					continue // a trigger job takes no slot: its child's jobs do
				}
				select {
				case s <- struct{}{}:
					defer func() { <-s }()
				case <-ctx.Done():
					res.State, res.Reason = StateCanceled, "pipeline cancelled"
					r.report(j.Name, res.State, res.Reason)
					return
				case <-r.Stops.Drain:
					res.State, res.Reason = StateCanceled, pool.ErrNotStarted.Error()
					r.report(j.Name, res.State, res.Reason)
					return
				}
			}
			// Reading the results of the jobs waited for is safe: their done channels
			// are closed.
			deps, dotenv := dependencies(plan.ArtifactSources(j), results)
			if len(j.ParentNeeds) > 0 {
				pdeps, pdotenv := r.parent.dependencies(j.ParentNeeds)
				deps, dotenv = append(deps, pdeps...), append(dotenv, pdotenv...)
			}
			if j.Trigger != nil {
				r.runTrigger(ctx, j, res, &wg, deps, dotenv, &parentRun{pipeline: plan.Pipeline, results: results, done: done})
				return
			}
			r.runJob(ctx, j, strconv.FormatInt(firstID+int64(i), 10), res, deps, dotenv)
		}()
	}
	wg.Wait()
	sum := Summary{Passed: true, Duration: time.Since(start)}
	for _, j := range plan.Jobs {
		res := *results[j.Name]
		if res.State == StateFailed || res.State == StateCanceled {
			sum.Passed = false
		}
		sum.Jobs = append(sum.Jobs, res)
		if res.child != nil {
			sum.Jobs = append(sum.Jobs, res.child.Jobs...)
		}
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
		r.Progress.JobState(r.prefix+job, s, detail)
	}
}

// runJob runs a job until it passes or may not be retried: retry: decides (its max,
// failure reasons and exit codes), and a job whose instance failed under it is run
// once more on a new slot in any case.
func (r *Runner) runJob(ctx context.Context, pj *pipeline.Job, id string, res *JobResult, deps []jobs.Dependency, dotenv jobs.Variables) {
	job := pj.Job
	job.ID, res.id = id, id
	job.Dependencies = deps
	// dotenv variables rank above the job's own, as in GitLab.
	job.Variables = append(job.Variables[:len(job.Variables):len(job.Variables)], dotenv...)
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
		fw := &followWriter{mu: &r.rootRunner().followMu, out: r.Follow, prefix: fmt.Sprintf("%-*s │ ", r.followWidth, r.prefix+pj.Name)}
		defer fw.flush()
		log = io.MultiWriter(logFile, fw)
	}
	for attempt := 1; ; attempt++ {
		res.Attempts = attempt
		store := &jobArtifacts{dir: filepath.Join(r.LogDir, ArtifactsDir), name: strings.TrimSuffix(logName(pj.Name), ".log")}
		result, instance, waited := r.attempt(ctx, &job, attempt, log, store)
		store.mu.Lock()
		res.Artifacts, res.Reports, res.dotenv = store.archive, store.reports, store.dotenv
		store.mu.Unlock()
		res.Result, res.InstanceID, res.Waited = result, instance, res.Waited+waited
		why, again := r.retry(ctx, pj, result, instance, attempt)
		if !again {
			break
		}
		r.report(pj.Name, StateRetrying, why)
		fmt.Fprintf(log, "\n--- %s (attempt %d) ---\n\n", why, attempt+1)
	}
	switch {
	case res.Result.Status == executors.StatusSuccess:
		res.State = StatePassed
	case res.Result.Status == executors.StatusCanceled:
		res.State = StateCanceled
	case res.Result.AllowedFailure:
		res.State = StateAllowed
	default:
		res.State = StateFailed
	}
	if pj.Coverage != nil && res.InstanceID != "" {
		res.Coverage = coverage(res.LogPath, pj.Coverage)
	}
	r.report(pj.Name, res.State, describe(res))
}

// retry decides whether a job that ended with result after attempt attempts is run
// again, and says why.
func (r *Runner) retry(ctx context.Context, pj *pipeline.Job, result executors.Result, instance string, attempt int) (string, bool) {
	if result.Status != executors.StatusFailed || ctx.Err() != nil || closed(r.Stops.Drain) || closed(r.Stops.Abort) {
		return "", false
	}
	if pj.Retry.Retries(attempt, string(result.FailureReason), result.ExitCode) {
		return fmt.Sprintf("%s; retry %d of %d (retry: %s)", result.FailureReason, attempt, pj.Retry.Max, pj.Retry), true
	}
	// A system failure is retried once whatever retry: says. Not for a job that got no
	// slot: it has already waited out instance_acquire_timeout for one, and waiting as
	// long again would only double the wait.
	if result.SystemFailure() && instance != "" && attempt == 1 {
		return fmt.Sprintf("system failure on %s: %v; retrying on a new slot", instance, result.Err), true
	}
	return "", false
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
	case r.FailureReason == executors.ScriptFailure && r.Err == nil:
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
	case r.FailureReason == executors.ScriptFailure && r.Err == nil:
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
func (r *Runner) attempt(ctx context.Context, job *jobs.Job, attempt int, log io.Writer, store executors.ArtifactStore) (executors.Result, string, time.Duration) {
	key := fmt.Sprintf("exec-%s-%s-%d", job.ID, job.Name, attempt)
	r.report(job.Name, StateWaiting, "")
	waitStart := time.Now()
	var waited time.Duration
	opts := r.Options
	opts.Artifacts = store
	res, inst := r.Pool.Run(ctx, job, key, log, pool.RunOptions{Stops: r.Stops, Runtime: opts, OnSlot: func(slot pool.Slot) {
		waited = time.Since(waitStart)
		r.report(job.Name, StateRunning, fmt.Sprintf("on %s slot %d (waited %s)", slot.InstanceID(), slot.Slot(), waited.Round(10*time.Millisecond)))
	}})
	if inst == "" {
		waited = time.Since(waitStart)
	}
	return res, inst, waited
}
