// Package executors runs a jobs.Job on an acquired instance. The shared job runtime in
// this package owns what every executor does the same way: predefined CI_* variables,
// before_script+script in one shell and after_script in its own with its own timeout,
// the job timeout and cancellation, masking, the timestamped and sectioned log, and the
// classification of how a job ended with GitLab's failure_reason names. An executor
// (instance, dockerautoscaler) only provides an Env: how to prepare, run a script in,
// and clean up the job's environment.
package executors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// Env is the job environment an executor provides on one instance.
type Env interface {
	// Prepare gets the environment ready: the source in place, the image pulled, the
	// container created. Its log lines go to log.
	Prepare(ctx context.Context, log io.Writer) error
	// Exec runs script with the job's shell and returns its exit code. An error means
	// the script could not be run to completion (connection lost, instance gone), not
	// that it failed.
	Exec(ctx context.Context, script Script, output io.Writer) (int, error)
	// Cleanup removes what Prepare made. It is called with a fresh context even after
	// cancellation, so containers and volumes never outlive a cancelled job.
	Cleanup(ctx context.Context) error
	// Paths returns where the project and file variables live in the environment.
	Paths() Paths
	// Pack writes a gzip tar of spec's files (paths relative to the project
	// directory, shell globs allowed, and with Untracked the files Git does not track)
	// to archive, and a line for each path that matches nothing to messages. It writes
	// no archive when nothing matches. PackScript is the shell side of it.
	Pack(ctx context.Context, spec PackSpec, archive, messages io.Writer) error
	// Unpack extracts a gzip tar into the project directory.
	Unpack(ctx context.Context, r io.Reader) error
}

// PackSpec says what Pack collects.
type PackSpec struct {
	Paths []string
	// Untracked adds the files `git ls-files --others` lists in the project directory.
	Untracked bool
}

// Paths are the directories of a job inside its environment.
type Paths struct {
	BuildsDir  string
	ProjectDir string
	TmpDir     string
}

// Status is how a job ended.
type Status string

// Statuses, as GitLab names them.
const (
	StatusSuccess  Status = "success"
	StatusFailed   Status = "failed"
	StatusCanceled Status = "canceled"
)

// FailureReason is GitLab's failure_reason for a failed job.
type FailureReason string

// Failure reasons, with GitLab's names.
const (
	ScriptFailure       FailureReason = "script_failure"
	JobExecutionTimeout FailureReason = "job_execution_timeout"
	RunnerSystemFailure FailureReason = "runner_system_failure"
	UnknownFailure      FailureReason = "unknown_failure"
	ImagePullFailure    FailureReason = "image_pull_failure"
	// MissingDependencyFailure: an earlier job's artifacts the job depends on are gone.
	MissingDependencyFailure FailureReason = "missing_dependency_failure"
	NoFailure                FailureReason = ""
	defaultJobTimeout                      = time.Hour
	defaultCleanupBudget                   = time.Minute
)

// Result is the outcome of a job.
type Result struct {
	Status        Status
	FailureReason FailureReason
	// ExitCode is the script's exit code; -1 when it did not run to the end.
	ExitCode int
	// Err explains a failure that was not the script's own (timeout, system failure).
	Err error
	// AllowedFailure: failed, but allow_failure lets the pipeline pass.
	AllowedFailure bool
	Duration       time.Duration
}

// SystemFailure reports whether the job failed because of the infrastructure, the only
// class that is retried automatically.
func (r Result) SystemFailure() bool { return r.FailureReason == RunnerSystemFailure }

// ErrImagePull marks Prepare errors caused by an image that could not be pulled or is
// not allowed; the job then fails with image_pull_failure rather than system failure.
var ErrImagePull = errors.New("image pull failed")

// ErrRefused marks Prepare errors caused by a job setting the runner's configuration
// does not allow (a user outside allowed_users): the job fails with script_failure,
// as a failure of the job's own making, and is not retried on another instance.
var ErrRefused = errors.New("refused by the runner's configuration")

// RunOptions are the host-side facts the runtime adds to a job.
type RunOptions struct {
	// RunnerName, RunnerVersion and Executor describe this host in the log and CI_RUNNER_*.
	RunnerName    string
	RunnerVersion string
	Executor      string
	// InstanceID is the instance the job runs on, for the log.
	InstanceID string
	// DefaultTimeout applies when the job sets none (1h when zero).
	DefaultTimeout time.Duration
	// CacheDir holds the job caches on the runner host, one archive per key; "" turns
	// caching off unless SharedCache is set.
	CacheDir string
	// SharedCache keeps the job caches in object storage instead ([runners.cache]).
	SharedCache *SharedCache
	// Artifacts receives the artifacts the job collects after its script; nil: none
	// are collected.
	Artifacts ArtifactStore
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// OnStage, if set, is told each build stage of the job as it starts (the job log's
	// section names: prepare_executor, which gets the sources too, restore_cache,
	// download_artifacts, step_script, after_script, archive_cache,
	// upload_artifacts_on_success or _on_failure).
	OnStage func(stage string)
}

