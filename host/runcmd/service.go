// Package runcmd is the `runner run` service: for every [[runners]] entry of
// config.toml it keeps a pool (host/pool) and asks GitLab for jobs whenever the
// pool's taskscaler can reserve a slot and the concurrent, limit and
// request_concurrency settings allow one more; each job runs on its slot through the
// shared executors while its log streams to GitLab, and its final state is reported
// until GitLab accepts it. Signals: SIGQUIT finishes the running jobs then exits,
// SIGTERM/SIGINT cancel them and exit, SIGHUP (or a changed config.toml) reloads.
// listen_address serves /metrics, /healthz, the taskscalers' status JSON and the
// operator's page (host/webui).
package runcmd

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/coord"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/plugins"
	"github.com/flotilla-ci/flotilla/host/pool"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/host/webui"
)

// Options tune the service beyond config.toml.
type Options struct {
	// ConfigPath is the config.toml to serve; required.
	ConfigPath string
	// Logger receives the service's logs; nil means slog.Default().
	Logger *slog.Logger
	// PluginLog receives the plugins' own logs; nil discards them.
	PluginLog io.Writer
	// SystemID identifies this host to GitLab (runner manager); empty means the one
	// kept in .runner_system_id next to config.toml (created if missing).
	SystemID string
	// CheckInterval overrides check_interval (the pause after "no job").
	CheckInterval time.Duration
	// BackoffBase and BackoffMax bound the jittered exponential back-off after
	// network errors (1s and 1m when zero).
	BackoffBase, BackoffMax time.Duration
	// TraceInterval and ForceSendInterval tune log uploads (see gitlab.TraceOptions).
	TraceInterval, ForceSendInterval time.Duration
	// ReloadPoll is how often config.toml is checked for changes (3s when zero;
	// negative disables; SIGHUP always reloads).
	ReloadPoll time.Duration
	// StateDir overrides where the pools keep their inventories.
	StateDir string
	// Resolve overrides plugin discovery (tests).
	Resolve plugins.Options
	// HTTP replaces the HTTP client used to talk to GitLab (tests).
	HTTP *http.Client
	// Metrics receives each pool's fleeting_* collectors (nil: none); /metrics serves
	// the default registry, so the runner passes prometheus.DefaultRegisterer.
	Metrics prometheus.Registerer
	// LogConfig, if set, receives config.toml's log_level and log_format on start and
	// on every reload (the runner applies them where no flag or environment variable
	// set them); its error stops the start, or the reload.
	LogConfig func(level, format string) error
	// WebRecorder bounds what the operator's page keeps of each runner entry's past
	// (zero values: webui's defaults); WebInterval is how often the page updates (2s
	// when zero).
	WebRecorder webui.RecorderOptions
	WebInterval time.Duration
}

