package runcmd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *env) stopped(t *testing.T) error {
	t.Helper()
	select {
	case err := <-e.done:
		e.done <- err // for the cleanup
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("service did not return")
		return nil
	}
}

// TestDrainFinishesRunningJobs is SIGQUIT: no new jobs, the running one completes,
// then Run returns; the health endpoint tells load balancers to go away meanwhile.
func TestDrainFinishesRunningJobs(t *testing.T) {
	e := start(t, 2, "")
	id := e.enqueue("long", []string{"echo step-one", "sleep 1", "echo step-two"}, nil)
	e.waitTrace(t, id, "step-one")
	base := "http://" + e.svc.Addr()
	if code, body := get(t, base+"/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("healthz before drain: %d %q", code, body)
	}
	e.svc.Drain()
	if code, _ := get(t, base+"/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("healthz while draining: %d, want 503", code)
	}
	late := e.enqueue("late", []string{"echo late"}, nil)
	if err := e.stopped(t); err != nil {
		t.Fatal(err)
	}
	j := e.srv.Job(id)
	if j.State != gitlabtest.Success || !strings.Contains(string(j.Trace), "step-two") {
		t.Errorf("drained job: state %s\n%s", j.State, j.Trace)
	}
	// A request already in flight when the drain began may take the late job; then
	// it must have run to the end. It must never be left running on GitLab.
	if st := e.srv.Job(late).State; st != gitlabtest.Pending && st != gitlabtest.Success {
		t.Errorf("job queued during drain was lost: state %s", st)
	}
}

// TestStopCancelsJobsAndReportsThroughErrors is SIGTERM: the running job is
// canceled and its final state reaches GitLab although the server answers 503 for a
// while.
func TestStopCancelsJobsAndReportsThroughErrors(t *testing.T) {
	e := start(t, 2, "")
	id := e.enqueue("stuck", []string{"echo stuck-started", "sleep 60"}, []string{"echo after-script-ran"})
	e.waitTrace(t, id, "stuck-started")
	e.srv.FailNext(4, http.StatusServiceUnavailable)
	e.cancel()
	if err := e.stopped(t); err != nil {
		t.Fatal(err)
	}
	j := e.srv.Job(id)
	if j.State != gitlabtest.Failed || j.FailureReason != "runner_system_failure" {
		t.Errorf("state %s reason %q, want failed runner_system_failure", j.State, j.FailureReason)
	}
	for _, want := range []string{"after-script-ran", "Job canceled"} {
		if !strings.Contains(string(j.Trace), want) {
			t.Errorf("log lacks %q:\n%s", want, j.Trace)
		}
	}
}

