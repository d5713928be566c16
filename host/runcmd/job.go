package runcmd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/metrics"
	"github.com/flotilla-ci/flotilla/host/pool"
	"github.com/flotilla-ci/flotilla/host/version"
)

// Prometheus collectors of the GitLab side, in the default registry next to the
// taskscaler's: GitLab Runner's gitlab_runner_* and Flotilla's own flotilla_gitlab_*.
var (
	gitlabMetrics = metrics.NewRunner(metrics.BuildInfo{Name: "flotilla", Version: version.Version, Revision: version.Revision,
		Branch: version.Branch, BuiltAt: version.BuiltAt})
	requestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_gitlab_job_requests_total",
		Help: "Job requests by outcome: job, no_job, error, or no_capacity (no slot could be reserved, so GitLab was not asked).",
	}, []string{"runner", "result"})
	jobsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "flotilla_gitlab_jobs_total",
		Help: "Finished GitLab jobs by reported state and failure reason.",
	}, []string{"runner", "state", "failure_reason"})
	jobsRunning = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "flotilla_gitlab_jobs_running",
		Help: "GitLab jobs running now.",
	}, []string{"runner"})
)

func init() { prometheus.MustRegister(gitlabMetrics, requestsTotal, jobsTotal, jobsRunning) }

// cacheDir is where a runner entry's caches live on this host: its cache_dir (relative
// to config.toml), else cache/<runner name> next to config.toml.
func cacheDir(configPath string, r *config.Runner) string {
	base := filepath.Dir(configPath)
	if r.CacheDir != "" {
		if filepath.IsAbs(r.CacheDir) {
			return r.CacheDir
		}
		return filepath.Join(base, r.CacheDir)
	}
	name := r.Name
	if name == "" {
		name = "runner"
	}
	return filepath.Join(base, "cache", strings.Map(func(c rune) rune {
		if c == '/' || c == os.PathSeparator {
			return '_'
		}
		return c
	}, name))
}

// JobCanceledReason is sent as failure_reason for a job GitLab canceled (servers that
// do not list it get unknown_failure).
const JobCanceledReason = "job_canceled"

