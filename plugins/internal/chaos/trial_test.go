package chaos

import (
	"bufio"
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// Bounds of one trial. A runner invocation that outlives runLimit is killed and the
// trial fails; a trial waiting longer than idleAfter on a runner gives its slot to
// another trial (it is waiting on a timeout, not using the machine).
const (
	runLimit       = 3 * time.Minute
	idleAfter      = 8 * time.Second
	settleLeft     = 2 * time.Second  // for a faulted run's deletions to show after its exit
	settleFinal    = 10 * time.Second // for the recovery run's plugin and instances to go
	orphanSlack    = time.Second      // a job's end marker this long after its runner exited is an orphan's
	pollInterval   = 50 * time.Millisecond
	acquireTimeout = "30s"
)

// The pipelines' jobs: the faulted run has two concurrent jobs and one after them (so
// instances are created, retired after one job each and created again), the recovery
// run one quick job.
var (
	faultJobs   = []string{"a", "b", "c"}
	recoverJobs = []string{"verify"}
)

// slots bounds how many trials run actively at once (active), and how many wait on a
// stuck runner (idle: such a trial gives its active slot to another but keeps its
// processes, so their number is bounded too). Trials of slow faults are admitted a
// bounded number at a time (slow), below the idle bound, so that while they wait the
// others keep the active slots busy.
type slots struct {
	active, idle, slow chan struct{}
}

func (s slots) acquire() { s.active <- struct{}{} }
func (s slots) release() { <-s.active }

// goIdle trades the caller's active slot for an idle one.
func (s slots) goIdle() {
	s.idle <- struct{}{}
	<-s.active
}

// wake trades the caller's idle slot for an active one. The idle slot goes first: a
// trial waiting for an active slot must not hold one that an active trial may be
// waiting for.
func (s slots) wake() {
	<-s.idle
	s.active <- struct{}{}
}

// trial is one run of a fault against one plugin.
type trial struct {
	t      *testing.T
	plugin string
	fault  *fault
	index  int
	seed   uint64
	rnd    *rand.Rand
	slots  slots

	id      string // the CHAOS_TRIAL marker every process of the trial carries
	root    string // every file and process of the trial is under it
	dir     string
	project string
	markers string
	state   string // the runner's state directory
	cfgPath string

	target target
	local  *localTarget // set for the local plugin
	cloud  *cloudTarget // set for a cloud plugin

	durations map[string]time.Duration // of the faulted run's jobs
	proxy     *faultProxy              // set for api-timeout

	mu    sync.Mutex
	notes []string
}

// trialSeed derives a trial's seed from the base seed, so that any one trial can be
// replayed alone.
func trialSeed(base uint64, plugin, fault string, index int) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%s/%s/%d", base, plugin, fault, index)
	return h.Sum64()
}

// note records what happened, for the failure report.
func (tr *trial) note(format string, args ...any) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.notes = append(tr.notes, fmt.Sprintf(format, args...))
}

// between draws a duration uniformly in [lo, hi).
func (tr *trial) between(lo, hi time.Duration) time.Duration {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return lo + time.Duration(tr.rnd.Int64N(int64(hi-lo)))
}

// intn draws an int in [0, n).
func (tr *trial) intn(n int) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.rnd.IntN(n)
}