// TestEndpointsAndLimit checks /metrics and /status, and that limit = 1 keeps a
// runner to one job at a time although concurrent allows more.
func TestEndpointsAndLimit(t *testing.T) {
	e := start(t, 4, "  limit = 1\n  request_concurrency = 2\n")
	a := e.enqueue("a", []string{"sleep 0.5"}, nil)
	b := e.enqueue("b", []string{"sleep 0.5"}, nil)
	e.wait(t, a)
	e.wait(t, b)
	if p := e.srv.PeakRunning(); p != 1 {
		t.Errorf("%d jobs ran at once with limit = 1", p)
	}
	base := "http://" + e.svc.Addr()
	_, metrics := get(t, base+"/metrics")
	for _, want := range []string{`flotilla_gitlab_jobs_total{failure_reason="",runner="e2e",state="success"}`, "flotilla_gitlab_job_requests_total", `fleeting_taskscaler_tasks{runner=`, "fleeting_provisioner_instances{", "fleeting_taskscaler_desired_instances"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	code, body := get(t, base+"/status")
	var rep struct {
		Scalers []json.RawMessage `json:"scalers"`
	}
	if err := json.Unmarshal([]byte(body), &rep); code != http.StatusOK || err != nil || len(rep.Scalers) != 1 {
		t.Errorf("/status: %d %v %s", code, err, body)
	}
}

// TestReloadAppliesPolicies changes config.toml under a running service: the new
// idle_count makes the pool create an idle instance, and concurrent is applied.
func TestReloadAppliesPolicies(t *testing.T) {
	e := start(t, 2, "")
	id := e.enqueue("before", []string{"echo before-reload"}, nil)
	e.wait(t, id)
	changed := strings.Replace(configText(e.srv.URL, e.root, 3, ""), "idle_count = 0", "idle_count = 2", 1)
	if err := os.WriteFile(e.cfgPath, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	e.svc.Reload()
	eventually.NoError(t, "the reload to apply concurrent 3 and idle_count 2", 30*time.Second, func() error {
		st := e.svc.Pools()[0].Status()
		e.svc.mu.Lock()
		conc := e.svc.cfg.Concurrent
		e.svc.mu.Unlock()
		if conc == 3 && st.Tasks.Idle >= 2 {
			return nil
		}
		return fmt.Errorf("concurrent %d, status %+v", conc, st.Tasks)
	})
	id = e.enqueue("after", []string{"echo after-reload"}, nil)
	if j := e.wait(t, id); j.State != gitlabtest.Success {
		t.Errorf("job after reload: %s", j.State)
	}

	// Re-registered (new token): the old pool stops, the new one takes the jobs.
	e.srv.AddRunner("glrt-e2e-token-2")
	if err := os.WriteFile(e.cfgPath, []byte(strings.Replace(changed, runnerToken, "glrt-e2e-token-2", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	e.svc.Reload()
	// The old entry hands over once its pool has stopped; a job queued before that
	// could still be taken by the old entry's last request, which is fine, but not
	// what this test is about.
	eventually.True(t, "the re-registered entry to replace the old one", 30*time.Second, func() bool {
		e.svc.mu.Lock()
		_, ok := e.svc.runners[e.srv.URL+"|glrt-e2e-token-2"]
		_, old := e.svc.runners[e.srv.URL+"|"+runnerToken]
		e.svc.mu.Unlock()
		return ok && !old
	})
	id = e.enqueue("new-token", []string{"echo with-new-token"}, nil)
	if j := e.wait(t, id); j.State != gitlabtest.Success || j.Runner != "glrt-e2e-token-2" {
		t.Errorf("job after re-registration: %s taken by %q\n%s", j.State, j.Runner, j.Trace)
	}
}

// TestSignals sends the process SIGHUP (reload) and then SIGQUIT (graceful stop)
// while RunWithSignals serves.
func TestSignals(t *testing.T) {
	e := start(t, 2, "")
	// Replace the started service by one run with signals: stop the first one.
	e.cancel()
	if err := e.stopped(t); err != nil {
		t.Fatal(err)
	}
	svc, err := New(e.svc.opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- RunWithSignals(context.Background(), svc) }()
	select {
	case <-svc.Ready():
	case err := <-done:
		t.Fatalf("service stopped: %v", err)
	}
	os.WriteFile(e.cfgPath, []byte(configText(e.srv.URL, e.root, 3, "")), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	eventually.True(t, "SIGHUP to reload concurrent 3", 20*time.Second, func() bool {
		svc.mu.Lock()
		defer svc.mu.Unlock()
		return svc.cfg.Concurrent == 3
	})
	id := e.enqueue("during-signals", []string{"echo q-started", "sleep 1", "echo q-done"}, nil)
	e.waitTrace(t, id, "q-started")
	syscall.Kill(os.Getpid(), syscall.SIGQUIT)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("SIGQUIT did not stop the service")
	}
	if j := e.srv.Job(id); j.State != gitlabtest.Success || !strings.Contains(string(j.Trace), "q-done") {
		t.Errorf("job running at SIGQUIT: %s\n%s", j.State, j.Trace)
	}
}
