package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
	"github.com/flotilla-ci/flotilla/host/runcmd"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/internal/etcdtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// These tests run several `runner run` processes (runner managers) with the same
// [[runners]] entry and token, each with its own config directory and so its own
// system ID, sharing one pool through a real three-member etcd cluster, on the local
// plugin with one root_dir (shared = true), against the fake GitLab. Every job's
// script appends "start" and "done" lines to a file of the test, naming the job and
// the instance it ran on (the local plugin's HOME is <root_dir>/<instance>/home), so
// that a job run twice, or an instance given more jobs than it has slots, shows.

const (
	haToken  = "glrt-ha-token"
	haRunner = "ha"
	// haPrefix is the managers' [coordination] prefix.
	haPrefix = "/t"
	// haTTL is the managers' lease_ttl: short, so that deaths are seen quickly, but
	// above the 2s minimum: on 2 busy cores a 2s lease was once lost to a late
	// keepalive under the load of the many-jobs test.
	haTTL = 3 * time.Second
	// haCapacity and haMaxInstances size the pool: 24 slots, as many as the three
	// managers' concurrent jobs (haConcurrent each).
	haCapacity     = 4
	haMaxInstances = 6
	haConcurrent   = 8
	// haJobsEnv sets the number of jobs of TestHAManyJobsExactlyOnce.
	haJobsEnv = "FLOTILLA_HA_JOBS"
)

// haPool is one shared pool: the etcd cluster, the fake GitLab, the local plugin's
// root_dir and the managers started on them.
type haPool struct {
	t         *testing.T
	bin       string
	etcd      *etcdtest.Cluster
	cli       *clientv3.Client
	srv       *gitlabtest.Server
	repo, sha string
	root      string       // the plugins' shared root_dir
	marks     string       // the file the jobs append their start and done lines to
	slots     string       // the pool's slot keys in etcd: <prefix>/pools/<escaped owner>/slots/
	ms        []*haManager // the managers started so far (each gets the next system ID)
	// plugin, if set, replaces the shared local plugin: the plugin lines and tables of
	// [runners.autoscaler], indented as there.
	plugin string
}

func newHAPool(t *testing.T) *haPool {
	t.Helper()
	if _, err := os.Stat(gitlabtest.GitHTTPBackend); err != nil {
		t.Skipf("git http-backend not available (%s): install Debian's git", gitlabtest.GitHTTPBackend)
	}
	cluster := etcdtest.Start(t, 3) // skips without etcd, unless FLOTILLA_REQUIRE_ETCD=1
	p := &haPool{t: t, bin: runnerBinary(t), etcd: cluster, cli: cluster.Client(t),
		srv:  gitlabtest.New(t, gitlabtest.Options{LongPoll: 300 * time.Millisecond}),
		root: filepath.Join(t.TempDir(), "instances"), marks: filepath.Join(t.TempDir(), "marks")}
	p.srv.AddRunner(haToken)
	p.repo, p.sha = p.srv.AddRepo("group/project", map[string]string{"hello.txt": "hello\n"})
	// The pool's owner, as host/pool names it: "<URL>|<runner name>".
	p.slots = haPrefix + "/pools/" + url.PathEscape(p.srv.URL+"|"+haRunner) + "/slots/"
	t.Cleanup(func() {
		if t.Failed() {
			for _, m := range p.ms {
				t.Logf("manager %s: warnings and errors:\n%s", m.id, m.problems())
			}
		}
	})
	return p
}

// pluginTOML is the plugin part of [runners.autoscaler]: the shared local plugin on
// the pool's root_dir, unless the pool is given another plugin (p.plugin).
func (p *haPool) pluginTOML(boot string) string {
	if p.plugin != "" {
		return p.plugin
	}
	return fmt.Sprintf("    plugin = \"local\"\n    [runners.autoscaler.plugin_config]\n      root_dir = %q\n      shared = true\n%s", p.root, boot)
}

// haOptions vary a manager's configuration.
type haOptions struct {
	// endpoints default to the cluster's members.
	endpoints []string
	// idleCount and idleTime are the pool's one policy (idle_time default "5m").
	idleCount int
	idleTime  string
	// bootDelay keeps new local instances booting that long (default none).
	bootDelay string
}

// haManager is one `runner run` of the pool.
type haManager struct {
	*proc
	id   string // its system ID
	addr string // its listen_address, once it serves
}