// setup creates the trial's directories and its plugin target.
func (tr *trial) setup() {
	t := tr.t
	tr.dir = t.TempDir()
	tr.root = filepath.Dir(tr.dir) // t.TempDir's parent, where the fakes' directories go too
	tr.id = fmt.Sprintf("%d-%s-%s-%d", os.Getpid(), tr.plugin, tr.fault.name, tr.index)
	tr.project = filepath.Join(tr.dir, "project")
	tr.markers = filepath.Join(tr.dir, "markers")
	tr.state = filepath.Join(tr.dir, "state")
	tr.cfgPath = filepath.Join(tr.dir, "config.toml")
	for _, d := range []string{tr.project, tr.state} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Whatever a failed trial left running goes before its directory does.
	t.Cleanup(func() { killAll(trialProcs(tr.root, tr.envKV())) })
	tr.durations = map[string]time.Duration{}
	for _, j := range faultJobs {
		tr.durations[j] = tr.between(300*time.Millisecond, 1500*time.Millisecond)
	}
	if tr.plugin == pluginLocal {
		tr.local = newLocalTarget(tr)
		tr.target = tr.local
		return
	}
	var lag time.Duration
	if tr.fault.name == "late-listing" {
		lag = tr.between(500*time.Millisecond, 3*time.Second)
		tr.note("the cloud's detailed listing lags %s behind", lag.Round(time.Millisecond))
	}
	tr.cloud = newCloudTarget(t, tr, tr.plugin, lag)
	tr.target = tr.cloud
}

func (tr *trial) envKV() string { return "CHAOS_TRIAL=" + tr.id }

// writeConfig writes the runner's config.toml: one autoscaled runner, one job per
// instance (so instances come and go during the pipeline), quick polling.
func (tr *trial) writeConfig() {
	cfg := fmt.Sprintf(`concurrent = 4

[[runners]]
  name = "chaos"
  executor = "instance"
  shell = "bash"

  [runners.autoscaler]
%s    capacity_per_instance = 1
    max_use_count = 1
    max_instances = 2
    instance_acquire_timeout = %q
    update_interval = "1s"
    update_interval_when_expecting = "100ms"
    deletion_retry_interval = "2s"
    shutdown_deletion_interval = "200ms"

    [runners.autoscaler.state_storage]
      dir = %q

    [runners.autoscaler.connector_config]
%s
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "1s"
`, tr.target.autoscalerTOML(), acquireTimeout, tr.state, tr.target.connectorTOML())
	if err := os.WriteFile(tr.cfgPath, []byte(cfg), 0o600); err != nil {
		tr.t.Fatal(err)
	}
}

