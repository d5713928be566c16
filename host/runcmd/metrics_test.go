package runcmd

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// scrape reads /metrics as Prometheus does and parses it.
func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// sample is the value of the series of name whose labels include want (0 if none):
// gauges and counters by value, histograms by count.
func sample(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	var sum float64
	for _, m := range fams[name].GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && got[k] == v
		}
		if match {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

// TestGitLabRunnerMetrics scrapes /metrics of a running service taking jobs from the
// test GitLab: GitLab Runner's gitlab_runner_* names and labels are there next to
// fleeting_* and flotilla_*, and they move as a job runs, succeeds and fails.
func TestGitLabRunnerMetrics(t *testing.T) {
	e := start(t, 3, "  limit = 2\n")
	base := "http://" + e.svc.Addr()
	runner := gitlab.ShortToken(runnerToken)
	me := map[string]string{"runner": runner, "system_id": e.svc.systemID}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"runner": runner, "system_id": e.svc.systemID}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	before := scrape(t, base)

	gate := filepath.Join(t.TempDir(), "go-on")
	held := e.enqueue("held", []string{"echo held-started", fmt.Sprintf("while [ ! -e %q ]; do sleep 0.05; done", gate)}, nil)
	e.waitTrace(t, held, "held-started")
	during := scrape(t, base)
	if v := sample(during, "gitlab_runner_jobs", with("state", "running", "stage", "step_script", "executor_stage", "run")); v != 1 {
		t.Errorf("while the script runs: gitlab_runner_jobs{state=running,stage=step_script,executor_stage=run} = %v, want 1\n%v", v, during["gitlab_runner_jobs"])
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if j := e.wait(t, held); j.State != gitlabtest.Success {
		t.Fatalf("held job: %s\n%s", j.State, j.Trace)
	}
	failed := e.enqueue("fails", []string{"exit 3"}, nil)
	if j := e.wait(t, failed); j.State != gitlabtest.Failed {
		t.Fatalf("failing job: %s", j.State)
	}

	var after map[string]*dto.MetricFamily
	// The jobs' ends are counted after GitLab has their final state, and a request
	// that finds no job (204) follows once the queue is empty. A scrape is not a
	// snapshot, so wait for all of it.
	noJob := with("endpoint", "request_job", "status", "204")
	eventually.NoError(t, "both jobs and a request without a job to be counted", 30*time.Second, func() error {
		after = scrape(t, base)
		grew := func(name string, labels map[string]string) float64 {
			return sample(after, name, labels) - sample(before, name, labels)
		}
		switch {
		case grew("gitlab_runner_job_duration_seconds", me) != 2:
			return fmt.Errorf("job_duration_seconds count grew by %v", grew("gitlab_runner_job_duration_seconds", me))
		case sample(after, "gitlab_runner_jobs", with("state", "running")) != 0:
			return fmt.Errorf("a job is still running")
		case grew("gitlab_runner_failed_jobs_total", me) != 1:
			return fmt.Errorf("failed_jobs_total grew by %v", grew("gitlab_runner_failed_jobs_total", me))
		case grew("gitlab_runner_api_request_statuses_total", noJob) < 1:
			return fmt.Errorf("no request_job answered 204")
		}
		return nil
	})

	for name, labels := range map[string][]string{
		"gitlab_runner_jobs":                               {"runner", "system_id", "state", "stage", "executor_stage"},
		"gitlab_runner_concurrent":                         {},
		"gitlab_runner_limit":                              {"runner", "system_id"},
		"gitlab_runner_version_info":                       {"name", "version", "revision", "branch", "architecture", "built_at", "go_version", "os"},
		"gitlab_runner_api_request_statuses_total":         {"runner", "system_id", "endpoint", "status"},
		"gitlab_runner_failed_jobs_total":                  {"runner", "system_id", "failure_reason"},
		"gitlab_runner_job_duration_seconds":               {"runner", "system_id"},
		"gitlab_runner_jobs_total":                         {"runner", "system_id"},
		"gitlab_runner_errors_total":                       {"level"},
		"gitlab_runner_request_concurrency":                {"runner", "system_id"},
		"gitlab_runner_request_concurrency_exceeded_total": {"runner", "system_id"},
		// Flotilla's own and the taskscaler's keep their names.
		"flotilla_gitlab_jobs_total":     {"runner", "state", "failure_reason"},
		"fleeting_taskscaler_tasks":      {"runner", "state"},
		"fleeting_provisioner_instances": {"runner", "state"},
	} {
		mf := after[name]
		if mf == nil || len(mf.GetMetric()) == 0 {
			t.Errorf("/metrics lacks %s", name)
			continue
		}
		have := map[string]bool{}
		for _, lp := range mf.GetMetric()[0].GetLabel() {
			have[lp.GetName()] = true
		}
		for _, l := range labels {
			if !have[l] {
				t.Errorf("%s lacks the label %s", name, l)
			}
		}
	}

	delta := func(name string, labels map[string]string) float64 {
		return sample(after, name, labels) - sample(before, name, labels)
	}
	for _, c := range []struct {
		what string
		got  float64
		ok   func(float64) bool
	}{
		{"gitlab_runner_concurrent", sample(after, "gitlab_runner_concurrent", nil), func(v float64) bool { return v == 3 }},
		{"gitlab_runner_limit", sample(after, "gitlab_runner_limit", me), func(v float64) bool { return v == 2 }},
		{"gitlab_runner_version_info", sample(after, "gitlab_runner_version_info", map[string]string{"name": "flotilla"}), func(v float64) bool { return v == 1 }},
		{"gitlab_runner_jobs idle", float64(len(after["gitlab_runner_jobs"].GetMetric())), func(v float64) bool { return v >= 1 }},
		{"gitlab_runner_jobs running after", sample(after, "gitlab_runner_jobs", with("state", "running")), func(v float64) bool { return v == 0 }},
		{"Δ gitlab_runner_jobs_total", delta("gitlab_runner_jobs_total", me), func(v float64) bool { return v == 2 }},
		{"Δ gitlab_runner_failed_jobs_total{script_failure}", delta("gitlab_runner_failed_jobs_total", with("failure_reason", "script_failure", "runner_name", "e2e")), func(v float64) bool { return v == 1 }},
		{"Δ request_job 201", delta("gitlab_runner_api_request_statuses_total", with("endpoint", "request_job", "status", "201")), func(v float64) bool { return v == 2 }},
		{"Δ update_job 200", delta("gitlab_runner_api_request_statuses_total", with("endpoint", "update_job", "status", "200")), func(v float64) bool { return v >= 4 }},
		{"Δ patch_trace 202", delta("gitlab_runner_api_request_statuses_total", with("endpoint", "patch_trace", "status", "202")), func(v float64) bool { return v >= 2 }},
	} {
		if !c.ok(c.got) {
			t.Errorf("%s = %v", c.what, c.got)
		}
	}
	mf := after["gitlab_runner_job_duration_seconds"]
	var bounds []string
	for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
		if !math.IsInf(b.GetUpperBound(), 1) {
			bounds = append(bounds, fmt.Sprint(b.GetUpperBound()))
		}
	}
	if got := strings.Join(bounds, " "); got != "30 60 300 600 1800 3600 7200 10800 18000 36000" {
		t.Errorf("job_duration_seconds buckets %s, want GitLab Runner's", got)
	}
}

