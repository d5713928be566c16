package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
)

// fault is one way of breaking a run.
type fault struct {
	name string
	// on says which plugins the fault applies to: all, local or cloud.
	on string
	// how says how it is injected, for the report.
	how string
	// mayLose: the faulted run's jobs may be lost (not run to the end), because the
	// fault kills or stops what runs them; they must then not be reported passed. When
	// false, every job of the faulted run must complete.
	mayLose bool
	// survives: the faulted runner ends by itself and can delete its instances, so
	// instances it leaves behind are leaks (when false they are for the restart to
	// clean up, and only reported).
	survives bool
	// prepare runs before the faulted run; it returns why the trial must be skipped.
	prepare func(tr *trial) string
	// inject runs beside the faulted run; ctx ends when the run ends.
	inject func(ctx context.Context, tr *trial, rp *runnerProc)
	// after runs between the faulted run and the recovery run.
	after func(tr *trial)
	// slow: its trials wait out timeouts (minutes), so they start first.
	slow bool
}

func (f *fault) appliesTo(plugin string) bool {
	switch f.on {
	case "local":
		return plugin == pluginLocal
	case "cloud":
		return plugin != pluginLocal
	}
	return true
}

// faults is the fault model of the suite, in the order of the report.
var faults = []*fault{
	{name: "runner-kill9", on: "all", mayLose: true,
		how: "SIGKILL to the runner at the fault point",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if tr.untilPoint(ctx, rp, tr.faultPoint()) {
				signal(tr, "runner", rp.pid(), syscall.SIGKILL)
			}
		}},
	{name: "plugin-kill9", on: "all", survives: true,
		how: "SIGKILL to the plugin process at the fault point, once the pool has started (a plugin dying during its launch is a failed start); the runner lives on",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if tr.untilPoint(ctx, rp, tr.faultPoint()) && tr.waitPool(ctx, rp) {
				for _, p := range tr.waitPlugin(ctx, rp) {
					signal(tr, "plugin", p.pid, syscall.SIGKILL)
				}
			}
		}},
	{name: "both-kill9", on: "all", mayLose: true,
		how: "SIGKILL to the runner and to the plugin, back to back in a seeded order",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if !tr.untilPoint(ctx, rp, tr.faultPoint()) {
				return
			}
			ps := tr.waitPlugin(ctx, rp)
			runnerFirst := tr.intn(2) == 0
			if runnerFirst {
				signal(tr, "runner", rp.pid(), syscall.SIGKILL)
			}
			for _, p := range ps {
				signal(tr, "plugin", p.pid, syscall.SIGKILL)
			}
			if !runnerFirst {
				signal(tr, "runner", rp.pid(), syscall.SIGKILL)
			}
		}},
	{name: "group-sigterm", on: "all", mayLose: true, survives: true,
		how: "SIGTERM to the runner's whole process group (as `timeout`, `kill -TERM -PGID` and a service stop send it): a graceful stop that cancels the jobs",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if tr.untilPoint(ctx, rp, tr.faultPoint()) {
				signal(tr, "process group", -rp.pid(), syscall.SIGTERM)
			}
		}},
	{name: "plugin-hang", on: "all", survives: true,
		how: "SIGSTOP to the plugin, SIGCONT 0.5-5 s later",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if !tr.untilPoint(ctx, rp, tr.faultPoint()) {
				return
			}
			ps := tr.waitPlugin(ctx, rp)
			for _, p := range ps {
				signal(tr, "plugin", p.pid, syscall.SIGSTOP)
			}
			d := tr.between(500*time.Millisecond, 5*time.Second)
			tr.note("the plugin hangs for %s", d.Round(time.Millisecond))
			sleepCtx(ctx, d) // the hang ends when the run does, too
			for _, p := range ps {
				// The same process (it may have exec'd meanwhile: stopped as it was launched).
				if q, ok := readProc(p.pid); ok && q.same(p) {
					signal(tr, "plugin", p.pid, syscall.SIGCONT)
				}
			}
		}},
	{name: "plugin-hang-forever", on: "all", mayLose: true, slow: true,
		how: "SIGSTOP to the plugin, never continued: the runner must give up on it and not leave it behind",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if tr.untilPoint(ctx, rp, tr.faultPoint()) {
				for _, p := range tr.waitPlugin(ctx, rp) {
					signal(tr, "plugin", p.pid, syscall.SIGSTOP)
				}
			}
		}},
	{name: "server-kill", on: "local", survives: true,
		how:    "SIGKILL to the instance server under a running job, at a seeded moment of the job (at least 150 ms before its end); the job is retried on a new slot",
		inject: killServerUnderJob},
	{name: "api-throttle", on: "cloud", survives: true,
		how: "every API family throttled to 0.5-3 calls/s (burst 1) for 2-6 s",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if !tr.untilPoint(ctx, rp, tr.faultPoint()) {
				return
			}
			c := tr.cloud
			rate := 0.5 + float64(tr.intn(2500))/1000
			d := tr.between(2*time.Second, 6*time.Second)
			for _, fam := range c.familyNames() {
				c.cloud.Throttle(fam, rate, 1)
			}
			tr.note("API throttled to %.2f calls/s for %s", rate, d.Round(time.Millisecond))
			sleepCtx(ctx, d)
			for _, fam := range c.familyNames() {
				c.cloud.Throttle(fam, 0, 0)
			}
		}},
	{name: "api-5xx", on: "cloud", survives: true,
		how: "the next 1-4 calls of every API operation fail with an internal error (HTTP 500); cleared after 1-4 s",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if !tr.untilPoint(ctx, rp, tr.faultPoint()) {
				return
			}
			c := tr.cloud
			for _, op := range c.ops() {
				c.cloud.Inject(op, 1+tr.intn(4), &cloudsim.Error{Kind: cloudsim.KindInternal, Message: "chaos: injected internal error"})
			}
			d := tr.between(time.Second, 4*time.Second)
			tr.note("API calls fail with 500 for up to %s", d.Round(time.Millisecond))
			sleepCtx(ctx, d)
			c.cloud.ClearFaults()
		}},
	{name: "api-timeout", on: "cloud", survives: true,
		how:     "for 2-6 s, 30-70% of API requests hang 0.5-3 s and then lose their connection, before or after the cloud acted on them",
		prepare: startFaultProxy,
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if !tr.untilPoint(ctx, rp, tr.faultPoint()) {
				return
			}
			p := 0.3 + float64(tr.intn(400))/1000
			d := tr.between(2*time.Second, 6*time.Second)
			tr.proxy.set(p, tr.seed)
			tr.note("%.0f%% of API requests time out for %s", p*100, d.Round(time.Millisecond))
			sleepCtx(ctx, d)
			tr.note("%d requests timed out", tr.proxy.set(0, 0))
		}},
	{name: "partial-increase", on: "cloud", survives: true,
		how: "for 1-5 s the group can hold only as many VMs as it has (at least 1, sometimes 1 more): a scale-up is fulfilled in part, the rest launches late",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if !tr.untilPoint(ctx, rp, tr.faultPoint()) {
				return
			}
			c := tr.cloud
			live := len(c.instances())
			limit := max(1, live+tr.intn(2))
			_ = c.cloud.UpdateSettings(c.group, func(g *cloudsim.Group) { g.Capacity = limit })
			d := tr.between(time.Second, 5*time.Second)
			tr.note("group capacity %d (with %d VMs) for %s", limit, live, d.Round(time.Millisecond))
			sleepCtx(ctx, d)
			_ = c.cloud.UpdateSettings(c.group, func(g *cloudsim.Group) { g.Capacity = 0 })
		}},
	{name: "late-listing", on: "cloud", survives: true,
		how:    "the cloud's detailed listing and lookups show a new VM only 0.5-3 s after its creation (eventual consistency), for the whole trial",
		inject: func(context.Context, *trial, *runnerProc) {}},
	{name: "state-disk-full", on: "all", mayLose: true, survives: true,
		how:     "the state directory is a 1 MiB tmpfs, filled up at the fault point; freed before the restart",
		prepare: mountStateDisk,
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			if tr.untilPoint(ctx, rp, tr.faultPoint()) {
				n, err := fill(filepath.Join(tr.state, "filler"))
				tr.note("state disk filled with %d bytes (%v)", n, err)
			}
		},
		after: func(tr *trial) {
			if err := os.Remove(filepath.Join(tr.state, "filler")); err == nil {
				tr.note("state disk freed")
			}
		}},
	{name: "state-corrupt", on: "all", mayLose: true,
		how: "SIGKILL to the runner once its state file exists, then the file is corrupted (garbage, zeroed meta pages, flipped bytes, truncated, a torn page)",
		inject: func(ctx context.Context, tr *trial, rp *runnerProc) {
			for stateFile(tr) == "" {
				if !sleepCtx(ctx, 5*time.Millisecond) {
					tr.note("no state file before the run ended")
					return
				}
			}
			if tr.untilPoint(ctx, rp, max(tr.faultPoint(), time.Since(rp.start))) {
				signal(tr, "runner", rp.pid(), syscall.SIGKILL)
			}
		},
		after: corruptState},
}