// writePipeline writes the phase's .gitlab-ci.yml. Every job appends a start and a
// done marker (time, phase, job, shell pid, working directory) to the trial's marker
// file, which is how lost, double-run and orphaned jobs are told apart.
func (tr *trial) writePipeline(phase string) {
	var b strings.Builder
	fmt.Fprintf(&b, "stages: [build, test]\n\nvariables:\n  CHAOS_TRIAL: %q\n  CHAOS_MARK: %q\n  CHAOS_PHASE: %q\n", tr.id, tr.markers, phase)
	job := func(name, stage string, d time.Duration) {
		// One line, which the shell parses whole before running it: the job goes on to
		// its done marker even if what feeds the shell its script is gone, as a job
		// whose instance died under it would, if nothing killed it.
		fmt.Fprintf(&b, "\n%s:\n  stage: %s\n  script:\n", name, stage)
		fmt.Fprintf(&b, "    - echo \"$(date +%%s%%N) start $CHAOS_PHASE $CI_JOB_NAME $$ $PWD\" >> \"$CHAOS_MARK\"; sleep %.3f; echo \"$(date +%%s%%N) done $CHAOS_PHASE $CI_JOB_NAME $$ $PWD\" >> \"$CHAOS_MARK\"\n", d.Seconds())
	}
	if phase == phaseFault {
		job("a", "build", tr.durations["a"])
		job("b", "build", tr.durations["b"])
		job("c", "test", tr.durations["c"])
	} else {
		job("verify", "build", 100*time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(tr.project, ".gitlab-ci.yml"), []byte(b.String()), 0o644); err != nil {
		tr.t.Fatal(err)
	}
}

// The two runs of a trial.
const (
	phaseFault   = "fault"
	phaseRecover = "recover"
)

// runnerProc is one `runner exec` invocation, in its own process group.
type runnerProc struct {
	phase  string
	cmd    *exec.Cmd
	start  time.Time
	stdout string // file paths
	stderr string
	done   chan struct{}
	end    time.Time
	state  *os.ProcessState
	killed bool // by the harness, at runLimit
}

func (tr *trial) startRunner(phase string) *runnerProc {
	rp := &runnerProc{phase: phase, done: make(chan struct{}),
		stdout: filepath.Join(tr.dir, phase+".stdout"), stderr: filepath.Join(tr.dir, phase+".stderr")}
	out, err := os.Create(rp.stdout)
	if err != nil {
		tr.t.Fatal(err)
	}
	errf, err := os.Create(rp.stderr)
	if err != nil {
		tr.t.Fatal(err)
	}
	args := []string{"exec", "--config", tr.cfgPath, "--dir", tr.project, "--log-dir", filepath.Join(tr.dir, "logs-"+phase)}
	if os.Getenv("CHAOS_VERBOSE") == "1" {
		args = append(args, "--verbose") // the pool's and the plugin's logs, in the run's stderr
	}
	cmd := exec.Command(bins.runner, args...)
	cmd.Dir = tr.dir
	// The plugins' go-plugin sockets go into the trial's directory: a plugin killed
	// with SIGKILL cannot remove its own, and the trial's directory goes with the trial.
	cmd.Env = append(os.Environ(), "HOME="+tr.dir, "XDG_STATE_HOME="+filepath.Join(tr.dir, "xdg-state"),
		"XDG_CONFIG_HOME="+filepath.Join(tr.dir, "xdg-config"), "PLUGIN_UNIX_SOCKET_DIR="+tr.dir, tr.envKV())
	// Files, not pipes: a process that inherits them must not keep Wait from returning.
	cmd.Stdout, cmd.Stderr = out, errf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	rp.start = time.Now()
	if err := cmd.Start(); err != nil {
		tr.t.Fatalf("start the runner: %v", err)
	}
	out.Close()
	errf.Close()
	rp.cmd = cmd
	go func() {
		_ = cmd.Wait()
		rp.end, rp.state = time.Now(), cmd.ProcessState
		close(rp.done)
	}()
	return rp
}

func (rp *runnerProc) pid() int { return rp.cmd.Process.Pid }

func (rp *runnerProc) exited() bool {
	select {
	case <-rp.done:
		return true
	default:
		return false
	}
}

// status describes how the run ended.
func (rp *runnerProc) status() string {
	if rp.state == nil {
		return "still running"
	}
	if ws, ok := rp.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by " + sigName(ws.Signal())
	}
	return fmt.Sprintf("exit %d", rp.state.ExitCode())
}

func (rp *runnerProc) output() (string, string) {
	o, _ := os.ReadFile(rp.stdout)
	e, _ := os.ReadFile(rp.stderr)
	return string(o), string(e)
}

// plugins returns the runner's plugin processes: its live children.
func (rp *runnerProc) plugins() []proc {
	return children(rp.pid())
}

// waitPlugin waits until the runner has a plugin process, and returns them.
func (tr *trial) waitPlugin(ctx context.Context, rp *runnerProc) []proc {
	for {
		if ps := rp.plugins(); len(ps) > 0 {
			return ps
		}
		if !sleepCtx(ctx, 5*time.Millisecond) || rp.exited() {
			return nil
		}
	}
}

// wait waits for the runner to exit, killing it at runLimit; it reports whether it
// exited by itself. A trial that waits long goes idle meanwhile.
func (tr *trial) wait(rp *runnerProc) bool {
	deadline := time.NewTimer(time.Until(rp.start.Add(runLimit)))
	defer deadline.Stop()
	idle := time.NewTimer(idleAfter)
	defer idle.Stop()
	idling := false
	defer func() {
		if idling {
			tr.slots.wake()
		}
	}()
	for {
		select {
		case <-rp.done:
			return !rp.killed
		case <-idle.C:
			tr.slots.goIdle()
			idling = true
		case <-deadline.C:
			rp.killed = true
			_ = syscall.Kill(rp.pid(), syscall.SIGKILL)
		}
	}
}