// start runs a manager with its own config directory and system ID and waits until
// it serves its status.
func (p *haPool) start(o haOptions) *haManager {
	p.t.Helper()
	if o.endpoints == nil {
		o.endpoints = p.etcd.Endpoints()
	}
	if o.idleTime == "" {
		o.idleTime = "5m"
	}
	m := &haManager{id: fmt.Sprintf("s_00000000ha%02d", len(p.ms)+1)}
	p.ms = append(p.ms, m)
	dir := p.t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, runcmd.SystemIDFile), []byte(m.id+"\n"), 0o600); err != nil {
		p.t.Fatal(err)
	}
	eps, _ := json.Marshal(o.endpoints)
	boot := ""
	if o.bootDelay != "" {
		boot = fmt.Sprintf("      boot_delay = %q\n", o.bootDelay)
	}
	cfg := fmt.Sprintf(`concurrent = %d
check_interval = 1
listen_address = "127.0.0.1:0"
[coordination]
  endpoints = %s
  lease_ttl = %q
  prefix = %q
[[runners]]
  name = %q
  url = %q
  token = %q
  executor = "instance"
  shell = "bash"
  [runners.autoscaler]
    capacity_per_instance = %d
    max_instances = %d
    update_interval = "500ms"
    update_interval_when_expecting = "100ms"
%s    [[runners.autoscaler.policy]]
      idle_count = %d
      idle_time = %q
`, haConcurrent, eps, haTTL.String(), haPrefix, haRunner, p.srv.URL, haToken, haCapacity, haMaxInstances, p.pluginTOML(boot), o.idleCount, o.idleTime)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		p.t.Fatal(err)
	}
	m.proc = startRunner(p.t, p.bin, dir, []string{"XDG_STATE_HOME=" + filepath.Join(dir, "state")}, nil,
		"run", "--config", path, "--log-format", "json")
	eventually.NoError(p.t, "manager "+m.id+" to serve its status", time.Minute, func() error {
		select {
		case <-m.done:
			p.t.Fatalf("manager %s ended at its start:\n%s", m.id, m.output())
		default:
		}
		for _, l := range m.logs() {
			if l["msg"] == "serving metrics, health and status" {
				m.addr, _ = l["address"].(string)
				return nil
			}
		}
		return fmt.Errorf("no status address in its log yet:\n%s", m.output())
	})
	return m
}

// logs are the manager's JSON log records so far.
func (m *haManager) logs() []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(m.output()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// problems are the manager's log records at level WARN and above (at most 100), for
// failure messages.
func (m *haManager) problems() string {
	var b strings.Builder
	n := 0
	for _, l := range strings.Split(m.output(), "\n") {
		if strings.Contains(l, `"level":"warning"`) || strings.Contains(l, `"level":"error"`) || (l != "" && !strings.HasPrefix(l, "{")) {
			if n++; n <= 100 {
				b.WriteString(l + "\n")
			}
		}
	}
	if n > 100 {
		fmt.Fprintf(&b, "… %d more\n", n-100)
	}
	return b.String()
}

// received lists the jobs the manager took from GitLab, in order.
func (m *haManager) received() []int64 { return m.jobsLogged("job received") }

// finished lists the jobs whose final state the manager reported to GitLab.
func (m *haManager) finished() []int64 { return m.jobsLogged("job finished") }

// jobsLogged lists the jobs of the manager's log records with message msg.
func (m *haManager) jobsLogged(msg string) []int64 {
	var ids []int64
	for _, l := range m.logs() {
		if l["msg"] == msg {
			if id, ok := l["job"].(float64); ok {
				ids = append(ids, int64(id))
			}
		}
	}
	return ids
}

// logged counts the manager's log records with message msg whose attributes
// include attrs.
func (m *haManager) logged(msg string, attrs map[string]string) int {
	n := 0
next:
	for _, l := range m.logs() {
		if l["msg"] != msg {
			continue
		}
		for k, v := range attrs {
			if fmt.Sprint(l[k]) != v {
				continue next
			}
		}
		n++
	}
	return n
}

// What a manager logs when it starts leading the pool, and when it loses its etcd
// session.
const (
	leadingMsg     = "leading the pool: scaling decisions are made here"
	sessionLostMsg = "etcd session lost: this manager's slots and leadership are given up; reconnecting"
)

// loggedAt returns the times of the manager's log records with message msg.
func (m *haManager) loggedAt(msg string) []time.Time {
	var at []time.Time
	for _, l := range m.logs() {
		if l["msg"] != msg {
			continue
		}
		s, _ := l["time"].(string)
		if ts, err := time.Parse(time.RFC3339Nano, s); err == nil {
			at = append(at, ts)
		} else {
			m.t.Errorf("manager %s: log record without a time: %v", m.id, l)
		}
	}
	return at
}

// waitLogged waits until the manager has logged msg.
func (m *haManager) waitLogged(msg string, within time.Duration) {
	m.t.Helper()
	eventually.NoError(m.t, fmt.Sprintf("manager %s to log %q", m.id, msg), within, func() error {
		if m.logged(msg, nil) > 0 {
			return nil
		}
		return fmt.Errorf("output:\n%s", tail(m.output(), 8<<10))
	})
}

// status reads the manager's /status: the pool's coordination state as it sees it.
func (m *haManager) status() (*taskscaler.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", m.id, err)
	}
	defer resp.Body.Close()
	var rep taskscaler.Report
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return nil, fmt.Errorf("status of %s: %w", m.id, err)
	}
	if len(rep.Scalers) != 1 || rep.Scalers[0].Coordination == nil {
		return nil, fmt.Errorf("status of %s: want one shared pool, got %+v", m.id, rep)
	}
	return &rep.Scalers[0], nil
}

// leader waits until every manager given agrees on one of them as the pool's leader
// and returns it.
func (p *haPool) leader(ms ...*haManager) *haManager {
	p.t.Helper()
	var l *haManager
	eventually.NoError(p.t, "the managers to agree on a leader", time.Minute, func() error {
		seen := map[string]bool{}
		for _, m := range ms {
			st, err := m.status()
			if err != nil {
				return err
			}
			seen[st.Coordination.Leader] = true
		}
		if len(seen) != 1 {
			return fmt.Errorf("leaders seen: %v", seen)
		}
		for _, m := range ms {
			if seen[m.id] {
				l = m
				return nil
			}
		}
		return fmt.Errorf("leader %v is none of the managers", seen)
	})
	return l
}