// PredefinedVariables returns the CI_* variables a job sees before its own variables.
func PredefinedVariables(job *jobs.Job, paths Paths, opts RunOptions, timeout time.Duration) jobs.Variables {
	v := jobs.Variables{
		{Key: "CI", Value: "true"}, {Key: "GITLAB_CI", Value: "true"}, {Key: "CI_SERVER", Value: "yes"},
		{Key: "CI_JOB_ID", Value: job.ID}, {Key: "CI_JOB_NAME", Value: job.Name}, {Key: "CI_JOB_STAGE", Value: job.Stage},
		{Key: "CI_JOB_TIMEOUT", Value: strconv.Itoa(int(timeout.Seconds()))},
		{Key: "CI_BUILDS_DIR", Value: paths.BuildsDir}, {Key: "CI_PROJECT_DIR", Value: paths.ProjectDir},
		{Key: "CI_RUNNER_DESCRIPTION", Value: opts.RunnerName}, {Key: "CI_RUNNER_VERSION", Value: opts.RunnerVersion},
		{Key: "CI_RUNNER_EXECUTABLE_ARCH", Value: "linux/amd64"}, {Key: "CI_EXECUTOR", Value: opts.Executor},
	}
	if job.Source.SHA != "" {
		v = append(v, jobs.Variable{Key: "CI_COMMIT_SHA", Value: job.Source.SHA},
			jobs.Variable{Key: "CI_COMMIT_SHORT_SHA", Value: job.Source.SHA[:min(8, len(job.Source.SHA))]})
	}
	if job.Source.Ref != "" {
		v = append(v, jobs.Variable{Key: "CI_COMMIT_REF_NAME", Value: job.Source.Ref})
	}
	if job.Source.RepoURL != "" {
		v = append(v, jobs.Variable{Key: "CI_REPOSITORY_URL", Value: job.Source.RepoURL})
	}
	return v
}