// Service is a running `runner run`.
type Service struct {
	opts     Options
	log      *slog.Logger
	systemID string
	// node is this manager's membership of the shared pools ([coordination]); nil
	// when the pools are this process's own.
	node *coord.Node

	mu         sync.Mutex
	cfg        *config.Config
	runners    map[string]*runnerState
	changed    chan struct{} // closed and replaced whenever capacity changes
	running    int           // jobs running, all runners
	requesting int           // job requests in flight, all runners
	draining   bool
	stamp      fileStamp

	drainCh  chan struct{}
	drainOne sync.Once
	reloadCh chan struct{}
	abortCtx context.Context
	abort    context.CancelFunc
	jobsCtx  context.Context
	hardCtx  context.Context // Run's context: ends on SIGTERM/SIGINT only
	jobsWG   sync.WaitGroup
	addr     string
	ready    chan struct{}
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// runnerState is one [[runners]] entry being served.
type runnerState struct {
	key        string
	cfg        *config.Runner // replaced on reload; read under Service.mu
	m          *pool.Pool
	client     *gitlab.Client
	running    int
	requesting int
	failures   int
	seq        int
	stop       context.CancelFunc
	loopDone   chan struct{}
	jobs       sync.WaitGroup
	caches     sharedCaches
	rec        *webui.Recorder // the operator page's record of its jobs, decisions and history
}

// New loads the configuration; Run serves it.
func New(opts Options) (*Service, error) {
	if opts.ConfigPath == "" {
		return nil, errors.New("runner run: no config file given (use --config)")
	}
	cfg, diags, err := config.Load(opts.ConfigPath)
	if err != nil {
		if ds, ok := config.AsInvalid(err); ok {
			return nil, fmt.Errorf("%s", ds.String())
		}
		return nil, err
	}
	if err := applyLogConfig(opts, cfg); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = slog.New(gitlabMetrics.CountLogs(log.Handler()))
	for _, d := range diags.Warnings() {
		log.Warn("config", "warning", d.String())
	}
	sys := opts.SystemID
	if sys == "" {
		if sys, err = SystemID(cfg.Dir()); err != nil {
			return nil, err
		}
	}
	s := &Service{opts: opts, log: log, systemID: sys, cfg: cfg, runners: map[string]*runnerState{},
		changed: make(chan struct{}), drainCh: make(chan struct{}), reloadCh: make(chan struct{}, 1), ready: make(chan struct{})}
	s.stamp, _ = stampOf(opts.ConfigPath)
	s.abortCtx, s.abort = context.WithCancel(context.Background())
	return s, nil
}

// applyLogConfig hands config.toml's log settings to opts.LogConfig.
func applyLogConfig(opts Options, cfg *config.Config) error {
	if opts.LogConfig == nil {
		return nil
	}
	if err := opts.LogConfig(cfg.LogLevel, cfg.LogFormat); err != nil {
		return fmt.Errorf("%s: %w", opts.ConfigPath, err)
	}
	return nil
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.ModTime(), fi.Size()}, nil
}

// SystemIDFile is the file next to config.toml that keeps this host's system ID.
const SystemIDFile = ".runner_system_id"

// SystemID returns the host's system ID kept in dir, creating it ("s_" and 12 hex
// digits, as GitLab Runner does) on first use.
func SystemID(dir string) (string, error) {
	path := filepath.Join(dir, SystemIDFile)
	if b, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(b)); id != "" {
			return id, nil
		}
	}
	var raw [6]byte
	if _, err := crand.Read(raw[:]); err != nil {
		return "", err
	}
	id := "s_" + hex.EncodeToString(raw[:])
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write system ID %s: %w", path, err)
	}
	return id, nil
}

// Drain stops asking for jobs; Run returns once the running jobs are done (SIGQUIT).
func (s *Service) Drain() {
	s.drainOne.Do(func() {
		s.mu.Lock()
		s.draining = true
		s.mu.Unlock()
		close(s.drainCh)
	})
}

// Reload re-reads config.toml (SIGHUP).
func (s *Service) Reload() {
	select {
	case s.reloadCh <- struct{}{}:
	default:
	}
}

// Abort gives up on reporting final job states that GitLab has not accepted yet (a
// second SIGTERM/SIGINT).
func (s *Service) Abort() { s.abort() }

// Ready is closed once every runner entry is being served.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Addr returns the address the HTTP listener is bound to ("" if none).
func (s *Service) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Pools returns the pools of the runner entries being served, in config order.
func (s *Service) Pools() []*pool.Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*pool.Pool
	for _, rs := range s.sortedLocked() {
		out = append(out, rs.m)
	}
	return out
}

// statusSources are the pools, for the status endpoint.
func (s *Service) statusSources() []taskscaler.StatusSource {
	var out []taskscaler.StatusSource
	for _, p := range s.Pools() {
		out = append(out, p)
	}
	return out
}

func (s *Service) sortedLocked() []*runnerState {
	var out []*runnerState
	for _, r := range s.cfg.Runners {
		if rs, ok := s.runners[runnerKey(&r)]; ok {
			out = append(out, rs)
		}
	}
	return out
}

