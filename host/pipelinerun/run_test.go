package pipelinerun

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/instance"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
	"github.com/flotilla-ci/flotilla/host/pool"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// sshGroup is a fake cloud whose every instance is reached at one real sshd.
type sshGroup struct {
	*fake.Group
	srv *sshdtest.Server
}

func (g sshGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if _, err := g.Group.ConnectInfo(ctx, id); err != nil {
		return provider.ConnectInfo{}, err
	}
	return g.srv.ConnectInfo(id), nil
}

type harness struct {
	runner *Runner
	scaler *taskscaler.Scaler
	group  *fake.Group
}

func newHarness(t *testing.T, newEnv func(pool.EnvFactory) pool.EnvFactory) *harness {
	t.Helper()
	if ok, why := sshdtest.Available(); !ok {
		t.Skip(why)
	}
	srv := sshdtest.Start(t, sshdtest.Options{})
	g := fake.New(fake.Options{CreatingUpdates: 1})
	sc, err := taskscaler.New(context.Background(), sshGroup{g, srv}, taskscaler.Options{
		CapacityPerInstance: 2, MaxInstances: 3, UpdateIntervalWhenExpecting: 20 * time.Millisecond,
		UpdateInterval: 100 * time.Millisecond, InstanceAcquireTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sc.Shutdown(ctx)
	})
	conns := connector.NewPool(connector.DialOptions{})
	t.Cleanup(conns.Shutdown)
	builds := t.TempDir()
	var factory pool.EnvFactory = func(ctx context.Context, job *jobs.Job, slot pool.Slot) (executors.Env, error) {
		info, err := slot.ConnectInfo(ctx)
		if err != nil {
			return nil, err
		}
		c, err := conns.Client(ctx, info)
		if err != nil {
			return nil, err
		}
		// Every fake instance is the same sshd: give each its own builds directory, as
		// separate machines would have.
		return instance.New(c, job, instance.Options{BuildsDir: filepath.Join(builds, slot.InstanceID()), Slot: slot.Slot()})
	}
	if newEnv != nil {
		factory = newEnv(factory)
	}
	return &harness{scaler: sc, group: g, runner: &Runner{Pool: pool.Jobs{Slots: pool.ScalerSlots(sc), NewEnv: factory}, LogDir: t.TempDir(), Options: executors.RunOptions{Executor: "instance"}}}
}

type recorder struct {
	mu     sync.Mutex
	states []string
}

func (r *recorder) JobState(job string, s State, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.states = append(r.states, job+":"+string(s))
}

func plan(t *testing.T, example string) (*pipeline.Plan, string) {
	t.Helper()
	dir := filepath.Join("..", "..", "examples", "pipelines", example)
	p, err := pipeline.Load(filepath.Join(dir, ".gitlab-ci.yml"))
	if err != nil {
		t.Fatal(err)
	}
	pl, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	for _, j := range pl.Jobs {
		j.Source = jobs.Source{Kind: jobs.SourceLocal, Dir: abs}
	}
	return pl, abs
}

func states(s Summary) map[string]State {
	out := map[string]State{}
	for _, j := range s.Jobs {
		out[j.Name] = j.State
	}
	return out
}

func TestFailingPipeline(t *testing.T) {
	h := newHarness(t, nil)
	pl, _ := plan(t, "failing-job")
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]State{"unit": StateFailed, "flaky": StateAllowed, "report-failure": StatePassed}
	for job, st := range want {
		if got := states(sum)[job]; got != st {
			t.Errorf("%s = %s, want %s", job, got, st)
		}
	}
	if sum.Passed {
		t.Error("pipeline passed with a failed job")
	}
	var out bytes.Buffer
	PrintSummary(&out, sum)
	for _, w := range []string{"unit", "exit code 1", "after_script ran with status failed", "Pipeline FAILED"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("summary lacks %q:\n%s", w, out.String())
		}
	}
}

// dagPipeline is a DAG whose build-b ends only once test-a has run (it waits for the
// file test-a writes): a runner that held test-a back until the whole build stage had
// ended fails build-b, however fast or loaded the machine is.
const dagPipeline = `stages: [build, test, deploy]
build-a:
  stage: build
  script: [echo build-a]
build-b:
  stage: build
  script:
    - for i in $(seq 600); do if [ -e %[1]s ]; then exit 0; fi; sleep 0.1; done; echo "test-a has not run while build-b waited for it"; exit 1
test-a:
  stage: test
  needs: [build-a]
  script: [touch %[1]s]
lint:
  stage: test
  needs: []
  script: [echo lint needs nothing]
deploy:
  stage: deploy
  needs: [test-a, build-b]
  script: [echo deploying after test-a and build-b]
`