// TestLogConfigFromConfigToml checks that config.toml's log_level and log_format reach
// the runner's log settings on start and on reload, and that a value the runner
// refuses stops the start with the file named.
func TestLogConfigFromConfigToml(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	var mu sync.Mutex
	var got []string
	hook := func(level, format string) error {
		if format == "xml" {
			return fmt.Errorf("log_format: unknown log format %q", format)
		}
		mu.Lock()
		defer mu.Unlock()
		got = append(got, level+"/"+format)
		return nil
	}
	last := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			return ""
		}
		return got[len(got)-1]
	}

	write("concurrent = 1\nlog_format = \"xml\"\n")
	if _, err := New(Options{ConfigPath: path, LogConfig: hook, SystemID: "s_test", Logger: logger}); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "log_format") {
		t.Fatalf("New with log_format = \"xml\": %v, want an error naming %s and log_format", err, path)
	}

	write("concurrent = 1\nlog_level = \"warn\"\nlog_format = \"json\"\n")
	svc, err := New(Options{ConfigPath: path, LogConfig: hook, SystemID: "s_test", Logger: logger, ReloadPoll: -1, StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	if l := last(); l != "warn/json" {
		t.Errorf("on start: %q, want warn/json", l)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	<-svc.Ready()
	write("concurrent = 1\nlog_format = \"text\"\n")
	svc.Reload()
	eventually.True(t, "the reload to pass log_format = text", 20*time.Second, func() bool { return last() == "/text" })
}