// waitPool waits until the run's pool has started (its first progress line: the
// plugin launched and initialised); false if the run ended first.
func (tr *trial) waitPool(ctx context.Context, rp *runnerProc) bool {
	for {
		if stdout, _ := rp.output(); progress(stdout) != "" {
			tr.note("the pool started %s after the runner", time.Since(rp.start).Round(time.Millisecond))
			return true
		}
		if rp.exited() || !sleepCtx(ctx, 5*time.Millisecond) {
			tr.note("the run ended before its pool started: nothing injected")
			return false
		}
	}
}

// sleepCtx sleeps d; false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// untilPoint waits until the fault point, d after the runner started; false if the
// run ended first (the fault is then not injected, and the trial says so).
func (tr *trial) untilPoint(ctx context.Context, rp *runnerProc, d time.Duration) bool {
	tr.note("fault point: %s after the runner started", d.Round(time.Millisecond))
	if !sleepCtx(ctx, time.Until(rp.start.Add(d))) || rp.exited() {
		tr.note("the run ended before the fault point: nothing injected")
		return false
	}
	return true
}

// faultPoint draws when to strike: a third of the trials in the first 400 ms (plugin
// launch, first scale-up, intents being recorded), the rest over the pipeline's
// expected length.
func (tr *trial) faultPoint() time.Duration {
	overhead := 150 * time.Millisecond // to get an instance
	if tr.cloud != nil {
		overhead = 500 * time.Millisecond // VMs boot in 300 ms
	}
	hi := 2*overhead + max(tr.durations["a"], tr.durations["b"]) + tr.durations["c"]
	if tr.intn(3) == 0 {
		return tr.between(0, 400*time.Millisecond)
	}
	return tr.between(400*time.Millisecond, hi)
}

// marker is one line of the marker file.
type marker struct {
	at    time.Time
	kind  string // start or done
	phase string
	job   string
	pid   string
	pwd   string
}

func (tr *trial) readMarkers() []marker {
	f, err := os.Open(tr.markers)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []marker
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.SplitN(sc.Text(), " ", 6)
		if len(fs) < 5 {
			continue
		}
		ns, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			continue
		}
		m := marker{at: time.Unix(0, ns), kind: fs[1], phase: fs[2], job: fs[3], pid: fs[4]}
		if len(fs) == 6 {
			m.pwd = fs[5]
		}
		out = append(out, m)
	}
	return out
}

// progress condenses a run's progress lines: "a running 0.1s; a passed 1.1s; …".
func progress(stdout string) string {
	var out []string
	for _, l := range strings.Split(stdout, "\n") {
		if m := progressLine.FindStringSubmatch(l); m != nil {
			at := strings.TrimSpace(strings.Trim(strings.SplitN(l, "]", 2)[0], "["))
			st := strings.Fields(m[2])[0]
			out = append(out, m[1]+" "+st+" "+at)
		}
	}
	return strings.Join(out, "; ")
}

// markerSummary condenses the marker file: "fault a start 12 +0.31s; …", times since
// the first marker.
func (tr *trial) markerSummary() string {
	ms := tr.readMarkers()
	if len(ms) == 0 {
		return "none"
	}
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%s %s %s pid %s +%.2fs", m.phase, m.job, m.kind, m.pid, m.at.Sub(ms[0].at).Seconds()))
	}
	return strings.Join(out, "; ")
}

// progressLine matches the runner's progress output: "[   1.1s] a passed 1.02s on …".
var progressLine = regexp.MustCompile(`^\[\s*[0-9.]+s\] (\S+) +(.*)$`)

// reportedPassed returns the jobs the run reported as passed.
func reportedPassed(stdout string) map[string]bool {
	out := map[string]bool{}
	for _, l := range strings.Split(stdout, "\n") {
		if m := progressLine.FindStringSubmatch(l); m != nil && strings.HasPrefix(m[2], "passed") {
			out[m[1]] = true
		}
	}
	return out
}

