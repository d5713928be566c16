package metrics

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// families gathers reg by metric name.
func families(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// labelNames are the sorted label names of a family's first sample.
func labelNames(mf *dto.MetricFamily) []string {
	var out []string
	for _, lp := range mf.GetMetric()[0].GetLabel() {
		out = append(out, lp.GetName())
	}
	sort.Strings(out)
	return out
}

// value finds the sample whose labels include want.
func value(mf *dto.MetricFamily, want map[string]string) (float64, bool) {
	for _, m := range mf.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && got[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestRunnerCollector checks GitLab Runner's names and label sets, the idle series,
// and that a job moves through its stages (taken from its log's sections, also when
// a marker is split across writes) and is counted when it fails.
func TestRunnerCollector(t *testing.T) {
	r := NewRunner(BuildInfo{Name: "flotilla", Version: "1.2.3", Revision: "abc"})
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)
	r.SetConcurrent(4)
	r.SetEntry("abcd1234", "s_1", 2)
	r.SetRequests("abcd1234", "s_1", 1)
	r.RequestConcurrencyExceeded("abcd1234", "s_1")

	j := r.StartJob("abcd1234", "e2e", "s_1", "docker-autoscaler")
	if s, e := j.Stage(); s != "prepare_executor" || e != "docker_prepare" {
		t.Errorf("new job: stage %s/%s, want prepare_executor/docker_prepare", s, e)
	}
	j.SetStage("get_sources")
	if s, e := j.Stage(); s != "get_sources" || e != "docker_run" {
		t.Errorf("after get_sources: %s/%s", s, e)
	}
	j.SetStage("step_script")
	fams := families(t, reg)
	want := map[string][]string{
		"gitlab_runner_jobs":                               {"executor_stage", "runner", "stage", "state", "system_id"},
		"gitlab_runner_concurrent":                         nil,
		"gitlab_runner_limit":                              {"runner", "system_id"},
		"gitlab_runner_request_concurrency":                {"runner", "system_id"},
		"gitlab_runner_request_concurrency_exceeded_total": {"runner", "system_id"},
		"gitlab_runner_version_info":                       {"architecture", "branch", "built_at", "go_version", "name", "os", "revision", "version"},
		"gitlab_runner_jobs_total":                         {"runner", "system_id"},
		"gitlab_runner_errors_total":                       {"level"},
	}
	for name, labels := range want {
		mf := fams[name]
		if mf == nil {
			t.Errorf("%s missing", name)
			continue
		}
		if got := labelNames(mf); !slices.Equal(got, labels) {
			t.Errorf("%s labels %v, want %v", name, got, labels)
		}
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"gitlab_runner_concurrent", nil, 4},
		{"gitlab_runner_limit", map[string]string{"runner": "abcd1234", "system_id": "s_1"}, 2},
		{"gitlab_runner_request_concurrency", map[string]string{"runner": "abcd1234"}, 1},
		{"gitlab_runner_request_concurrency_exceeded_total", map[string]string{"runner": "abcd1234"}, 1},
		{"gitlab_runner_jobs", map[string]string{"state": "idle", "stage": "idle", "executor_stage": "idle"}, 0},
		{"gitlab_runner_jobs", map[string]string{"state": "running", "stage": "step_script", "executor_stage": "docker_run", "runner": "abcd1234", "system_id": "s_1"}, 1},
		{"gitlab_runner_jobs_total", map[string]string{"runner": "abcd1234", "system_id": "s_1"}, 1},
		{"gitlab_runner_version_info", map[string]string{"name": "flotilla", "version": "1.2.3", "revision": "abc"}, 1},
		{"gitlab_runner_errors_total", map[string]string{"level": "warning"}, 0},
	}
	for _, c := range checks {
		if v, ok := value(fams[c.name], c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}

	j.Finish("failed", "script_failure")
	j.Finish("failed", "script_failure") // once only
	r.StartJob("abcd1234", "e2e", "s_1", "instance").Finish("success", "")
	fams = families(t, reg)
	if v, _ := value(fams["gitlab_runner_jobs"], map[string]string{"state": "running"}); v != 0 {
		t.Errorf("finished jobs still running: %v", v)
	}
	if got := labelNames(fams["gitlab_runner_failed_jobs_total"]); !slices.Equal(got, []string{"failure_reason", "mode", "runner", "runner_name", "system_id"}) {
		t.Errorf("failed_jobs_total labels %v", got)
	}
	if v, _ := value(fams["gitlab_runner_failed_jobs_total"], map[string]string{"failure_reason": "script_failure", "runner": "abcd1234", "runner_name": "e2e"}); v != 1 {
		t.Errorf("failed_jobs_total = %v, want 1", v)
	}
	h := fams["gitlab_runner_job_duration_seconds"].GetMetric()[0].GetHistogram()
	var bounds []float64
	for _, b := range h.GetBucket() {
		bounds = append(bounds, b.GetUpperBound())
	}
	if h.GetSampleCount() != 2 || !slices.Equal(bounds, JobDurationBuckets) {
		t.Errorf("job_duration_seconds: %d samples, buckets %v", h.GetSampleCount(), bounds)
	}

	r.RemoveEntry("abcd1234", "s_1")
	if _, ok := value(families(t, reg)["gitlab_runner_limit"], nil); ok {
		t.Error("a removed entry still has its limit")
	}
}

// TestCountLogs: warnings and worse are counted by GitLab Runner's level names;
// records the level filters out are not.
func TestCountLogs(t *testing.T) {
	r := NewRunner(BuildInfo{})
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)
	log := slog.New(r.CountLogs(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError}))).With("runner", "x")
	log.Warn("filtered out")
	log.Error("one")
	log.WithGroup("g").Error("two")
	log.Info("not counted")
	fams := families(t, reg)
	for level, want := range map[string]float64{"warning": 0, "error": 2, "fatal": 0, "panic": 0} {
		if v, ok := value(fams["gitlab_runner_errors_total"], map[string]string{"level": level}); !ok || v != want {
			t.Errorf("errors_total{level=%s} = %v, want %v", level, v, want)
		}
	}
}