// stop stops the manager with SIGTERM: it must exit 0.
func (m *haManager) stop() {
	m.t.Helper()
	m.signal(syscall.SIGTERM, false)
	if code := m.exitCode(2 * time.Minute); code != 0 {
		m.t.Errorf("manager %s: exit code %d after SIGTERM, want 0; output:\n%s", m.id, code, m.output())
	}
}

// kill is kill -9 of the manager process (its plugin notices and ends by itself; the
// instance servers, detached, go on).
func (m *haManager) kill() {
	m.t.Helper()
	m.signal(syscall.SIGKILL, false)
	<-m.done
}

// haScript is a job's script: its start and done lines around body.
func (p *haPool) haScript(body ...string) []string {
	line := func(what string) string {
		return fmt.Sprintf(`echo "%s $CI_JOB_ID $(basename "$(dirname "$HOME")") $(date +%%s.%%N)" >> %q`, what, p.marks)
	}
	return slices.Concat([]string{line("start")}, body, []string{line("done")})
}

// enqueue queues n jobs running body between their marks, without a Git clone.
func (p *haPool) enqueue(n int, body ...string) []int64 {
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = p.srv.Enqueue(gitlabtest.JobPayload("ha", p.repo, p.sha, p.haScript(body...), nil,
			gitlab.JobVariable{Key: "GIT_STRATEGY", Value: "none", Public: true}))
	}
	return ids
}

// releaseOn is a job body that waits until the test creates the file path, so that
// the test decides when the job ends.
func releaseOn(path string) string {
	return fmt.Sprintf("while [ ! -e %q ]; do sleep 0.1; done", path)
}

// release lets the jobs waiting on path end.
func release(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startedJobs are the jobs with a start mark.
func (p *haPool) startedJobs() map[int64]bool {
	started := map[int64]bool{}
	for _, m := range p.readMarks() {
		if m.what == "start" {
			started[m.job] = true
		}
	}
	return started
}

// waitStarted waits until manager m has started at least n jobs and returns them.
func (p *haPool) waitStarted(m *haManager, n int) []int64 {
	p.t.Helper()
	var ids []int64
	eventually.NoError(p.t, fmt.Sprintf("manager %s to start %d jobs", m.id, n), 2*time.Minute, func() error {
		started := p.startedJobs()
		ids = ids[:0]
		for _, id := range m.received() {
			if started[id] {
				ids = append(ids, id)
			}
		}
		if len(ids) >= n {
			return nil
		}
		return fmt.Errorf("%d started: %v", len(ids), ids)
	})
	return ids
}

// waitFinished waits until every job of ids has a final state on GitLab.
func (p *haPool) waitFinished(ids []int64, within time.Duration, ms ...*haManager) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for _, id := range ids {
		if j, ok := p.srv.Wait(id, time.Until(deadline)); !ok {
			// The lines about the job and the warnings say more than the log's tail.
			var outs strings.Builder
			for _, m := range ms {
				fmt.Fprintf(&outs, "--- manager %s, about job %d and warnings:\n%s\n--- its log's end:\n%s\n",
					m.id, id, tail(relevant(m.output(), id), 16<<10), tail(m.output(), 4<<10))
			}
			p.t.Fatalf("job %d not finished within %s (state %s); log:\n%s\n%s", id, within, j.State, j.Trace, outs.String())
		}
	}
}

// relevant returns the lines of a manager's log about job id, and its warnings and
// errors.
func relevant(log string, id int64) string {
	var b strings.Builder
	job := fmt.Sprintf(`"job":%d,`, id)
	for l := range strings.Lines(log) {
		if strings.Contains(l, job) || strings.Contains(l, `"level":"warning"`) || strings.Contains(l, `"level":"error"`) || strings.Contains(l, `"level":"fatal"`) {
			b.WriteString(l)
		}
	}
	return b.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// mark is one line of the marks file.
type mark struct {
	what     string // start or done
	job      int64
	instance string
}

// readMarks reads the marks file, in the order the lines were appended (the order
// they happened in). A last line still being written is left out.
func (p *haPool) readMarks() []mark {
	p.t.Helper()
	b, err := os.ReadFile(p.marks)
	if err != nil && !os.IsNotExist(err) {
		p.t.Fatal(err)
	}
	var ms []mark
	for l := range strings.Lines(string(b)) {
		if !strings.HasSuffix(l, "\n") {
			break
		}
		f := strings.Fields(l)
		if len(f) != 4 || (f[0] != "start" && f[0] != "done") {
			p.t.Fatalf("marks: bad line %q", l)
		}
		id, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			p.t.Fatalf("marks: bad line %q: %v", l, err)
		}
		ms = append(ms, mark{what: f[0], job: id, instance: f[2]})
	}
	return ms
}

// Fates of a job, as its marks must show them.
const (
	// ran: started and finished once.
	ran = "ran"
	// stopped: started once and stopped by its runner manager before its end.
	stopped = "stopped"
	// lost: its manager was killed: it started at most once and finished at most once
	// (a script that ended just before the kill), though GitLab never learns of it.
	lost = "lost"
)