// jobReport is the accounting of one run's jobs.
type jobReport struct {
	lost        []string // did not complete where that is not allowed, or reported passed without completing
	interrupted []string // did not complete, allowed by the fault and not reported passed
	double      []string // ran to the end twice, or an attempt outlived a later one's start
	orphans     []string // completed after their runner was gone
}

// outcome is what an ended run reported, for the job accounting.
type outcome struct {
	phase  string
	stdout string
	exit0  bool
	end    time.Time // when the runner exited
	status string
}

func (rp *runnerProc) outcome() outcome {
	stdout, _ := rp.output()
	return outcome{phase: rp.phase, stdout: stdout, exit0: rp.state != nil && rp.state.ExitCode() == 0, end: rp.end, status: rp.status()}
}

// accountJobs compares what a run reported with the markers its jobs wrote.
func accountJobs(o outcome, markers []marker, jobs []string, mayLose bool) jobReport {
	passed := reportedPassed(o.stdout)
	pipelinePassed := o.exit0 && strings.Contains(o.stdout, "Pipeline PASSED")
	starts, dones := map[string][]marker{}, map[string][]marker{}
	for _, m := range markers {
		if m.phase != o.phase {
			continue
		}
		switch m.kind {
		case "start":
			starts[m.job] = append(starts[m.job], m)
		case "done":
			dones[m.job] = append(dones[m.job], m)
		}
	}
	var r jobReport
	for _, j := range jobs {
		ds := dones[j]
		switch {
		case len(ds) > 1:
			r.double = append(r.double, fmt.Sprintf("job %s ran to the end %d times (shell pids %s)", j, len(ds), pids(ds)))
		case len(ds) == 1:
			for _, s := range starts[j] {
				if s.pid != ds[0].pid && s.at.After(starts0(starts[j], ds[0].pid)) && ds[0].at.After(s.at) {
					r.double = append(r.double, fmt.Sprintf("job %s: attempt %s finished after attempt %s had started", j, ds[0].pid, s.pid))
					break
				}
			}
		}
		for _, d := range ds {
			if !o.end.IsZero() && d.at.After(o.end.Add(orphanSlack)) {
				r.orphans = append(r.orphans, fmt.Sprintf("job %s (shell pid %s) finished %s after its runner exited", j, d.pid, d.at.Sub(o.end).Round(time.Millisecond)))
			}
		}
		if len(ds) > 0 {
			continue
		}
		switch {
		case passed[j] || pipelinePassed:
			r.lost = append(r.lost, fmt.Sprintf("job %s was reported passed but never ran to the end (%d attempts started)", j, len(starts[j])))
		case mayLose:
			r.interrupted = append(r.interrupted, j)
		default:
			r.lost = append(r.lost, fmt.Sprintf("job %s did not complete (%d attempts started; run %s)", j, len(starts[j]), o.status))
		}
	}
	return r
}

func pids(ms []marker) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.pid)
	}
	return strings.Join(out, ", ")
}

// starts0 is the start time of the attempt with shell pid pid.
func starts0(ms []marker, pid string) time.Time {
	for _, m := range ms {
		if m.pid == pid {
			return m.at
		}
	}
	return time.Time{}
}

// crashed returns the first lines of a Go crash in the run's output, if any.
func crashed(stderr string) string {
	for _, sig := range []string{"panic: ", "fatal error: "} {
		if i := strings.Index(stderr, sig); i >= 0 {
			return firstLines(stderr[i:], 4)
		}
	}
	return ""
}

func firstLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) > n {
		ls = ls[:n]
	}
	return strings.Join(ls, " | ")
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, " | ")
}