// Handler serves /metrics, /healthz, /status (taskscaler status JSON; with
// ?instance=ID, why that instance exists) and the operator's page at / (with its
// updates at /events), which has access rules of its own (see webui.Handler).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		draining := s.draining
		s.mu.Unlock()
		if draining {
			http.Error(w, "draining: finishing running jobs, taking no new ones", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/status", taskscaler.StatusHandler(s.statusSources))
	mux.Handle("/", s.webHandler())
	return mux
}

func runnerKey(r *config.Runner) string { return r.URL + "|" + r.Token }

// who names a runner entry in the log with GitLab Runner's fields: runner (the
// token's short form, as in the metrics) and runner_name.
func who(r *config.Runner) slog.Attr {
	return slog.Group("", "runner", gitlab.ShortToken(r.Token), "runner_name", r.Name)
}

// Run serves until ctx ends (SIGTERM/SIGINT: running jobs are canceled and their
// final state reported) or Drain is called and the running jobs have finished.
func (s *Service) Run(ctx context.Context) error {
	jobsCtx, cancelJobs := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelJobs(nil)
	s.jobsCtx = jobsCtx
	s.hardCtx = ctx
	reqCtx, stopRequests := context.WithCancel(ctx)
	defer stopRequests()

	var srv *http.Server
	if addr := s.cfg.ListenAddress; addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen_address %q: %w", addr, err)
		}
		s.mu.Lock()
		s.addr = ln.Addr().String()
		s.mu.Unlock()
		srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		s.log.Info("serving metrics, health and status", "address", s.addr)
		s.logWebPage(s.cfg)
		pollCtx, stopPoll := context.WithCancel(context.Background())
		defer stopPoll()
		go s.pollWeb(pollCtx)
	}

	if co := s.cfg.Coordination; co != nil {
		node, err := coord.Open(ctx, co, s.systemID, coord.Options{Logger: s.log})
		if err != nil {
			return fmt.Errorf("%s: [coordination]: %w", s.opts.ConfigPath, err)
		}
		s.node = node
		defer node.Close()
	}
	for i := range s.cfg.Runners {
		r := s.cfg.Runners[i]
		if err := s.startRunner(reqCtx, &r); err != nil {
			stopRequests()
			return errors.Join(err, s.shutdown(ctx))
		}
	}
	close(s.ready)
	gitlabMetrics.SetConcurrent(s.cfg.ConcurrentOrDefault())
	s.log.Info("runner started", "runners", len(s.runners), "concurrent", s.cfg.ConcurrentOrDefault(), "system_id", s.systemID)

	var poll <-chan time.Time
	if s.opts.ReloadPoll >= 0 {
		every := s.opts.ReloadPoll
		if every == 0 {
			every = 3 * time.Second
		}
		t := time.NewTicker(every)
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-ctx.Done():
			s.log.Info("stopping: canceling running jobs", "cause", context.Cause(ctx))
			stopRequests()
			cancelJobs(errShutdown)
			return s.shutdown(ctx)
		case <-s.drainCh:
			s.log.Info("graceful stop: finishing running jobs, taking no new ones")
			stopRequests()
			done := make(chan struct{})
			go func() { s.waitRunners(); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				s.log.Info("stopping during graceful stop: canceling running jobs")
				cancelJobs(errShutdown)
			}
			return s.shutdown(ctx)
		case <-s.reloadCh:
			s.reload(reqCtx)
		case <-poll:
			if st, err := stampOf(s.opts.ConfigPath); err == nil && st != s.stamp {
				s.reload(reqCtx)
			}
		}
	}
}

var errShutdown = errors.New("runner is shutting down")

// waitRunners waits for every request loop, then every job.
func (s *Service) waitRunners() {
	s.mu.Lock()
	var all []*runnerState
	for _, rs := range s.runners {
		all = append(all, rs)
	}
	s.mu.Unlock()
	for _, rs := range all {
		<-rs.loopDone
	}
	s.jobsWG.Wait()
}

