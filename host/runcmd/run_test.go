package runcmd

import (
	"archive/zip"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla-ci/flotilla/host/executors/dockertest"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
	"github.com/flotilla-ci/flotilla/plugins/local"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// TestMain lets this test binary serve the embedded local plugin, as the runner binary
// does, so the service is tested with the plugin out of process.
func TestMain(m *testing.M) {
	local.ServeIfAsked(os.Args)
	os.Exit(m.Run())
}

type env struct {
	srv     *gitlabtest.Server
	cfgPath string
	root    string
	repo    string
	sha     string
	svc     *Service
	done    chan error
	cancel  context.CancelFunc
}

const runnerToken = "glrt-e2e-token"

func configText(url, root string, concurrent int, extra string) string {
	return fmt.Sprintf(`# the service's test configuration
concurrent = %d
listen_address = "127.0.0.1:0"

[[runners]]
  name = "e2e"
  url = %q
  token = %q
  executor = "instance"
  shell = "bash"
  environment = ["FROM_RUNNER=yes"]
%s  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 2
    max_instances = 2
    update_interval = "500ms"
    update_interval_when_expecting = "100ms"
    shutdown_deletion_interval = "200ms"
    delete_instances_on_shutdown = true
    [runners.autoscaler.plugin_config]
      root_dir = %q
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "5m"
`, concurrent, url, runnerToken, extra, root)
}

// start serves a fake GitLab and a `runner run` service on autoscaled local instances.
func start(t *testing.T, concurrent int, runnerExtra string) *env {
	t.Helper()
	return startWith(t, func(url, root string) string { return configText(url, root, concurrent, runnerExtra) })
}

// startWith is start with the config.toml text made by cfg; tune, if given, adjusts
// the service's Options.
func startWith(t *testing.T, cfg func(url, root string) string, tune ...func(*Options)) *env {
	t.Helper()
	if _, err := os.Stat(gitlabtest.GitHTTPBackend); err != nil {
		t.Skipf("git http-backend not available (%s): install Debian's git", gitlabtest.GitHTTPBackend)
	}
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	e := &env{srv: gitlabtest.New(t, gitlabtest.Options{LongPoll: 300 * time.Millisecond}), root: filepath.Join(t.TempDir(), "instances")}
	e.srv.AddRunner(runnerToken)
	e.repo, e.sha = e.srv.AddRepo("group/project", map[string]string{
		"hello.txt": "hello from the repository\n",
		"build.sh":  "#!/bin/sh\nmkdir -p out && echo built > out/result.txt\n",
	})
	m := startManager(t, cfg(e.srv.URL, e.root), tune...)
	e.cfgPath, e.svc, e.done, e.cancel = m.cfgPath, m.svc, m.done, m.cancel
	return e
}

// manager is one `runner run` service of a test.
type manager struct {
	cfgPath string
	svc     *Service
	done    chan error
	cancel  context.CancelFunc
}

// startManager starts a `runner run` service with config.toml text cfgText in a
// directory of its own (its own cache and state directories), stopped at cleanup;
// tune, if given, adjusts its Options.
func startManager(t *testing.T, cfgText string, tune ...func(*Options)) *manager {
	t.Helper()
	dir := t.TempDir()
	m := &manager{cfgPath: filepath.Join(dir, "config.toml"), done: make(chan error, 1)}
	if err := os.WriteFile(m.cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	opts := Options{ConfigPath: m.cfgPath, Logger: logger, CheckInterval: 100 * time.Millisecond,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, TraceInterval: 100 * time.Millisecond,
		ForceSendInterval: 300 * time.Millisecond, ReloadPoll: -1, StateDir: filepath.Join(dir, "state"), Metrics: prometheus.DefaultRegisterer}
	for _, f := range tune {
		f(&opts)
	}
	svc, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	m.svc = svc
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() { m.done <- svc.Run(ctx) }()
	t.Cleanup(m.stop(t))
	select {
	case <-svc.Ready():
	case err := <-m.done:
		t.Fatalf("service stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("service not ready")
	}
	return m
}

// stop returns a function that stops the service and waits for it, once.
func (m *manager) stop(t *testing.T) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			m.cancel()
			select {
			case <-m.done:
			case <-time.After(60 * time.Second):
				t.Error("service did not stop")
			}
		})
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *env) enqueue(name string, script, after []string, vars ...gitlab.JobVariable) int64 {
	return e.srv.Enqueue(gitlabtest.JobPayload(name, e.repo, e.sha, script, after, vars...))
}