// Run runs job in env, writing the log to out, and says how it ended. ctx cancellation
// cancels the job (status canceled); the job timeout fails it (job_execution_timeout).
func Run(ctx context.Context, job *jobs.Job, env Env, out io.Writer, opts RunOptions) Result {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	start := now()
	mask := NewMaskWriter(out, job.Variables.MaskedValues())
	defer mask.Close()
	trace := NewTrace(mask, now)
	trace.OnSection = opts.OnStage
	timeout := job.Timeout
	if timeout == 0 {
		timeout = opts.DefaultTimeout
	}
	if timeout == 0 {
		timeout = defaultJobTimeout
	}
	res := Result{ExitCode: -1}
	finish := func(r Result) Result {
		r.Duration = now().Sub(start)
		switch r.Status {
		case StatusSuccess:
			trace.Infof("Job succeeded")
		case StatusCanceled:
			trace.Errorf("Job canceled")
		default:
			if r.AllowedFailure = job.AllowFailure && allowedExit(job, r); r.AllowedFailure {
				trace.Warnf("Job failed (allowed to fail): %s", describe(r))
			} else {
				trace.Errorf("Job failed%s: %s", systemTag(r), describe(r))
			}
		}
		return r
	}

	trace.Infof("Running with %s %s", nonEmpty(opts.RunnerName, "flotilla"), opts.RunnerVersion)
	jobCtx, cancelJob := context.WithTimeoutCause(ctx, timeout, errTimeout{timeout})
	defer cancelJob()

	prepErr := trace.Section("prepare_executor", fmt.Sprintf("Preparing the %q executor", opts.Executor), false, func() error {
		if opts.InstanceID != "" {
			trace.Infof("Running on instance %s", opts.InstanceID)
		}
		return env.Prepare(jobCtx, trace)
	})
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), defaultCleanupBudget)
		defer cancel()
		if err := env.Cleanup(cctx); err != nil {
			trace.Warnf("cleanup: %v", err)
		}
	}()
	if prepErr != nil {
		res = classify(ctx, jobCtx, -1, prepErr)
		if errors.Is(prepErr, ErrImagePull) && res.Status == StatusFailed {
			res.FailureReason = ImagePullFailure
		}
		if (errors.Is(prepErr, ErrGetSources) || errors.Is(prepErr, ErrRefused)) && res.Status == StatusFailed && res.FailureReason == RunnerSystemFailure {
			res.FailureReason = ScriptFailure
		}
		return finish(res)
	}

	paths := env.Paths()
	vars := append(PredefinedVariables(job, paths, opts, timeout), job.Variables...).Expanded()
	script := Script{Dir: paths.ProjectDir, FileVarDir: paths.TmpDir, Variables: vars, Commands: job.Script}
	caches := newCacheStore(opts.CacheDir, opts.SharedCache, timeout, job, vars)
	if caches.wanted(func(c jobs.Cache) bool { return c.Pulls() }) {
		_ = trace.Section("restore_cache", "Restoring cache", true, func() error {
			caches.restore(jobCtx, env, trace)
			return nil
		})
	}
	if len(job.Dependencies) > 0 {
		var depErr error
		_ = trace.Section("download_artifacts", "Downloading artifacts", false, func() error {
			depErr = restoreDependencies(jobCtx, env, job.Dependencies, trace)
			return nil
		})
		if depErr != nil {
			res = classify(ctx, jobCtx, -1, depErr)
			if errors.Is(depErr, jobs.ErrMissingDependency) && res.Status == StatusFailed {
				res.FailureReason = MissingDependencyFailure
			}
			return finish(res)
		}
	}
	_ = trace.Section("step_script", "Executing \"step_script\" stage of the job script", false, func() error {
		code, err := env.Exec(jobCtx, script, trace)
		res = classify(ctx, jobCtx, code, err)
		return nil
	})

	if len(job.AfterScript) > 0 {
		afterTimeout := job.AfterScriptTimeout
		if afterTimeout == 0 {
			afterTimeout = jobs.DefaultAfterScriptTimeout
		}
		// after_script runs whatever happened, also after a cancel or a timeout, in its
		// own shell with its own time budget.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), afterTimeout)
		defer cancel()
		after := script
		after.Commands = job.AfterScript
		after.Variables = append(vars[:len(vars):len(vars)], jobs.Variable{Key: "CI_JOB_STATUS", Value: string(res.Status)})
		_ = trace.Section("after_script", "Running after_script", false, func() error {
			code, err := env.Exec(actx, after, trace)
			switch {
			case err != nil:
				trace.Warnf("after_script failed: %v", err)
			case code != 0:
				trace.Warnf("after_script failed with exit code %d", code)
			}
			return nil
		})
	}
	if caches.wanted(func(c jobs.Cache) bool { return c.Pushes(res.Status == StatusSuccess) }) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jobs.DefaultAfterScriptTimeout)
		defer cancel()
		_ = trace.Section("archive_cache", "Saving cache", true, func() error {
			caches.save(cctx, env, res.Status == StatusSuccess, trace)
			return nil
		})
	}
	if opts.Artifacts != nil {
		collectArtifacts(ctx, env, job, res.Status == StatusSuccess, opts.Artifacts, trace)
	}
	return finish(res)
}

type errTimeout struct{ d time.Duration }

func (e errTimeout) Error() string {
	return fmt.Sprintf("execution took longer than %s", e.d)
}

// classify decides how a step ended from its exit code, its error and the contexts.
func classify(parent, jobCtx context.Context, code int, err error) Result {
	switch {
	case parent.Err() != nil:
		return Result{Status: StatusCanceled, ExitCode: code, Err: context.Cause(parent)}
	case jobCtx.Err() != nil:
		return Result{Status: StatusFailed, FailureReason: JobExecutionTimeout, ExitCode: code, Err: context.Cause(jobCtx)}
	case err != nil:
		return Result{Status: StatusFailed, FailureReason: RunnerSystemFailure, ExitCode: code, Err: err}
	case code != 0:
		return Result{Status: StatusFailed, FailureReason: ScriptFailure, ExitCode: code}
	}
	return Result{Status: StatusSuccess, ExitCode: 0}
}

func allowedExit(job *jobs.Job, r Result) bool {
	if len(job.AllowFailureExitCodes) == 0 {
		return true
	}
	for _, c := range job.AllowFailureExitCodes {
		if c == r.ExitCode && r.FailureReason == ScriptFailure {
			return true
		}
	}
	return false
}

func describe(r Result) string {
	if r.FailureReason == ScriptFailure && r.Err == nil {
		return fmt.Sprintf("exit code %d", r.ExitCode)
	}
	if r.Err != nil {
		return r.Err.Error()
	}
	return string(r.FailureReason)
}

func systemTag(r Result) string {
	if r.FailureReason == RunnerSystemFailure {
		return " (system failure)"
	}
	return ""
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
