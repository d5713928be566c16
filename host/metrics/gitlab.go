package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla-ci/flotilla/host/logging"
)

// JobDurationBuckets are GitLab Runner's buckets (seconds) of
// gitlab_runner_job_duration_seconds.
var JobDurationBuckets = []float64{30, 60, 300, 600, 1800, 3600, 7200, 10800, 18000, 36000}

// BuildInfo labels gitlab_runner_version_info.
type BuildInfo struct {
	Name, Version, Revision, Branch, BuiltAt string
}

var (
	jobsDesc = prometheus.NewDesc("gitlab_runner_jobs", "The current number of running builds.",
		[]string{"runner", "system_id", "state", "stage", "executor_stage"}, nil)
	concurrentDesc = prometheus.NewDesc("gitlab_runner_concurrent", "The current value of concurrent setting", nil, nil)
	limitDesc      = prometheus.NewDesc("gitlab_runner_limit", "The current value of limit setting",
		[]string{"runner", "system_id"}, nil)
	requestConcurrencyDesc = prometheus.NewDesc("gitlab_runner_request_concurrency",
		"The current number of concurrent requests for a new job", []string{"runner", "system_id"}, nil)
	requestExceededDesc = prometheus.NewDesc("gitlab_runner_request_concurrency_exceeded_total",
		"Count of excess requests above the configured request_concurrency limit", []string{"runner", "system_id"}, nil)
	errorsDesc = prometheus.NewDesc("gitlab_runner_errors_total", "The number of caught errors.", []string{"level"}, nil)
	failedDesc = prometheus.NewDesc("gitlab_runner_failed_jobs_total", "Total number of failed jobs",
		[]string{"runner", "runner_name", "system_id", "failure_reason", "mode"}, nil)
)

// errorLevels are the levels gitlab_runner_errors_total counts, always exported.
var errorLevels = []string{"panic", "fatal", "error", "warning"}

// Runner is the gitlab_runner_* collector of `runner run`: the names, labels and
// buckets of GitLab Runner, so that its dashboards and alerts work unchanged. The
// runner label is RunnerLabel of the entry's token. Register it once per process.
type Runner struct {
	version     *prometheus.GaugeVec
	jobsTotal   *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	apiStatuses *prometheus.CounterVec

	mu         sync.Mutex
	concurrent int
	entries    map[entryKey]*entry
	jobs       map[*Job]struct{}
	failures   map[failure]float64
	errors     map[string]float64
}

type entryKey struct{ runner, systemID string }

type entry struct {
	limit, requests int
	exceeded        float64
}

type failure struct{ runner, name, systemID, reason string }

// NewRunner returns the collector; info labels gitlab_runner_version_info (Go
// version, OS and architecture are this binary's).
func NewRunner(info BuildInfo) *Runner {
	r := &Runner{
		version: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "gitlab_runner_version_info",
			Help: "A metric with a constant '1' value labeled by different build stats fields."},
			[]string{"name", "version", "revision", "branch", "built_at", "go_version", "os", "architecture"}),
		jobsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gitlab_runner_jobs_total",
			Help: "Total number of handled jobs"}, []string{"runner", "system_id"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "gitlab_runner_job_duration_seconds",
			Help: "Histogram of job durations", Buckets: JobDurationBuckets}, []string{"runner", "system_id"}),
		apiStatuses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "gitlab_runner_api_request_statuses_total",
			Help: "The total number of API requests made by GitLab Runner, partitioned by runner, system_id, endpoint, status and method."},
			[]string{"runner", "system_id", "endpoint", "status", "method"}),
		entries:  map[entryKey]*entry{},
		jobs:     map[*Job]struct{}{},
		failures: map[failure]float64{},
		errors:   map[string]float64{},
	}
	r.version.WithLabelValues(info.Name, info.Version, info.Revision, info.Branch, info.BuiltAt,
		runtime.Version(), runtime.GOOS, runtime.GOARCH).Set(1)
	return r
}

// Describe implements prometheus.Collector.
func (r *Runner) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{jobsDesc, concurrentDesc, limitDesc, requestConcurrencyDesc,
		requestExceededDesc, errorsDesc, failedDesc} {
		ch <- d
	}
	r.version.Describe(ch)
	r.jobsTotal.Describe(ch)
	r.duration.Describe(ch)
	r.apiStatuses.Describe(ch)
}