// checkMarks checks that each job of want started and finished as its fate says, that
// no other job ran, and that no instance ever ran more jobs that finished at once
// than it has slots. (Stopped and lost jobs have no end in the marks: the etcd audit
// checks their slots.)
func (p *haPool) checkMarks(want map[int64]string) {
	p.t.Helper()
	starts, dones := map[int64]int{}, map[int64]int{}
	busy := map[string]int{}
	peak := 0 // most finished jobs at once on one instance
	on := map[int64]string{}
	for _, m := range p.readMarks() {
		switch m.what {
		case "start":
			starts[m.job]++
			on[m.job] = m.instance
			if want[m.job] != ran {
				continue
			}
			busy[m.instance]++
			peak = max(peak, busy[m.instance])
			if busy[m.instance] > haCapacity {
				p.t.Errorf("instance %s ran %d jobs at once (job %d started), more than its %d slots", m.instance, busy[m.instance], m.job, haCapacity)
			}
		case "done":
			dones[m.job]++
			if on[m.job] != m.instance {
				p.t.Errorf("job %d started on %q and finished on %q", m.job, on[m.job], m.instance)
			}
			if want[m.job] == ran {
				busy[m.instance]--
			}
		}
	}
	for id, fate := range want {
		s, d := starts[id], dones[id]
		ok := false
		switch fate {
		case ran:
			ok = s == 1 && d == 1
		case stopped:
			ok = s == 1 && d == 0
		case lost:
			ok = s <= 1 && d <= s
		}
		if !ok {
			p.t.Errorf("job %d (%s): %d starts and %d ends in the marks", id, fate, s, d)
		}
	}
	for id := range starts {
		if _, ok := want[id]; !ok {
			p.t.Errorf("job %d ran but is none of the jobs expected to have run", id)
		}
	}
	p.t.Logf("marks: at most %d jobs at once on one instance (%d slots each)", peak, haCapacity)
}

// fates gives every job of ids the fate f.
func fates(want map[int64]string, f string, ids ...int64) map[int64]string {
	if want == nil {
		want = map[int64]string{}
	}
	for _, id := range ids {
		want[id] = f
	}
	return want
}

// revision is the etcd cluster's revision now: the audit starts after it.
func (p *haPool) revision() int64 {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := p.cli.Get(ctx, "revision")
	if err != nil {
		p.t.Fatal(err)
	}
	return resp.Header.Revision
}

// slotRecord is the value of a held slot's key (host/coord's slotRecord).
type slotRecord struct {
	Manager  string `json:"manager"`
	Key      string `json:"key"`
	Instance string `json:"instance"`
	Slot     int    `json:"slot"`
}

// audit reads the history of the pool's slot keys after revision from: every
// acquisition creates its slot's key (version 1) under the acquiring manager's lease
// and every release deletes it, so a slot handed out twice shows as a put onto a key
// that is live. It returns the acquisitions, in order.
//
// The history ends at a key the audit writes (outside the managers' prefix): a watch
// from an old revision replays in batches, each headed with the current revision, and
// etcd 3.4 answers a progress request before the replay is done, so neither says
// when the replay is complete; the audit's own key, the last event, does.
func (p *haPool) audit(from int64) []slotRecord {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const endKey = "/ha-test/audit"
	put, err := p.cli.Put(ctx, endKey, strconv.FormatInt(from, 10))
	if err != nil {
		p.t.Fatalf("audit: %v", err)
	}
	end := put.Header.Revision
	var acqs []slotRecord
	live := map[string]bool{}
	for wr := range p.cli.Watch(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(from+1)) {
		if err := wr.Err(); err != nil {
			p.t.Fatalf("audit: watch from revision %d: %v", from+1, err)
		}
		for _, ev := range wr.Events {
			k := string(ev.Kv.Key)
			switch {
			case k == endKey && ev.Kv.ModRevision == end:
				return acqs
			case !strings.HasPrefix(k, p.slots):
			case ev.Type == mvccpb.PUT:
				if ev.Kv.Version != 1 || live[k] {
					p.t.Errorf("audit: slot %s written while held (version %d, revision %d): %s", k, ev.Kv.Version, ev.Kv.ModRevision, ev.Kv.Value)
				}
				live[k] = true
				var r slotRecord
				if err := json.Unmarshal(ev.Kv.Value, &r); err != nil {
					p.t.Errorf("audit: slot %s: %v: %s", k, err, ev.Kv.Value)
				}
				if want := p.slots + url.PathEscape(r.Instance) + "/" + strconv.Itoa(r.Slot); want != k {
					p.t.Errorf("audit: slot key %s holds the record of %s", k, want)
				}
				acqs = append(acqs, r)
			case ev.Type == mvccpb.DELETE:
				live[k] = false
			}
		}
	}
	p.t.Fatalf("audit: the watch ended before revision %d: %v", end, ctx.Err())
	return nil
}

// managerGone waits until manager id's key is deleted (its lease expired or was
// revoked) and returns the revision of the deletion: every key under that lease (its
// wants, grants and slots) went in that revision.
func (p *haPool) managerGone(id string, since time.Time, within time.Duration) int64 {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	key := haPrefix + "/managers/" + id
	cur, err := p.cli.Get(ctx, key)
	if err != nil {
		p.t.Fatal(err)
	}
	if len(cur.Kvs) == 0 {
		p.t.Fatalf("manager key %s gone already", key)
	}
	for wr := range p.cli.Watch(ctx, key, clientv3.WithRev(cur.Kvs[0].ModRevision+1)) {
		if err := wr.Err(); err != nil {
			p.t.Fatalf("watch %s: %v", key, err)
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				p.t.Logf("manager %s's lease gone %s after it was cut or killed", id, time.Since(since).Round(time.Millisecond))
				return ev.Kv.ModRevision
			}
		}
	}
	p.t.Fatalf("manager key %s still there %s after the manager was cut or killed", key, within)
	return 0
}