// waitTrace waits until job id's log on the server contains s.
func (e *env) waitTrace(t *testing.T, id int64, s string) string {
	t.Helper()
	var tr string
	eventually.NoError(t, fmt.Sprintf("job %d's log to show %q", id, s), 60*time.Second, func() error {
		if tr = string(e.srv.Job(id).Trace); !strings.Contains(tr, s) {
			return fmt.Errorf("log:\n%s", tr)
		}
		return nil
	})
	return tr
}

func (e *env) wait(t *testing.T, id int64) gitlabtest.Job {
	t.Helper()
	j, ok := e.srv.Wait(id, 90*time.Second)
	if !ok {
		t.Fatalf("job %d did not finish: state %s, updates %v\n%s", id, j.State, j.Updates, j.Trace)
	}
	return j
}

var instanceLine = regexp.MustCompile(`Running on instance ([a-z0-9-]+)`)

// TestQueueOfJobs runs a queue of GitLab jobs concurrently on autoscaled local
// instances: logs arrive complete and in order (also across a lost trace range and a
// burst of 5xx answers), final states match the scripts, a job canceled on GitLab
// stops, and a job whose instance is deleted under it is a system failure.
func TestQueueOfJobs(t *testing.T) {
	e := start(t, 4, "")
	// The first job requests meet a burst of server errors: the runner backs off and
	// then takes jobs normally.
	e.srv.FailNext(3, http.StatusBadGateway)

	var lines []string
	for i := 1; i <= 40; i++ {
		lines = append(lines, fmt.Sprintf("line-%03d", i))
	}
	okID := e.enqueue("ok", []string{
		"cat hello.txt",
		"echo secret is $SECRET",
		"cat \"$CONFIG_FILE\"",
		"echo runner env $FROM_RUNNER",
		"for l in " + strings.Join(lines, " ") + "; do echo $l; sleep 0.02; done",
		"./build.sh",
	}, nil,
		gitlab.JobVariable{Key: "SECRET", Value: "hunter2-s3cret", Masked: true},
		gitlab.JobVariable{Key: "CONFIG_FILE", Value: "file-contents-here", File: true})
	failID := e.enqueue("fail", []string{"echo before failing", "exit 3", "echo never"}, []string{"echo after_script saw $CI_JOB_STATUS"})
	cancelID := e.enqueue("cancel", []string{"echo cancel-me-started", "sleep 60", "echo never"}, nil)
	sleeperID := e.enqueue("sleeper", []string{"sleep 2", "echo slept"}, nil)

	e.waitTrace(t, okID, "line-005")
	e.srv.ForgetTraceOnce(okID)

	e.waitTrace(t, cancelID, "cancel-me-started")
	e.srv.Cancel(cancelID)
	okJob := e.wait(t, okID)
	if okJob.State != gitlabtest.Success {
		t.Errorf("ok job: state %s (%s), want success\n%s", okJob.State, okJob.FailureReason, okJob.Trace)
	}
	log := string(okJob.Trace)
	for _, want := range []string{"hello from the repository", "secret is [MASKED]", "file-contents-here", "runner env yes", "Job succeeded"} {
		if !strings.Contains(log, want) {
			t.Errorf("ok job log lacks %q", want)
		}
	}
	if strings.Contains(log, "hunter2-s3cret") {
		t.Errorf("ok job log leaks the masked variable")
	}
	// Complete and in order, every line exactly once, despite the forgotten range.
	last := -1
	for _, l := range lines {
		if n := strings.Count(log, l+"\n"); n != 1 {
			t.Errorf("ok job log has %q %d times, want once", l, n)
		}
		i := strings.Index(log, l+"\n")
		if i < last {
			t.Errorf("ok job log: %q out of order", l)
		}
		last = i
	}
	if okJob.Output == nil || okJob.Output.Bytesize != len(okJob.Trace) {
		t.Errorf("final update output %+v, want bytesize %d", okJob.Output, len(okJob.Trace))
	}

	failJob := e.wait(t, failID)
	if failJob.State != gitlabtest.Failed || failJob.FailureReason != "script_failure" || failJob.ExitCode == nil || *failJob.ExitCode != 3 {
		t.Errorf("fail job: state %s reason %q exit %v, want failed script_failure 3\n%s", failJob.State, failJob.FailureReason, failJob.ExitCode, failJob.Trace)
	}
	// after_script ran and saw the failure; nothing after the failing line ran.
	if fl := string(failJob.Trace); !strings.Contains(fl, "after_script saw failed") || strings.Contains(fl, "echo never") {
		t.Errorf("fail job log:\n%s", fl)
	}

	cancelJob := e.wait(t, cancelID)
	if cancelJob.State != gitlabtest.Canceled {
		t.Errorf("cancel job: state %s, want canceled\n%s", cancelJob.State, cancelJob.Trace)
	}
	if !strings.Contains(string(cancelJob.Trace), "Job canceled") {
		t.Errorf("cancel job log lacks the cancellation:\n%s", cancelJob.Trace)
	}

	if j := e.wait(t, sleeperID); j.State != gitlabtest.Success {
		t.Errorf("sleeper job: %s", j.State)
	}
	if p := e.srv.PeakRunning(); p != 4 {
		t.Errorf("at most %d jobs ran at once, want 4 (concurrent = 4, 2 instances × 2 slots)", p)
	}

	// Alone on its instance now, a job whose instance is deleted under it.
	vanishID := e.enqueue("vanish", []string{"echo vanish-started", "sleep 60", "echo never"}, nil)
	vtr := e.waitTrace(t, vanishID, "vanish-started")
	m := instanceLine.FindStringSubmatch(vtr)
	if m == nil {
		t.Fatalf("vanish job log names no instance:\n%s", vtr)
	}
	// Delete the instance the way the local plugin's cloud would: the deleting marker
	// makes the plugin report it deleting and remove it.
	if err := os.WriteFile(filepath.Join(e.root, m[1], "deleting"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	vanishJob := e.wait(t, vanishID)
	if vanishJob.State != gitlabtest.Failed || vanishJob.FailureReason != "runner_system_failure" {
		t.Errorf("vanish job: state %s reason %q, want failed runner_system_failure\n%s", vanishJob.State, vanishJob.FailureReason, vanishJob.Trace)
	}
}

// TestArtifactsUploaded checks that declared paths are collected from the instance
// and uploaded as a zip.
func TestArtifactsUploaded(t *testing.T) {
	e := start(t, 2, "")
	p := gitlabtest.JobPayload("build", e.repo, e.sha, []string{"./build.sh"}, nil)
	p.Artifacts = []gitlab.Artifact{{Name: "out", Paths: []string{"out/", "missing-*.txt"}, When: "on_success", ArtifactType: "archive", ArtifactFormat: "zip"}}
	id := e.srv.Enqueue(p)
	j := e.wait(t, id)
	if j.State != gitlabtest.Success {
		t.Fatalf("state %s (%s)\n%s", j.State, j.FailureReason, j.Trace)
	}
	if len(j.Artifacts) != 1 {
		t.Fatalf("%d artifact uploads, want 1\n%s", len(j.Artifacts), j.Trace)
	}
	zr, err := zip.NewReader(bytes.NewReader(j.Artifacts[0]), int64(len(j.Artifacts[0])))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range zr.File {
		if f.Name == "out/result.txt" {
			rc, _ := f.Open()
			b, _ := io.ReadAll(rc)
			rc.Close()
			found = string(b) == "built\n"
		}
	}
	if !found {
		t.Errorf("artifacts zip lacks out/result.txt with its content")
	}
	if !strings.Contains(string(j.Trace), "missing-*.txt: no matching files") {
		t.Errorf("log lacks the warning about an unmatched path:\n%s", j.Trace)
	}
}

// TestDockerAutoscalerJob runs a GitLab job in a container on a local instance: the
// repository is cloned on the host with the job token and copied into the builds
// volume.
func TestDockerAutoscalerJob(t *testing.T) {
	e := startDocker(t)
	id := e.enqueue("in-docker", []string{"cat hello.txt", "test -f /.dockerenv && echo inside a container", "exit 4"}, nil)
	j := e.wait(t, id)
	if j.State != gitlabtest.Failed || j.FailureReason != "script_failure" || j.ExitCode == nil || *j.ExitCode != 4 {
		t.Errorf("state %s reason %q exit %v, want failed script_failure 4\n%s", j.State, j.FailureReason, j.ExitCode, j.Trace)
	}
	for _, want := range []string{"hello from the repository", "inside a container"} {
		if !strings.Contains(string(j.Trace), want) {
			t.Errorf("log lacks %q:\n%s", want, j.Trace)
		}
	}
	if strings.Contains(string(j.Trace), "glcbt-job") {
		t.Errorf("log shows the job token:\n%s", j.Trace)
	}
}

// startDocker starts the runner against the test GitLab with one docker-autoscaler
// entry on local instances, whose containers run on this machine's Docker Engine.
func startDocker(t *testing.T) *env {
	t.Helper()
	dockertest.EnsureImage(t, dockertest.Client(t))
	return startWith(t, func(url, root string) string {
		c := configText(url, root, 2, "  [runners.docker]\n    image = \""+dockertest.Image+"\"\n    pull_policy = [\"if-not-present\"]\n")
		c = strings.Replace(c, `executor = "instance"`, `executor = "docker-autoscaler"`, 1)
		return strings.Replace(c, "root_dir = ", "docker_socket = \""+dockertest.Socket+"\"\n      root_dir = ", 1)
	})
}