type jobSeries struct{ runner, systemID, state, stage, executorStage string }

// Collect implements prometheus.Collector. As with any collector, a scrape is not a
// snapshot: the histogram and counters are read as the registry gets to them.
func (r *Runner) Collect(ch chan<- prometheus.Metric) {
	r.mu.Lock()
	ch <- prometheus.MustNewConstMetric(concurrentDesc, prometheus.GaugeValue, float64(r.concurrent))
	jobs := map[jobSeries]int{}
	for k, e := range r.entries {
		// As GitLab Runner does, an idle series keeps gitlab_runner_jobs present for
		// every runner entry while it runs nothing.
		jobs[jobSeries{k.runner, k.systemID, "idle", "idle", "idle"}] = 0
		ch <- prometheus.MustNewConstMetric(limitDesc, prometheus.GaugeValue, float64(e.limit), k.runner, k.systemID)
		ch <- prometheus.MustNewConstMetric(requestConcurrencyDesc, prometheus.GaugeValue, float64(e.requests), k.runner, k.systemID)
		ch <- prometheus.MustNewConstMetric(requestExceededDesc, prometheus.CounterValue, e.exceeded, k.runner, k.systemID)
	}
	for j := range r.jobs {
		j.mu.Lock()
		jobs[jobSeries{j.runner, j.systemID, "running", j.stage, j.executorStage}]++
		j.mu.Unlock()
	}
	for s, n := range jobs {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(n), s.runner, s.systemID, s.state, s.stage, s.executorStage)
	}
	for f, n := range r.failures {
		ch <- prometheus.MustNewConstMetric(failedDesc, prometheus.CounterValue, n, f.runner, f.name, f.systemID, f.reason, "traditional")
	}
	for _, l := range errorLevels {
		ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, r.errors[l], l)
	}
	r.mu.Unlock()
	r.version.Collect(ch)
	r.jobsTotal.Collect(ch)
	r.duration.Collect(ch)
	r.apiStatuses.Collect(ch)
}

// SetConcurrent publishes config.toml's concurrent.
func (r *Runner) SetConcurrent(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.concurrent = n
}

// SetEntry publishes a served [[runners]] entry and its limit (on start and reload).
func (r *Runner) SetEntry(runner, systemID string, limit int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entryLocked(runner, systemID).limit = limit
}

// RemoveEntry drops an entry no longer served from the limit, request and idle
// series; its counters are kept.
func (r *Runner) RemoveEntry(runner, systemID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.entries, entryKey{runner, systemID})
}

func (r *Runner) entryLocked(runner, systemID string) *entry {
	k := entryKey{runner, systemID}
	e := r.entries[k]
	if e == nil {
		e = &entry{}
		r.entries[k] = e
	}
	return e
}

// SetRequests publishes how many job requests of an entry are in flight.
func (r *Runner) SetRequests(runner, systemID string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entryLocked(runner, systemID).requests = n
}

// RequestConcurrencyExceeded counts a job request held back by request_concurrency.
func (r *Runner) RequestConcurrencyExceeded(runner, systemID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entryLocked(runner, systemID).exceeded++
}

// Job is one job GitLab gave the runner, from its receipt to its final state.
type Job struct {
	r                      *Runner
	runner, name, systemID string
	start                  time.Time
	docker                 bool
	mu                     sync.Mutex
	stage, executorStage   string
	finished               bool
}

// StartJob counts a job received for an entry (runner label and name) and shows
// it in gitlab_runner_jobs until Finish. executor names the executor, for the
// executor_stage label.
func (r *Runner) StartJob(runner, name, systemID, executor string) *Job {
	j := &Job{r: r, runner: runner, name: name, systemID: systemID, start: time.Now(),
		docker: strings.HasPrefix(executor, "docker"), stage: "prepare_executor"}
	j.executorStage = j.executorStageFor("prepare_executor")
	r.jobsTotal.WithLabelValues(runner, systemID).Inc()
	r.mu.Lock()
	r.jobs[j] = struct{}{}
	r.mu.Unlock()
	return j
}