// slotsAt lists the slots manager id held at revision rev.
func (p *haPool) slotsAt(id string, rev int64) []slotRecord {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := p.cli.Get(ctx, p.slots, clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		p.t.Fatal(err)
	}
	var held []slotRecord
	for _, kv := range resp.Kvs {
		var r slotRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			p.t.Fatalf("slot %s: %v", kv.Key, err)
		}
		if r.Manager == id {
			held = append(held, r)
		}
	}
	return held
}

// poolStatus runs `runner pool status` against the manager's status endpoint.
func (p *haPool) poolStatus(m *haManager) string {
	p.t.Helper()
	out, err := exec.Command(p.bin, "pool", "status", "--url", "http://"+m.addr+"/status").CombinedOutput()
	if err != nil {
		p.t.Fatalf("runner pool status: %v\n%s", err, out)
	}
	return string(out)
}

// without returns ids less those of drop.
func without(ids []int64, drop ...int64) []int64 {
	var out []int64
	for _, id := range ids {
		if !slices.Contains(drop, id) {
			out = append(out, id)
		}
	}
	return out
}

// checkSuccess fails the test for each job of ids that did not end in success.
func (p *haPool) checkSuccess(ids []int64) {
	p.t.Helper()
	for _, id := range ids {
		if j := p.srv.Job(id); j.State != gitlabtest.Success || slices.Index(j.Updates, gitlabtest.Success) != len(j.Updates)-1 {
			p.t.Errorf("job %d: state %s, updates %v, want one final success; log:\n%s", id, j.State, j.Updates, j.Trace)
		}
	}
}

// wallTime logs the test's wall time when it ends.
func wallTime(t *testing.T) func() {
	began := time.Now()
	return func() { t.Logf("wall time %s", time.Since(began).Round(time.Millisecond)) }
}

// byManager counts acquisitions per manager.
func byManager(acqs []slotRecord) map[string]int {
	n := map[string]int{}
	for _, a := range acqs {
		n[a.Manager]++
	}
	return n
}

// finish stops the managers still running, then runs one more with idle_count 0 and
// idle_time 0s, which as the leader removes the pool's idle instances (with
// [coordination] a stopping manager leaves its instances to the next leader,
// whatever delete_instances_on_shutdown says); once none is left it stops it too,
// and checks that no instance directory and no process of the run is left.
func (p *haPool) finish(ms ...*haManager) {
	p.t.Helper()
	for _, m := range ms {
		select {
		case <-m.done:
		default:
			m.stop()
		}
	}
	last := p.start(haOptions{idleTime: "0s"})
	eventually.NoError(p.t, "the last manager to remove the idle instances", 2*time.Minute, func() error {
		if left := instances(p.t, p.root); len(left) > 0 {
			return fmt.Errorf("instances left: %v; output:\n%s", left, tail(last.output(), 8<<10))
		}
		return nil
	})
	last.stop()
	p.nothingLeft(last.proc)
}

// nothingLeft fails the test if an instance directory is left in the root_dir or a
// process of the run (a plugin, an instance server, a job) outlives the managers; the
// etcd members, which live under the test's directory too, are not the run's.
func (p *haPool) nothingLeft(last *proc) {
	p.t.Helper()
	for _, id := range instances(p.t, p.root) {
		p.t.Errorf("instance %s left in %s", id, p.root)
	}
	etcdBin, _ := exec.LookPath(etcdtest.Executable)
	etcdBin, _ = filepath.EvalSymlinks(etcdBin)
	var left []int
	if !eventually.Poll(20*time.Second, func() bool {
		left = left[:0]
		for _, pid := range last.marked() {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != etcdBin {
				left = append(left, pid)
			}
		}
		return len(left) == 0
	}) {
		for _, pid := range left {
			p.t.Errorf("process %d outlived the managers: %s", pid, cmdline(pid))
		}
	}
}

// haJobs is the number of jobs of TestHAManyJobsExactlyOnce: FLOTILLA_HA_JOBS, else
// 2000, or 200 under -short.
func haJobs(t *testing.T) int {
	if v := os.Getenv(haJobsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number of jobs", haJobsEnv, v)
		}
		return n
	}
	if testing.Short() {
		return 200
	}
	return 2000
}

// TestHAManyJobsExactlyOnce: thousands of jobs through three managers of one pool.
// Every job runs exactly once and succeeds, every manager runs jobs, no slot is held
// twice (the etcd history of the slot keys: each acquisition creates its key, one
// per job), no instance runs more jobs at once than it has slots, and no instance is
// left once the pool is wound down.
func TestHAManyJobsExactlyOnce(t *testing.T) {
	defer wallTime(t)()
	p := newHAPool(t)
	ms := []*haManager{p.start(haOptions{idleCount: 4}), p.start(haOptions{idleCount: 4}), p.start(haOptions{idleCount: 4})}
	p.leader(ms...)
	from := p.revision()

	n := haJobs(t)
	ids := p.enqueue(n, "sleep 0.5")
	started := time.Now()
	p.waitFinished(ids, 10*time.Minute, ms...)
	took := time.Since(started)
	t.Logf("%d jobs through 3 managers in %s (%.1f jobs/s)", n, took.Round(time.Millisecond), float64(n)/took.Seconds())

	p.checkSuccess(ids)
	p.checkMarks(fates(nil, ran, ids...))
	acqs := p.audit(from)
	if len(acqs) != n {
		t.Errorf("audit: %d acquisitions, want %d (one per job)", len(acqs), n)
	}
	per := byManager(acqs)
	received := 0
	for _, m := range ms {
		got := len(m.received())
		received += got
		if per[m.id] == 0 || per[m.id] != got {
			t.Errorf("manager %s: %d slots acquired and %d jobs received, want as many, and some", m.id, per[m.id], got)
		}
	}
	if received != n {
		t.Errorf("%d jobs received by the managers, want %d", received, n)
	}
	t.Logf("jobs per manager: %v", per)
	p.finish(ms...)
}