// TestAPITransport counts the runner API's calls by GitLab Runner's endpoint names
// and status; other calls are not counted.
func TestAPITransport(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/request"):
			w.WriteHeader(http.StatusNoContent)
		case strings.HasSuffix(r.URL.Path, "/trace"):
			w.WriteHeader(http.StatusAccepted)
		}
	}))
	defer srv.Close()
	r := NewRunner(BuildInfo{})
	reg := prometheus.NewRegistry()
	reg.MustRegister(r)
	c := &http.Client{Transport: r.APITransport(nil, "abcd1234", "s_1")}
	for _, call := range []struct{ method, path string }{
		{http.MethodPost, "/gitlab/api/v4/jobs/request"}, {http.MethodPost, "/gitlab/api/v4/jobs/request"},
		{http.MethodPut, "/api/v4/jobs/17"}, {http.MethodPatch, "/api/v4/jobs/17/trace"},
		{http.MethodPost, "/api/v4/runners/reset_authentication_token"},
		{http.MethodPost, "/api/v4/jobs/17/artifacts"}, {http.MethodGet, "/other"},
	} {
		req, _ := http.NewRequest(call.method, srv.URL+call.path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mf := families(t, reg)["gitlab_runner_api_request_statuses_total"]
	if got := labelNames(mf); !slices.Equal(got, []string{"endpoint", "method", "runner", "status", "system_id"}) {
		t.Errorf("labels %v", got)
	}
	for _, c := range []struct {
		endpoint, status, method string
		want                     float64
	}{{"request_job", "204", "post", 2}, {"update_job", "200", "put", 1}, {"patch_trace", "202", "patch", 1}, {"reset_token", "200", "post", 1}} {
		if v, _ := value(mf, map[string]string{"endpoint": c.endpoint, "status": c.status, "method": c.method, "runner": "abcd1234", "system_id": "s_1"}); v != c.want {
			t.Errorf("%s %s = %v, want %v", c.endpoint, c.status, v, c.want)
		}
	}
	if n := len(mf.GetMetric()); n != 4 {
		t.Errorf("%d series, want 4 (artifacts and other calls are not counted)", n)
	}
}