// settle polls fn until it returns nothing or d has passed, and returns its last value.
func settle[T any](d time.Duration, fn func() []T) []T {
	var v []T
	eventually.Poll(d, func() bool { v = fn(); return len(v) == 0 })
	return v
}

// describe renders an instance map sorted, for messages.
func describe(m map[string]string) []string {
	var out []string
	for id, what := range m {
		out = append(out, id+" ("+what+")")
	}
	sort.Strings(out)
	return out
}

// result is what one trial found.
type result struct {
	plugin, fault string
	index         int
	seed          uint64
	skipped       string

	leftByFault     int // instances the faulted run left (a violation if it shut down by itself)
	leakedInstances int // after the recovery run
	leakedProcs     int
	lostJobs        int
	interrupted     int
	doubleRuns      int
	recovered       bool
	recovery        time.Duration

	violations []string
	notes      []string
}

func (r *result) violate(format string, args ...any) {
	r.violations = append(r.violations, fmt.Sprintf(format, args...))
}

// run runs the trial: the faulted run, the fault's between step, the recovery run, and
// the counts.
func (tr *trial) run() *result {
	res := &result{plugin: tr.plugin, fault: tr.fault.name, index: tr.index, seed: tr.seed}
	f := tr.fault
	tr.setup()
	if f.prepare != nil {
		if skip := f.prepare(tr); skip != "" {
			res.skipped = skip
			return res
		}
	}
	tr.writeConfig()

	// 1. The faulted run.
	tr.writePipeline(phaseFault)
	rp := tr.startRunner(phaseFault)
	ctx, cancel := context.WithCancel(context.Background())
	injected := make(chan struct{})
	go func() {
		defer close(injected)
		f.inject(ctx, tr, rp)
	}()
	byItself := tr.wait(rp)
	cancel()
	<-injected
	stdout, stderr := rp.output()
	tr.note("faulted run: %s after %s; progress: %s", rp.status(), rp.end.Sub(rp.start).Round(time.Millisecond), progress(stdout))
	if !byItself {
		res.violate("the faulted run did not exit within %s and was killed; last output: %s", runLimit, lastLines(stdout+stderr, 3))
	}
	if c := crashed(stderr); c != "" {
		res.violate("the faulted run crashed: %s", c)
	}
	left := tr.target.instances()
	if f.survives && byItself {
		left = tr.settleInstances(settleLeft)
	}
	res.leftByFault = len(left)
	if len(left) > 0 {
		if f.survives && byItself {
			res.violate("the faulted run shut down by itself but left %d instances: %s", len(left), strings.Join(describe(left), ", "))
		} else {
			tr.note("the faulted run left %d instances: %s", len(left), strings.Join(describe(left), ", "))
		}
	}
	jr := accountJobs(rp.outcome(), tr.readMarkers(), faultJobs, f.mayLose)
	res.add(jr, "faulted run")
	if f.survives && !f.mayLose && byItself && len(jr.lost) == 0 && rp.state.ExitCode() != 0 {
		res.violate("the faulted run exited %d although every job completed: %s", rp.state.ExitCode(), lastLines(stderr, 3))
	}
	if f.after != nil {
		f.after(tr)
	}

	// 2. The recovery run, and the time until no instance from before it is left.
	before := tr.target.instances()
	tr.writePipeline(phaseRecover)
	rp2 := tr.startRunner(phaseRecover)
	recovered := make(chan time.Duration, 1)
	stopPoll := make(chan struct{})
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		if len(before) == 0 {
			recovered <- 0 // nothing to recover from
			return
		}
		for {
			now := tr.target.instances()
			gone := true
			for id := range before {
				if _, ok := now[id]; ok {
					gone = false
					break
				}
			}
			if gone {
				recovered <- time.Since(rp2.start)
				return
			}
			select {
			case <-stopPoll:
				return
			case <-time.After(pollInterval):
			}
		}
	}()
	byItself2 := tr.wait(rp2)
	stdout2, stderr2 := rp2.output()
	tr.note("recovery run: %s after %s; progress: %s", rp2.status(), rp2.end.Sub(rp2.start).Round(time.Millisecond), progress(stdout2))
	if !byItself2 {
		res.violate("the recovery run did not exit within %s and was killed; last output: %s", runLimit, lastLines(stdout2+stderr2, 3))
	}
	if c := crashed(stderr2); c != "" {
		res.violate("the recovery run crashed: %s", c)
	}
	if rp2.state.ExitCode() != 0 || !strings.Contains(stdout2, "Pipeline PASSED") {
		res.violate("the recovery run failed (%s): %s", rp2.status(), lastLines(stdout2+"\n"+stderr2, 4))
	}
	res.add(accountJobs(rp2.outcome(), tr.readMarkers(), recoverJobs, false), "recovery run")

	// 3. What is left once the recovery run is over.
	leaked := tr.settleInstances(settleFinal)
	res.leakedInstances = len(leaked)
	if len(leaked) > 0 {
		res.violate("%d instances leaked after the recovery run: %s", len(leaked), strings.Join(describe(leaked), ", "))
	}
	procs := settle(settleFinal, func() []proc { return tr.strayProcs() })
	res.leakedProcs += len(procs)
	if len(procs) > 0 {
		var ps []string
		for _, p := range procs {
			ps = append(ps, p.String())
		}
		res.violate("%d processes of the trial left alive: %s", len(procs), strings.Join(ps, "; "))
	}
	close(stopPoll)
	<-pollDone
	select {
	case d := <-recovered:
		res.recovered, res.recovery = true, d
	default:
		res.violate("never recovered: instances from before the restart were still there at the end")
	}
	killAll(trialProcs(tr.root, tr.envKV()))
	tr.note("markers: %s", tr.markerSummary())
	if keep := os.Getenv("CHAOS_KEEP"); keep != "" && len(res.violations) > 0 {
		dst := filepath.Join(keep, strings.ReplaceAll(tr.t.Name(), "/", "-"))
		copyRegular(tr.dir, dst)
		tr.note("trial directory kept in %s", dst)
	}
	tr.mu.Lock()
	res.notes = slices.Clone(tr.notes)
	tr.mu.Unlock()
	return res
}