// others returns ms without m.
func others(ms []*haManager, m *haManager) []*haManager {
	var out []*haManager
	for _, o := range ms {
		if o != m {
			out = append(out, o)
		}
	}
	return out
}

// TestHALeaderKilledDuringScaleUp: kill -9 of the leader while it creates the
// instances a burst of jobs needs. The others elect a new leader within about one
// lease TTL, which adopts the inventory (intents recorded before the creates) and
// serves every job but those the killed manager had taken: GitLab cannot learn of
// those (no one reports them; GitLab itself would end them at their timeout), so they
// stay running there, and none is run by another manager. `runner pool status`
// shows the two managers left and the new leader, and no instance is left at the end.
func TestHALeaderKilledDuringScaleUp(t *testing.T) {
	defer wallTime(t)()
	p := newHAPool(t)
	// No idle instances, and instances that boot for 3s: the burst needs a scale-up,
	// which is under way for long enough to kill the leader in it.
	o := haOptions{idleCount: 0, bootDelay: "3s"}
	ms := []*haManager{p.start(o), p.start(o), p.start(o)}
	leader := p.leader(ms...)
	rest := others(ms, leader)
	from := p.revision()

	ids := p.enqueue(3*haConcurrent, "true")
	eventually.NoError(t, "the leader to create instances", time.Minute, func() error {
		st, err := leader.status()
		if err != nil {
			return err
		}
		var phases []string
		for _, in := range st.InstanceList {
			if in.Phase == "creating" || in.Phase == "booting" {
				return nil
			}
			phases = append(phases, in.ID+":"+in.Phase)
		}
		return fmt.Errorf("instances %v", phases)
	})
	leader.kill()
	killed := time.Now()
	next := p.leader(rest...)
	// Leading is the taskscaler running on the new leader, not just the election won.
	var took time.Duration
	eventually.NoError(t, "the new leader to lead", time.Minute, func() error {
		at := next.loggedAt(leadingMsg)
		if len(at) == 0 {
			return fmt.Errorf("manager %s has not logged %q; output:\n%s", next.id, leadingMsg, tail(next.output(), 8<<10))
		}
		took = at[len(at)-1].Sub(killed)
		return nil
	})
	t.Logf("killed leader %s; %s leads %s later", leader.id, next.id, took.Round(time.Millisecond))
	if limit := haTTL + 8*time.Second; took > limit {
		t.Errorf("a new leader after %s, want within about one lease TTL (%s; at most %s)", took, haTTL, limit)
	}

	// The killed manager's jobs: those it reported stay as they are; the others stay
	// running on GitLab.
	var lostJobs []int64
	done := leader.finished()
	for _, id := range leader.received() {
		if !slices.Contains(done, id) {
			lostJobs = append(lostJobs, id)
		}
	}
	t.Logf("the killed leader had taken %d jobs, %d of them unfinished", len(leader.received()), len(lostJobs))
	served := without(ids, lostJobs...)
	p.waitFinished(served, 3*time.Minute, rest...)
	p.checkSuccess(served)
	for _, id := range lostJobs {
		if j := p.srv.Job(id); j.State != gitlabtest.Running {
			t.Errorf("job %d of the killed manager: state %s, want still running on GitLab (no one can report it); log:\n%s", id, j.State, j.Trace)
		}
	}
	p.checkMarks(fates(fates(nil, ran, served...), lost, lostJobs...))
	acqs := byManager(p.audit(from))
	for _, m := range rest {
		if got := len(m.received()); acqs[m.id] != got {
			t.Errorf("manager %s: %d slots acquired for %d jobs received", m.id, acqs[m.id], got)
		}
	}

	out := p.poolStatus(rest[0])
	for _, want := range []string{"; leader " + next.id + "\n", fmt.Sprintf("manager %-16s %-8s", next.id, "leader")} {
		if !strings.Contains(out, want) {
			t.Errorf("runner pool status does not show the new leader (%q):\n%s", want, out)
		}
	}
	for _, m := range rest {
		if !strings.Contains(out, "manager "+m.id) {
			t.Errorf("runner pool status does not list manager %s:\n%s", m.id, out)
		}
	}
	if strings.Contains(out, "manager "+leader.id) {
		t.Errorf("runner pool status lists the killed manager %s:\n%s", leader.id, out)
	}
	p.finish(rest...)
}