// signal sends sig to pid (a negative pid is a process group) and notes it.
func signal(tr *trial, what string, pid int, sig syscall.Signal) {
	err := syscall.Kill(pid, sig)
	if err != nil {
		tr.note("%s to %s %d: %v", sigName(sig), what, pid, err)
		return
	}
	tr.note("%s to %s %d", sigName(sig), what, pid)
}

// sigName names the signals the suite sends and sees.
func sigName(sig syscall.Signal) string {
	names := map[syscall.Signal]string{syscall.SIGKILL: "SIGKILL", syscall.SIGTERM: "SIGTERM", syscall.SIGSTOP: "SIGSTOP",
		syscall.SIGCONT: "SIGCONT", syscall.SIGINT: "SIGINT", syscall.SIGHUP: "SIGHUP", syscall.SIGQUIT: "SIGQUIT",
		syscall.SIGABRT: "SIGABRT", syscall.SIGSEGV: "SIGSEGV", syscall.SIGPIPE: "SIGPIPE"}
	if n, ok := names[sig]; ok {
		return n
	}
	return sig.String()
}

// killMargin is how long before a job's end its server is killed at the latest.
const killMargin = 150 * time.Millisecond

// killServerUnderJob waits for a seeded job of the faulted run to start, lets it run
// for a seeded part of its duration, and SIGKILLs its instance's server.
func killServerUnderJob(ctx context.Context, tr *trial, rp *runnerProc) {
	job := faultJobs[tr.intn(len(faultJobs))]
	var m marker
	for found := false; !found; {
		for _, x := range tr.readMarkers() {
			if x.phase == phaseFault && x.job == job && x.kind == "start" {
				m, found = x, true
				break
			}
		}
		if !found && !sleepCtx(ctx, 10*time.Millisecond) {
			tr.note("job %s never started: nothing injected", job)
			return
		}
	}
	// At least killMargin before the job's end: a job that ends as its server dies may
	// rightly be retried (its result was lost), which is not the double run looked for.
	d := tr.between(0, tr.durations[job]-killMargin)
	if !sleepCtx(ctx, time.Until(m.at.Add(d))) {
		tr.note("the run ended before the fault point: nothing injected")
		return
	}
	// The job works in root_dir/<instance>/home/…
	rel, err := filepath.Rel(tr.local.root, m.pwd)
	if err != nil || strings.HasPrefix(rel, "..") {
		tr.note("job %s works in %s, not on an instance: nothing injected", job, m.pwd)
		return
	}
	id := strings.Split(rel, string(filepath.Separator))[0]
	pid, ok := tr.local.serverOf(id)
	if !ok {
		tr.note("instance %s of job %s has no server: nothing injected", id, job)
		return
	}
	tr.note("job %s on %s, %s into it", job, id, d.Round(time.Millisecond))
	signal(tr, "instance server of "+id, pid, syscall.SIGKILL)
}