// add counts a run's job accounting into the result.
func (r *result) add(jr jobReport, run string) {
	r.lostJobs += len(jr.lost)
	r.interrupted += len(jr.interrupted)
	r.doubleRuns += len(jr.double)
	for _, l := range jr.lost {
		r.violate("%s: lost job: %s", run, l)
	}
	for _, d := range jr.double {
		r.violate("%s: double run: %s", run, d)
	}
	// A job that finished after its runner was gone was a process left alive.
	r.leakedProcs += len(jr.orphans)
	for _, o := range jr.orphans {
		r.violate("%s: orphaned job: %s", run, o)
	}
}

// strayProcs lists the trial's live processes but local instance servers (those count
// as instances).
func (tr *trial) strayProcs() []proc {
	var out []proc
	for _, p := range trialProcs(tr.root, tr.envKV()) {
		if tr.local != nil {
			if _, ok := p.isInstanceServer(tr.local.root); ok {
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

// settleInstances polls the target's instances until there are none or d has passed,
// and returns the last listing.
func (tr *trial) settleInstances(d time.Duration) map[string]string {
	var m map[string]string
	eventually.Poll(d, func() bool { m = tr.target.instances(); return len(m) == 0 })
	return m
}

// copyRegular copies the regular files under src to dst (CHAOS_KEEP: a failed trial's
// configuration, outputs, logs and markers for a closer look), skipping what it cannot
// read.
func copyRegular(src, dst string) {
	_ = filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(src, path)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		target := filepath.Join(dst, rel)
		if os.MkdirAll(filepath.Dir(target), 0o755) == nil {
			_ = os.WriteFile(target, data, 0o644)
		}
		return nil
	})
}