// TestHAFollowerKilledDuringJobs: kill -9 of a manager that follows, while it runs
// jobs. Its lease expires; the leader releases each slot it held as "instance
// unexpectedly lost" and retires the instances those jobs ran on (removed once their
// other jobs end); the two others serve on; no instance is left at the end.
func TestHAFollowerKilledDuringJobs(t *testing.T) {
	defer wallTime(t)()
	p := newHAPool(t)
	o := haOptions{idleCount: 4}
	ms := []*haManager{p.start(o), p.start(o), p.start(o)}
	leader := p.leader(ms...)
	f := others(ms, leader)[0]
	rest := others(ms, f)
	from := p.revision()

	gate := filepath.Join(t.TempDir(), "release")
	ids := p.enqueue(2*haConcurrent, releaseOn(gate))
	p.waitStarted(f, 1)
	f.kill()
	gone := p.managerGone(f.id, time.Now(), haTTL+30*time.Second)
	held := p.slotsAt(f.id, gone-1)
	if len(held) == 0 {
		t.Fatalf("manager %s held no slot when its lease expired", f.id)
	}
	lostOn := map[string]bool{}
	for _, h := range held {
		lostOn[h.Instance] = true
	}
	eventually.NoError(t, "the leader to release the killed manager's slots as lost", 30*time.Second, func() error {
		if n := leader.logged("slot released: instance unexpectedly lost for the job", map[string]string{"manager": f.id}); n != len(held) {
			return fmt.Errorf("%d slots released as lost, want %d: %+v; output:\n%s", n, len(held), held, tail(leader.output(), 8<<10))
		}
		return nil
	})

	// The others' jobs end; then the instances of the lost jobs go.
	release(t, gate)
	var lostJobs []int64
	for _, id := range f.received() {
		if !slices.Contains(f.finished(), id) {
			lostJobs = append(lostJobs, id)
		}
	}
	served := without(ids, lostJobs...)
	p.waitFinished(served, 2*time.Minute, rest...)
	eventually.NoError(t, "the instances of the lost jobs to be removed", time.Minute, func() error {
		st, err := leader.status()
		if err != nil {
			return err
		}
		left := instances(t, p.root)
		for id := range lostOn {
			if slices.Contains(left, id) {
				return fmt.Errorf("instance %s still there", id)
			}
			i := slices.IndexFunc(st.Gone, func(g taskscaler.InstanceStatus) bool { return g.ID == id })
			if i < 0 {
				return fmt.Errorf("instance %s not among the leader's removed instances", id)
			}
			if r := st.Gone[i].RemoveReason; !strings.Contains(r, "runner manager was lost") {
				t.Errorf("instance %s removed for %q, want because a job's runner manager was lost", id, r)
			}
		}
		return nil
	})

	// The two others serve new jobs.
	more := p.enqueue(2*haConcurrent, "true")
	p.waitFinished(more, 2*time.Minute, rest...)
	p.checkSuccess(append(served, more...))
	for _, id := range lostJobs {
		if j := p.srv.Job(id); j.State != gitlabtest.Running {
			t.Errorf("job %d of the killed manager: state %s, want still running on GitLab (no one can report it); log:\n%s", id, j.State, j.Trace)
		}
	}
	p.checkMarks(fates(fates(nil, ran, append(served, more...)...), lost, lostJobs...))
	acqs := byManager(p.audit(from))
	for _, m := range rest {
		if got := len(m.received()); acqs[m.id] != got {
			t.Errorf("manager %s: %d slots acquired for %d jobs received", m.id, acqs[m.id], got)
		}
	}
	p.finish(rest...)
}

// TestHAEtcdMemberStopped: the etcd member that leads the cluster stops in the middle
// of a stream of jobs and starts again later, three times over. The two members left
// keep a quorum: no manager loses its session, and the jobs go on flowing while the
// member is down and after it is back, each run once and successfully.
func TestHAEtcdMemberStopped(t *testing.T) {
	defer wallTime(t)()
	p := newHAPool(t)
	o := haOptions{idleCount: 4}
	ms := []*haManager{p.start(o), p.start(o), p.start(o)}
	p.leader(ms...)
	from := p.revision()

	ids := p.enqueue(400, "sleep 0.2")
	finished := func() int {
		n := 0
		for _, id := range ids {
			if s := p.srv.Job(id).State; s != gitlabtest.Pending && s != gitlabtest.Running {
				n++
			}
		}
		return n
	}
	for _, at := range []int{50, 150, 250} {
		eventually.True(t, fmt.Sprintf("%d jobs finished", at), 2*time.Minute, func() bool { return finished() >= at })
		member := p.etcd.Member(p.etcd.Leader(t))
		member.Stop(t)
		stopped := time.Now()
		atStop := finished()
		eventually.NoError(t, "jobs to finish while an etcd member is stopped", time.Minute, func() error {
			if n := finished(); n < min(atStop+haConcurrent*3, len(ids)) {
				return fmt.Errorf("%d jobs finished, %d when etcd member %s stopped", n, atStop, member.Name())
			}
			return nil
		})
		t.Logf("etcd member %s (the raft leader) stopped for %s, %d jobs finished meanwhile", member.Name(), time.Since(stopped).Round(time.Millisecond), finished()-atStop)
		member.Restart(t)
	}
	more := p.enqueue(3*haConcurrent, "sleep 0.2")
	all := append(ids, more...)
	p.waitFinished(all, 3*time.Minute, ms...)
	p.checkSuccess(all)
	p.checkMarks(fates(nil, ran, all...))
	if n := len(p.audit(from)); n != len(all) {
		t.Errorf("audit: %d acquisitions, want %d (one per job)", n, len(all))
	}
	for _, m := range ms {
		if n := m.logged(sessionLostMsg, nil); n > 0 {
			t.Errorf("manager %s lost its etcd session %d times while one member of three was stopped", m.id, n)
		}
	}
	p.finish(ms...)
}