// mountStateDisk makes the state directory a small tmpfs, unmounted when the trial ends.
func mountStateDisk(tr *trial) string {
	if err := syscall.Mount("tmpfs", tr.state, "tmpfs", 0, "size=1m,mode=0755"); err != nil {
		return fmt.Sprintf("cannot mount a tmpfs on the state directory (needs root or CAP_SYS_ADMIN): %v", err)
	}
	tr.t.Cleanup(func() {
		if err := syscall.Unmount(tr.state, syscall.MNT_DETACH); err != nil {
			tr.t.Errorf("unmount %s: %v", tr.state, err)
		}
	})
	return ""
}

// fill writes path until the file system is full.
func fill(path string) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, err := f.Write(buf)
		n += int64(k)
		if err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return n, nil
			}
			return n, err
		}
	}
}

// stateFile returns the runner's state file, once it exists.
func stateFile(tr *trial) string {
	m, _ := filepath.Glob(filepath.Join(tr.state, "*.db"))
	if len(m) == 0 {
		return ""
	}
	return m[0]
}

// corruptState damages the state file in one of several seeded ways.
func corruptState(tr *trial) {
	path := stateFile(tr)
	if path == "" {
		tr.note("no state file to corrupt")
		return
	}
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		tr.note("state file unreadable or empty (%v): not corrupted", err)
		return
	}
	const page = 4096
	var how string
	switch tr.intn(5) {
	case 0:
		tr.garble(data)
		how = "overwritten with garbage"
	case 1:
		clear(data[:min(len(data), 2*page)])
		how = "meta pages zeroed"
	case 2:
		n := 1 + tr.intn(64)
		for range n {
			data[tr.intn(len(data))] ^= byte(1 + tr.intn(255))
		}
		how = fmt.Sprintf("%d bytes flipped", n)
	case 3:
		k := tr.intn(len(data))
		data = data[:k]
		how = fmt.Sprintf("truncated to %d of its bytes", k)
	case 4:
		p := tr.intn(max(1, len(data)/page))
		end := min(len(data), (p+1)*page)
		tr.garble(data[p*page : end])
		how = fmt.Sprintf("page %d torn", p)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tr.t.Errorf("corrupt the state file: %v", err)
		return
	}
	tr.note("state file %s %s", filepath.Base(path), how)
}

// garble overwrites b with seeded random bytes.
func (tr *trial) garble(b []byte) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for i := range b {
		b[i] = byte(tr.rnd.Uint32())
	}
}