func TestDAGPipelineRunsConcurrently(t *testing.T) {
	h := newHarness(t, nil)
	pl := mustPlan(t, fmt.Sprintf(dagPipeline, filepath.Join(t.TempDir(), "test-a-ran")))
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range sum.Jobs {
		if j.State != StatePassed {
			log, _ := os.ReadFile(j.LogPath)
			t.Errorf("%s = %s; log:\n%s", j.Name, j.State, log)
		}
	}
	if !sum.Passed {
		t.Error("pipeline failed")
	}
	log, _ := os.ReadFile(filepath.Join(h.runner.LogDir, "deploy.log"))
	if !strings.Contains(string(log), "deploying after test-a and build-b") {
		t.Errorf("deploy log:\n%s", log)
	}
}

// flakyEnv fails its first Exec as a lost instance would.
type flakyEnv struct {
	executors.Env
	failed *atomic.Bool
}

func (f flakyEnv) Exec(ctx context.Context, s executors.Script, out io.Writer) (int, error) {
	if f.failed.CompareAndSwap(false, true) {
		return -1, errors.New("ssh tunnel: EOF")
	}
	return f.Env.Exec(ctx, s, out)
}

func TestSystemFailureRetriedOnce(t *testing.T) {
	var failed atomic.Bool
	h := newHarness(t, func(next pool.EnvFactory) pool.EnvFactory {
		return func(ctx context.Context, job *jobs.Job, slot pool.Slot) (executors.Env, error) {
			env, err := next(ctx, job, slot)
			return flakyEnv{env, &failed}, err
		}
	})
	pl := mustPlan(t, "only:\n  script: [echo second attempt works]\n")
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	if j := sum.Jobs[0]; j.State != StatePassed || j.Attempts != 2 {
		t.Fatalf("job = %+v, want passed on the 2nd attempt", j)
	}
}

func TestInstanceRemovedUnderJobIsSystemFailure(t *testing.T) {
	var gotInstance atomic.Value
	h := newHarness(t, nil)
	marker := filepath.Join(t.TempDir(), "first-attempt")
	// The first attempt blocks until its instance is removed; the retry finds the marker.
	pl := mustPlan(t, "long:\n  script: ['if [ -e "+marker+" ]; then echo retried; else touch "+marker+"; sleep 30; fi']\n")
	rec := &removeOnRun{h: h, seen: &gotInstance, marker: marker}
	h.runner.Progress = rec
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	j := sum.Jobs[0]
	b, _ := os.ReadFile(j.LogPath)
	for _, w := range []string{"Job failed (system failure)", "instance unexpectedly removed", "retried", "Job succeeded"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("log lacks %q:\n%s", w, b)
		}
	}
	if j.Attempts != 2 || j.State != StatePassed {
		t.Fatalf("attempts = %d, want a retry after the instance vanished: %+v", j.Attempts, j)
	}
}

// removeOnRun deletes the instance of the first job that starts running, once its
// script is running (it created marker), as a cloud rebalance would; only the first,
// so that the retry runs to completion. Waiting for the script, not a fixed time,
// keeps a slow machine from removing the instance while the job is still preparing.
type removeOnRun struct {
	h      *harness
	seen   *atomic.Value
	marker string
	done   atomic.Bool
}

func (r *removeOnRun) JobState(job string, s State, detail string) {
	if s != StateRunning || !r.done.CompareAndSwap(false, true) {
		return
	}
	id := strings.Fields(strings.TrimPrefix(detail, "on "))[0]
	r.seen.Store(id)
	go func() {
		// Without the marker within a minute the job is not running its script: remove
		// the instance anyway, and the test fails on the log it gets.
		eventually.Poll(time.Minute, func() bool { _, err := os.Stat(r.marker); return err == nil })
		r.h.group.SetState(id, provider.StateDeleting)
	}()
}

// onFirstRun calls f once, when the first job starts running.
type onFirstRun struct {
	once sync.Once
	f    func(job string)
}

func (o *onFirstRun) JobState(job string, s State, _ string) {
	if s == StateRunning {
		o.once.Do(func() { o.f(job) })
	}
}