// TestHAManagerCutOff: a manager whose connections to etcd go through a proxy is cut
// off from it while it runs jobs, as a follower and as the leader. Its lease expires:
// its running jobs end as failed with runner_system_failure, their logs saying that
// the instance was unexpectedly lost; it takes no job while cut off, while the
// others serve (a new leader among them, if it led); once the connection is back it
// serves again.
func TestHAManagerCutOff(t *testing.T) {
	for _, tt := range []struct {
		name   string
		leader bool // the manager cut off leads the pool
	}{
		{"follower", false},
		{"leader", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			defer wallTime(t)()
			p := newHAPool(t)
			proxy := p.etcd.Proxy(t)
			o := haOptions{idleCount: 4}
			oc := haOptions{idleCount: 4, endpoints: proxy.Endpoints()}
			// The first manager to start leads.
			var cut *haManager
			var direct []*haManager
			if tt.leader {
				cut = p.start(oc)
				p.leader(cut)
				direct = []*haManager{p.start(o), p.start(o)}
			} else {
				direct = []*haManager{p.start(o)}
				p.leader(direct[0])
				direct = append(direct, p.start(o))
				cut = p.start(oc)
			}
			all := append(slices.Clone(direct), cut)
			if l := p.leader(all...); (l == cut) != tt.leader {
				t.Fatalf("leader %s, want the manager to cut off (%s) to lead: %v", l.id, cut.id, tt.leader)
			}
			from := p.revision()

			gate := filepath.Join(t.TempDir(), "release")
			ids := p.enqueue(3*haConcurrent, releaseOn(gate))
			p.waitStarted(cut, 1)
			proxy.Cut()
			cutAt := time.Now()
			cut.waitLogged(sessionLostMsg, haTTL+30*time.Second)
			t.Logf("manager %s lost its session %s after the cut", cut.id, time.Since(cutAt).Round(time.Millisecond))
			// Whatever it took before, it took before the cut: it asks GitLab for a job
			// only with a slot reserved through etcd.
			before := cut.received()
			started := p.startedJobs()
			var stoppedJobs []int64
			for _, id := range before {
				j, ok := p.srv.Wait(id, time.Minute)
				if !ok || j.State != gitlabtest.Failed || j.FailureReason != "runner_system_failure" {
					t.Errorf("job %d of the manager cut off: state %s (%q), want failed with runner_system_failure; log:\n%s", id, j.State, j.FailureReason, j.Trace)
				}
				if started[id] {
					stoppedJobs = append(stoppedJobs, id)
					if !strings.Contains(string(j.Trace), "instance unexpectedly lost") {
						t.Errorf("job %d of the manager cut off: its log does not say the instance was unexpectedly lost:\n%s", id, j.Trace)
					}
				}
			}
			if len(stoppedJobs) == 0 {
				t.Fatalf("none of the jobs %v of manager %s had started", before, cut.id)
			}

			// The others serve everything else while it is cut off.
			release(t, gate)
			more := p.enqueue(2*haConcurrent, "true")
			served := append(without(ids, before...), more...)
			p.waitFinished(served, 2*time.Minute, all...)
			if got := cut.received(); len(got) != len(before) {
				t.Errorf("manager %s took jobs %v while cut off from etcd", cut.id, got[len(before):])
			}
			// Its status says so (and answers: a leader cut off must not hang on etcd).
			if st, err := cut.status(); err != nil {
				t.Errorf("manager %s cut off from etcd: %v", cut.id, err)
			} else if st.Coordination.Connected {
				t.Errorf("manager %s cut off from etcd says it is connected", cut.id)
			}

			// Back: it serves again. Twenty jobs that wait are more than the others'
			// concurrent (16), so it takes some of them if it serves at all.
			proxy.Restore()
			cut.waitLogged("etcd session restored", time.Minute)
			gate2 := filepath.Join(t.TempDir(), "release2")
			after := p.enqueue(20, releaseOn(gate2))
			eventually.NoError(t, "the manager back in touch with etcd to take jobs", 2*time.Minute, func() error {
				if got := cut.received(); len(got) == len(before) {
					return fmt.Errorf("no job taken since the connection came back; output:\n%s", tail(cut.output(), 8<<10))
				}
				return nil
			})
			release(t, gate2)
			p.waitFinished(after, 2*time.Minute, all...)
			p.checkSuccess(append(served, after...))
			p.checkMarks(fates(fates(nil, ran, append(served, after...)...), stopped, stoppedJobs...))
			acqs := byManager(p.audit(from))
			for _, m := range direct {
				if got := len(m.received()); acqs[m.id] != got {
					t.Errorf("manager %s: %d slots acquired for %d jobs received", m.id, acqs[m.id], got)
				}
			}
			// The manager cut off acquired a slot for each job that started, and maybe
			// for some it took before the cut that had not started yet.
			if got, lo, hi := acqs[cut.id], len(cut.received())-len(before)+len(stoppedJobs), len(cut.received()); got < lo || got > hi {
				t.Errorf("manager %s: %d slots acquired, want %d to %d", cut.id, got, lo, hi)
			}
			p.finish(all...)
		})
	}
}