// shutdown waits for the jobs (they report their final state) and stops the pools,
// deleting their instances where configured, within shutdown_timeout. Its error says
// which pools could not be stopped cleanly and which instances they may have left.
func (s *Service) shutdown(ctx context.Context) error {
	s.waitRunners()
	timeout := time.Duration(s.cfg.ShutdownTimeout) * time.Second
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	s.mu.Lock()
	all := s.runners
	s.runners = map[string]*runnerState{}
	s.mu.Unlock()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, rs := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := rs.m.Shutdown(sctx); err != nil {
				if a := rs.cfg.Autoscaler; a != nil && a.DeleteInstancesOnShutdown {
					var left []string
					for _, in := range rs.m.Status().InstanceList {
						left = append(left, in.ID)
					}
					err = fmt.Errorf("runner %q: stopping its pool (instances left: %s): %w", rs.cfg.Name, orNone(left), err)
				} else {
					err = fmt.Errorf("runner %q: stopping its pool: %w", rs.cfg.Name, err)
				}
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func orNone(ids []string) string {
	if len(ids) == 0 {
		return "none known"
	}
	return strings.Join(ids, ", ")
}

func (s *Service) startRunner(ctx context.Context, r *config.Runner) error {
	if !r.NeedsAutoscaler() {
		s.log.Warn("skipping runner: Flotilla runs the instance and docker-autoscaler executors only", who(r), "executor", r.Executor)
		return nil
	}
	if r.URL == "" || r.Token == "" {
		return fmt.Errorf("runner %q: url and token are required (use `runner register`)", r.Name)
	}
	label := gitlab.ShortToken(r.Token)
	client, err := gitlab.NewClient(r.URL, gitlab.ClientOptions{CAFile: r.TLSCAFile, HTTP: s.opts.HTTP, Executor: r.Executor, Shell: r.ShellOrDefault(),
		Transport: func(rt http.RoundTripper) http.RoundTripper { return gitlabMetrics.APITransport(rt, label, s.systemID) }})
	if err != nil {
		return fmt.Errorf("runner %q: %w", r.Name, err)
	}
	s.mu.Lock()
	cfg := s.cfg
	s.mu.Unlock()
	m, err := pool.Start(ctx, cfg, r, pool.Options{Logger: s.log, PluginLog: s.opts.PluginLog, StateDir: s.opts.StateDir, Resolve: s.opts.Resolve, Metrics: s.opts.Metrics,
		Coordination: s.node})
	if err != nil {
		return fmt.Errorf("runner %q: %w", r.Name, err)
	}
	lctx, stop := context.WithCancel(ctx)
	rs := &runnerState{key: runnerKey(r), cfg: r, m: m, client: client, stop: stop, loopDone: make(chan struct{}),
		rec: webui.NewRecorder(m, s.opts.WebRecorder)}
	s.mu.Lock()
	s.runners[rs.key] = rs
	s.mu.Unlock()
	gitlabMetrics.SetEntry(label, s.systemID, r.Limit)
	go func() {
		defer close(rs.loopDone)
		s.loop(lctx, rs)
	}()
	s.log.Info("serving runner", who(r), "url", r.URL, "executor", r.Executor, "limit", r.Limit,
		"request_concurrency", r.RequestConcurrencyOrDefault())
	return nil
}

// reload applies a changed config.toml: concurrency settings and policies at once,
// new entries started, removed entries drained; jobs and instances are kept.
func (s *Service) reload(ctx context.Context) {
	st, _ := stampOf(s.opts.ConfigPath)
	cfg, diags, err := config.Load(s.opts.ConfigPath)
	s.mu.Lock()
	s.stamp = st
	s.mu.Unlock()
	if err != nil {
		s.log.Error("config reload failed; keeping the running configuration", "error", err)
		return
	}
	if err := applyLogConfig(s.opts, cfg); err != nil {
		s.log.Error("config reload failed; keeping the running configuration", "error", err)
		return
	}
	for _, d := range diags.Warnings() {
		s.log.Warn("config", "warning", d.String())
	}
	gitlabMetrics.SetConcurrent(cfg.ConcurrentOrDefault())
	s.mu.Lock()
	old := s.cfg
	s.cfg = cfg
	if !reflect.DeepEqual(old.Coordination, cfg.Coordination) {
		s.log.Warn("config reload: this change takes effect after a restart of `runner run`", "setting", "[coordination]")
	}
	var added []*config.Runner
	seen := map[string]bool{}
	for i := range cfg.Runners {
		r := &cfg.Runners[i]
		k := runnerKey(r)
		seen[k] = true
		rs, ok := s.runners[k]
		if !ok {
			added = append(added, r)
			continue
		}
		for _, what := range restartOnly(rs.cfg, r) {
			s.log.Warn("config reload: this change takes effect after a restart of `runner run`", who(r), "setting", what)
		}
		rs.cfg = r
		gitlabMetrics.SetEntry(gitlab.ShortToken(r.Token), s.systemID, r.Limit)
		if r.Autoscaler != nil {
			if err := rs.m.ConfigureSchedule(r.Autoscaler.ScalerPolicies()); err != nil {
				s.log.Error("config reload: policies", who(r), "error", err)
			}
		}
	}
	var removed []*runnerState
	for k, rs := range s.runners {
		if !seen[k] {
			removed = append(removed, rs)
			delete(s.runners, k)
			gitlabMetrics.RemoveEntry(gitlab.ShortToken(rs.cfg.Token), s.systemID)
		}
	}
	s.notifyLocked()
	s.mu.Unlock()
	if old.ListenAddress != cfg.ListenAddress {
		s.log.Warn("config reload: listen_address changes take effect after a restart")
	}
	// An entry whose token or URL changed is a removal plus an addition under the same
	// name; its new pool shares the old one's inventory and plugin root, so it starts
	// once the old pool has finished its jobs and stopped.
	replaces := map[string]*config.Runner{}
	for _, r := range added {
		if slices.ContainsFunc(removed, func(rs *runnerState) bool { return rs.cfg.Name == r.Name }) {
			replaces[r.Name] = r
			continue
		}
		if err := s.startRunner(ctx, r); err != nil {
			s.log.Error("config reload: starting runner", who(r), "error", err)
		}
	}
	for _, rs := range removed {
		s.log.Info("config reload: runner removed or re-registered; finishing its jobs", who(rs.cfg))
		rs.stop()
		next := replaces[rs.cfg.Name]
		s.jobsWG.Add(1) // Run waits for the handover too
		go func() {
			defer s.jobsWG.Done()
			<-rs.loopDone
			rs.jobs.Wait()
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := rs.m.Shutdown(sctx); err != nil {
				s.log.Warn("stopping pool of removed runner", who(rs.cfg), "error", err)
			}
			if next != nil && ctx.Err() == nil {
				if err := s.startRunner(ctx, next); err != nil {
					s.log.Error("config reload: starting runner", who(next), "error", err)
				}
			}
		}()
	}
	s.log.Info("configuration reloaded", "runners", len(cfg.Runners), "concurrent", cfg.ConcurrentOrDefault())
}

// restartOnly names the settings that changed but only take effect on restart: they
// shape the pool itself.
func restartOnly(a, b *config.Runner) []string {
	var out []string
	if a.Executor != b.Executor {
		out = append(out, "executor")
	}
	if !reflect.DeepEqual(a.Docker, b.Docker) {
		out = append(out, "[runners.docker]")
	}
	if (a.Autoscaler == nil) != (b.Autoscaler == nil) {
		return append(out, "[runners.autoscaler]")
	}
	if a.Autoscaler != nil {
		x, y := *a.Autoscaler, *b.Autoscaler
		x.Policy, y.Policy = nil, nil
		if !reflect.DeepEqual(x, y) {
			out = append(out, "[runners.autoscaler] (other than its policies)")
		}
	}
	return out
}

func (s *Service) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// take waits until one more job request of rs fits within concurrent, limit and
// request_concurrency, and counts it.
func (s *Service) take(ctx context.Context, rs *runnerState) bool {
	counted := false
	for {
		s.mu.Lock()
		lim := rs.cfg.Limit
		room := s.running+s.requesting < s.cfg.ConcurrentOrDefault() && (lim <= 0 || rs.running+rs.requesting < lim)
		if room && rs.requesting < rs.cfg.RequestConcurrencyOrDefault() {
			s.requesting++
			rs.requesting++
			gitlabMetrics.SetRequests(gitlab.ShortToken(rs.cfg.Token), s.systemID, rs.requesting)
			s.mu.Unlock()
			return true
		}
		if room && !counted {
			// Held back by request_concurrency alone: one excess request, as GitLab
			// Runner counts them.
			gitlabMetrics.RequestConcurrencyExceeded(gitlab.ShortToken(rs.cfg.Token), s.systemID)
			counted = true
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

// endRequest ends a request: it either became a running job (started) or not.
func (s *Service) endRequest(rs *runnerState, started bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requesting--
	rs.requesting--
	gitlabMetrics.SetRequests(gitlab.ShortToken(rs.cfg.Token), s.systemID, rs.requesting)
	if started {
		s.running++
		rs.running++
	}
	s.notifyLocked()
}

func (s *Service) endJob(rs *runnerState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.running--
	rs.running--
	s.notifyLocked()
}

func (s *Service) checkInterval() time.Duration {
	if s.opts.CheckInterval > 0 {
		return s.opts.CheckInterval
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.CheckIntervalOrDefault()
}

// backoff is the jittered exponential delay before retry number attempt (0-based).
func (s *Service) backoff(attempt int) time.Duration {
	base, top := s.opts.BackoffBase, s.opts.BackoffMax
	if base <= 0 {
		base = time.Second
	}
	if top <= 0 {
		top = time.Minute
	}
	d := base << min(attempt, 16)
	if d > top || d <= 0 {
		d = top
	}
	// Full jitter in [d/2, d): many runners that lost GitLab together do not come
	// back in lockstep.
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// loop asks GitLab for jobs for one runner entry until ctx ends. A request is only
// made with a slot reserved on the taskscaler, so a job never waits for capacity
// GitLab could have given to another runner.
func (s *Service) loop(ctx context.Context, rs *runnerState) {
	var reqs sync.WaitGroup
	defer reqs.Wait()
	name := rs.cfg.Name
	for {
		if !s.take(ctx, rs) {
			return
		}
		s.mu.Lock()
		rs.seq++
		key := fmt.Sprintf("gitlab-%s-%d", gitlab.ShortToken(rs.cfg.Token), rs.seq)
		token := rs.cfg.Token
		s.mu.Unlock()
		if err := rs.m.Reserve(ctx, key); err != nil {
			s.endRequest(rs, false)
			requestsTotal.WithLabelValues(name, "no_capacity").Inc()
			s.log.Debug("no capacity to take a job", who(rs.cfg), "reason", err)
			if !sleep(ctx, min(s.checkInterval(), time.Second)) {
				return
			}
			continue
		}
		reqs.Add(1)
		go func() {
			defer reqs.Done()
			// A request in flight is not abandoned by a graceful stop or the removal of
			// the entry: GitLab may already have assigned a job to it, which would
			// then be lost. Only a hard stop cuts it short.
			resp, err := rs.client.RequestJob(s.hardCtx, token, s.systemID)
			if err != nil || resp == nil {
				rs.m.Unreserve(key)
				s.mu.Lock()
				if err != nil {
					rs.failures++
				} else {
					rs.failures = 0
				}
				fails := rs.failures
				s.mu.Unlock()
				wait := s.checkInterval()
				if err != nil {
					if s.hardCtx.Err() != nil {
						s.endRequest(rs, false)
						return
					}
					requestsTotal.WithLabelValues(name, "error").Inc()
					wait = s.backoff(fails - 1)
					s.log.Warn("requesting a job failed; backing off", who(rs.cfg), "error", err, "retry_in", wait.Round(time.Millisecond))
				} else {
					requestsTotal.WithLabelValues(name, "no_job").Inc()
				}
				// The request slot stays taken while waiting, so this runner's
				// request_concurrency paces the retries.
				sleep(ctx, wait)
				s.endRequest(rs, false)
				return
			}
			requestsTotal.WithLabelValues(name, "job").Inc()
			s.mu.Lock()
			rs.failures = 0
			cfg := rs.cfg
			s.mu.Unlock()
			s.jobsWG.Add(1)
			rs.jobs.Add(1)
			s.endRequest(rs, true)
			go func() {
				defer s.jobsWG.Done()
				defer rs.jobs.Done()
				defer s.endJob(rs)
				s.runJob(rs, cfg, key, resp)
			}()
		}()
	}
}