// runJob runs one job GitLab gave rs, streaming its log, and reports its final state
// until GitLab accepts it. key holds the job's slot reservation.
func (s *Service) runJob(rs *runnerState, cfg *config.Runner, key string, resp *gitlab.JobResponse) {
	received := time.Now()
	label := gitlab.ShortToken(cfg.Token)
	log := s.log.With("job", resp.ID, who(cfg))
	mjob := gitlabMetrics.StartJob(label, cfg.Name, s.systemID, cfg.Executor)
	jobsRunning.WithLabelValues(cfg.Name).Inc()
	defer jobsRunning.WithLabelValues(cfg.Name).Dec()
	job, convErr := resp.ToJob(cfg.CloneURL)
	if convErr != nil {
		job = &gitlab.Job{GitLabID: resp.ID, Token: resp.Token}
	}
	jobCtx, cancel := context.WithCancelCause(s.jobsCtx)
	defer cancel(nil)
	tr := rs.client.NewTrace(job, gitlab.TraceOptions{Interval: s.opts.TraceInterval, ForceSendInterval: s.opts.ForceSendInterval,
		Limit: cfg.OutputLimit * 1024, OnStop: cancel, Logger: log})
	// The uploader outlives a canceled job so the cancellation itself reaches the log.
	tr.Start(s.abortCtx)
	log.Info("job received", "name", job.Name, "repo_url", job.Source.RepoURL)
	rs.rec.JobReceived(resp.ID, cmp.Or(resp.JobInfo.Name, job.Name), received)

	if r, err := rs.client.UpdateJob(jobCtx, job.GitLabID, gitlab.UpdateRequest{Token: job.Token, State: "running"}); err != nil {
		log.Warn("reporting job running", "error", err)
	} else if r.Gone || r.Canceling {
		cancel(gitlab.ErrJobCanceled)
	}

	var res executors.Result
	if convErr != nil {
		rs.m.Unreserve(key)
		fmt.Fprintf(tr, "\x1b[31;1mERROR: Job failed: %v\x1b[0;m\n", convErr)
		res = executors.Result{Status: executors.StatusFailed, FailureReason: "runner_unsupported", ExitCode: -1, Err: convErr}
	} else {
		job.Variables = append(environment(cfg.Environment), job.Variables...)
		// pre_build_script and post_build_script run in the script's own shell, around
		// before_script+script, as GitLab Runner runs them.
		if cfg.PreBuildScript != "" {
			job.Script = append([]string{cfg.PreBuildScript}, job.Script...)
		}
		if cfg.PostBuildScript != "" {
			job.Script = append(job.Script, cfg.PostBuildScript)
		}
		o := pool.RunOptions{
			// Abort (a second stop signal) also cuts the job's after_script and cleanup short.
			Stops: pool.Stops{Abort: s.abortCtx.Done()},
			Runtime: executors.RunOptions{RunnerName: cfg.Name, RunnerVersion: version.Version, Executor: cfg.Executor,
				CacheDir: cacheDir(s.opts.ConfigPath, cfg), OnStage: mjob.SetStage},
			OnSlot: func(slot pool.Slot) { rs.rec.JobOnSlot(resp.ID, slot.InstanceID(), time.Now()) },
		}
		if cfg.HostCacheDisabled() {
			o.Runtime.CacheDir = ""
		}
		shared, err := rs.caches.forJob(jobCtx, cfg, resp.JobInfo.ProjectID)
		switch {
		case err != nil:
			fmt.Fprintf(tr, "\x1b[0;33mWARNING: [runners.cache] cannot be used, so caches stay on the runner host: %v\x1b[0;m\n", err)
		case shared != nil:
			o.Runtime.SharedCache = shared
		}
		if len(job.Artifacts) > 0 {
			o.Runtime.Artifacts = &gitlabArtifacts{client: rs.client, job: job}
		}
		// Earlier jobs' artifacts are downloaded with their own tokens before the script.
		job.Dependencies = rs.client.Dependencies(resp.Dependencies)
		res, _ = rs.m.Run(jobCtx, &job.Job, key, tr, o)
	}

	state, reason := finalState(res, context.Cause(jobCtx))
	rs.rec.JobFinished(resp.ID, pageState(state), job.Reason(reason), time.Now())
	if err := tr.Finish(s.abortCtx, s.backoff); err != nil {
		log.Warn("job log incomplete on GitLab", "error", err)
	}
	upd := gitlab.UpdateRequest{Token: job.Token, State: state, FailureReason: job.Reason(reason), Output: tr.Output()}
	if state == "failed" && res.ExitCode >= 0 {
		code := res.ExitCode
		upd.ExitCode = &code
	}
	err := s.report(rs.client, job, upd)
	mjob.Finish(state, upd.FailureReason)
	if err != nil {
		log.Error("final job state NOT reported", "state", state, "error", err)
		return
	}
	jobsTotal.WithLabelValues(cfg.Name, state, upd.FailureReason).Inc()
	log.Info("job finished", "state", state, "failure_reason", upd.FailureReason, "duration_s", res.Duration.Seconds())
}

// finalState maps a job result to GitLab's state and failure_reason.
func finalState(res executors.Result, cause error) (string, string) {
	switch res.Status {
	case executors.StatusSuccess:
		return "success", ""
	case executors.StatusCanceled:
		if errors.Is(cause, gitlab.ErrJobCanceled) || errors.Is(cause, gitlab.ErrJobGone) {
			return "failed", JobCanceledReason
		}
		// Canceled by this host (shutdown): the infrastructure's doing, retryable.
		return "failed", string(executors.RunnerSystemFailure)
	}
	reason := string(res.FailureReason)
	if reason == "" {
		reason = string(executors.UnknownFailure)
	}
	return "failed", reason
}

// report sends the final state until GitLab accepts it, the job is gone, or the
// service is aborted; network errors and 5xx are retried with back-off.
func (s *Service) report(c *gitlab.Client, job *gitlab.Job, upd gitlab.UpdateRequest) error {
	for attempt := 0; ; attempt++ {
		r, err := c.UpdateJob(s.abortCtx, job.GitLabID, upd)
		var wait time.Duration
		switch {
		case err == nil && r.Gone:
			return nil // already final on GitLab (canceled, or accepted earlier)
		case err == nil && r.RetryAfter > 0:
			wait = r.RetryAfter
		case err == nil:
			return nil
		case !gitlab.IsTemporary(err):
			return err
		default:
			wait = s.backoff(attempt)
			s.log.Warn("reporting final job state failed; retrying", "job", job.GitLabID, "error", err, "retry_in", wait.Round(time.Millisecond))
		}
		if !sleep(s.abortCtx, wait) {
			return fmt.Errorf("gave up: %w", s.abortCtx.Err())
		}
	}
}

// environment turns the runner's environment = ["K=V", …] into variables.
func environment(env []string) jobs.Variables {
	var out jobs.Variables
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		out = append(out, jobs.Variable{Key: k, Value: v})
	}
	return out
}