// executorStageFor maps a job stage to GitLab Runner's executor stage: prepare
// (docker_prepare) while the executor is prepared, which includes waiting for a slot,
// then run (docker_run).
func (j *Job) executorStageFor(stage string) string {
	s := "run"
	if stage == "prepare_executor" {
		s = "prepare"
	}
	if j.docker {
		return "docker_" + s
	}
	return s
}

// SetStage sets the job's stage (GitLab Runner's build stage: prepare_executor,
// get_sources, step_script, after_script, …).
func (j *Job) SetStage(stage string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.finished {
		j.stage, j.executorStage = stage, j.executorStageFor(stage)
	}
}

// Stage returns the job's stage and executor stage.
func (j *Job) Stage() (stage, executorStage string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.stage, j.executorStage
}

// Finish ends the job with GitLab's final state and failure reason: it observes its
// duration and counts a failure.
func (j *Job) Finish(state, failureReason string) {
	j.mu.Lock()
	if j.finished {
		j.mu.Unlock()
		return
	}
	j.finished = true
	j.mu.Unlock()
	j.r.mu.Lock()
	delete(j.r.jobs, j)
	if state == "failed" {
		if failureReason == "" {
			failureReason = "unknown_failure"
		}
		j.r.failures[failure{j.runner, j.name, j.systemID, failureReason}]++
	}
	j.r.mu.Unlock()
	j.r.duration.WithLabelValues(j.runner, j.systemID).Observe(time.Since(j.start).Seconds())
}

// CountLogs wraps h so that every record it logs at warning level or above is counted
// in gitlab_runner_errors_total, as GitLab Runner counts its log lines.
func (r *Runner) CountLogs(h slog.Handler) slog.Handler { return countingHandler{r, h} }

type countingHandler struct {
	r *Runner
	slog.Handler
}

func (c countingHandler) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Level >= slog.LevelWarn {
		c.r.mu.Lock()
		c.r.errors[logging.LevelName(rec.Level)]++
		c.r.mu.Unlock()
	}
	return c.Handler.Handle(ctx, rec)
}

func (c countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return countingHandler{c.r, c.Handler.WithAttrs(as)}
}

func (c countingHandler) WithGroup(name string) slog.Handler {
	return countingHandler{c.r, c.Handler.WithGroup(name)}
}

// APITransport wraps next so that the GitLab API calls of one runner entry are
// counted in gitlab_runner_api_request_statuses_total, with GitLab Runner's endpoint
// names: request_job, update_job, patch_trace, reset_token. Other calls (artifacts,
// registration) are not counted, as there; nor are calls that got no answer.
func (r *Runner) APITransport(next http.RoundTripper, runner, systemID string) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return apiTransport{r, next, runner, systemID}
}

type apiTransport struct {
	r                *Runner
	next             http.RoundTripper
	runner, systemID string
}

func (t apiTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err == nil {
		if ep := apiEndpoint(req.Method, req.URL.Path); ep != "" {
			t.r.apiStatuses.WithLabelValues(t.runner, t.systemID, ep, strconv.Itoa(resp.StatusCode), strings.ToLower(req.Method)).Inc()
		}
	}
	return resp, err
}

// apiEndpoint names a call of the runner API (/api/v4/…) as GitLab Runner does.
func apiEndpoint(method, path string) string {
	i := strings.Index(path, "/api/v4/")
	if i < 0 {
		return ""
	}
	parts := strings.Split(strings.Trim(path[i+len("/api/v4/"):], "/"), "/")
	switch {
	case method == http.MethodPost && len(parts) == 2 && parts[0] == "jobs" && parts[1] == "request":
		return "request_job"
	case method == http.MethodPut && len(parts) == 2 && parts[0] == "jobs":
		return "update_job"
	case method == http.MethodPatch && len(parts) == 3 && parts[0] == "jobs" && parts[2] == "trace":
		return "patch_trace"
	case method == http.MethodPost && len(parts) == 2 && parts[0] == "runners" && parts[1] == "reset_authentication_token":
		return "reset_token"
	}
	return ""
}