// TestDrainStartsNoNewJobs is SIGQUIT for `runner exec`: the job running when the
// drain begins runs to its end; the one waiting for `concurrent` and the one waiting
// for its dependency never start, and say so.
func TestDrainStartsNoNewJobs(t *testing.T) {
	h := newHarness(t, nil)
	drain := make(chan struct{})
	var running string
	h.runner.Concurrent = 1
	h.runner.Stops.Drain = drain
	h.runner.Progress = &onFirstRun{f: func(job string) { running = job; close(drain) }}
	pl := mustPlan(t, `
first:
  script: [sleep 1, echo first-$((1+1))-done]
parallel:
  script: [sleep 1, echo parallel-$((1+1))-done]
second:
  needs: [first]
  script: [echo second]
`)
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Passed {
		t.Error("a pipeline whose jobs were not all run passed")
	}
	for _, j := range sum.Jobs {
		if j.Name == running {
			b, _ := os.ReadFile(j.LogPath)
			if j.State != StatePassed || !strings.Contains(string(b), running+"-2-done") {
				t.Errorf("the running job %s = %s, want passed after running to its end:\n%s", j.Name, j.State, b)
			}
			continue
		}
		if j.State != StateCanceled || j.Why() != pool.ErrNotStarted.Error() || j.Attempts != 0 {
			t.Errorf("%s = %s (%q, %d attempts), want canceled, not started", j.Name, j.State, j.Why(), j.Attempts)
		}
	}
}

// TestAbortCutsStepsShort is a second stop signal: the job, already canceled, is
// running its after_script; the abort ends it without waiting for it.
func TestAbortCutsStepsShort(t *testing.T) {
	h := newHarness(t, nil)
	abort := make(chan struct{})
	h.runner.Stops.Abort = abort
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pl := mustPlan(t, `
long:
  script: [echo job-$((1+1))-started, sleep 600]
  after_script: [echo after-$((1+1))-started, sleep 600, echo after-$((1+1))-done]
`)
	type result struct {
		sum Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := h.runner.Run(ctx, pl)
		done <- result{sum, err}
	}()
	logPath := filepath.Join(h.runner.LogDir, "long.log")
	waitLog := func(s string) {
		t.Helper()
		eventually.NoError(t, fmt.Sprintf("the log to show %q", s), time.Minute, func() error {
			if b, _ := os.ReadFile(logPath); !strings.Contains(string(b), s) {
				return fmt.Errorf("log:\n%s", b)
			}
			return nil
		})
	}
	waitLog("job-2-started")
	cancel()
	waitLog("after-2-started")
	close(abort)
	var r result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run still waits for the after_script after the abort")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	j := r.sum.Jobs[0]
	b, _ := os.ReadFile(logPath)
	if j.State != StateCanceled || strings.Contains(string(b), "after-2-done") || !strings.Contains(string(b), pool.ErrAborted.Error()) {
		t.Errorf("job = %s; want canceled with its after_script aborted; log:\n%s", j.State, b)
	}
}

// noSlotPool never has a slot: every Acquire fails at once, as one does after
// instance_acquire_timeout.
type noSlotPool struct{ acquires atomic.Int32 }

func (p *noSlotPool) Acquire(context.Context, string) (pool.Slot, error) {
	p.acquires.Add(1)
	return nil, errors.New("unable to acquire instance within the configured timeout of 15m0s: the plugin's Update has failed")
}

func (p *noSlotPool) Release(string) {}

// TestNoSlotIsNotRetried: a job that got no slot has already waited out the acquire
// timeout; it fails at once as a runner_system_failure with the pool's explanation,
// instead of waiting as long again (the issue saw jobs "wait out the acquire timeout
// twice").
func TestNoSlotIsNotRetried(t *testing.T) {
	slots := &noSlotPool{}
	r := &Runner{Pool: pool.Jobs{Slots: slots, NewEnv: func(context.Context, *jobs.Job, pool.Slot) (executors.Env, error) {
		t.Fatal("no environment may be built without a slot")
		return nil, nil
	}}, LogDir: t.TempDir()}
	pl := mustPlan(t, "only:\n  script: [echo hi]\n")
	sum, err := r.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	j := sum.Jobs[0]
	if n := slots.acquires.Load(); n != 1 || j.Attempts != 1 {
		t.Errorf("%d acquires, %d attempts; want 1 of each", n, j.Attempts)
	}
	if want := "runner_system_failure: unable to acquire instance within the configured timeout of 15m0s: the plugin's Update has failed"; j.State != StateFailed || j.Why() != want {
		t.Errorf("job = %s (%q), want failed (%q)", j.State, j.Why(), want)
	}
}

// mustPlan parses yaml as a pipeline file and plans it, failing t on an error.
func mustPlan(t *testing.T, yaml string) *pipeline.Plan {
	t.Helper()
	p, err := pipeline.Parse("ci.yml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	pl, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	return pl
}
