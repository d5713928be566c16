package pluginclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// LaunchFunc starts one plugin process, ready for Init: Launch or Attach with the
// plugin's binary, configuration and options bound.
type LaunchFunc func(ctx context.Context) (*Plugin, error)

// SuperviseOptions tune a Supervised plugin. Zero values take the defaults.
type SuperviseOptions struct {
	// Logger receives one line per exit, relaunch and failed relaunch. Default: discarded.
	Logger *slog.Logger
	// MinBackoff is the wait before the first relaunch after an exit; each failed or
	// short-lived relaunch doubles it (with ±20% jitter) up to MaxBackoff. Defaults:
	// 500ms and 1 minute.
	MinBackoff, MaxBackoff time.Duration
	// StableAfter is how long a plugin must have run for its exit to count as a new
	// incident, starting again at MinBackoff. Default: MaxBackoff.
	StableAfter time.Duration
	// InitTimeout bounds the Init sent to a relaunched plugin. Default 1 minute.
	InitTimeout time.Duration
	// CheckInterval is how often an idle plugin is checked for an exit; a call that
	// finds it gone is noticed at once. Default 250ms.
	CheckInterval time.Duration
	// HangTimeout is how long a running plugin may leave the host's health checks
	// (Plugin.Ping, sent every HangTimeout/4, at most every 5s) unanswered before it
	// is taken for hung: killed with SIGKILL, which also ends a stopped process, and
	// relaunched like a plugin that exited. Calls in flight end with the process.
	// Default DefaultHangTimeout.
	HangTimeout time.Duration
}

// DefaultHangTimeout is SuperviseOptions.HangTimeout's default: long enough for a
// plugin stopped for a moment (SIGSTOP and SIGCONT, a debugger, a host swapping) to
// come back, short enough that jobs waiting for an instance (instance_acquire_timeout,
// 15 minutes by default) see the group again.
const DefaultHangTimeout = 20 * time.Second

// maxPingInterval bounds the interval between two health checks of a plugin.
const maxPingInterval = 5 * time.Second

func (o SuperviseOptions) withDefaults() SuperviseOptions {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 500 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = time.Minute
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.StableAfter <= 0 {
		o.StableAfter = o.MaxBackoff
	}
	if o.InitTimeout <= 0 {
		o.InitTimeout = time.Minute
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = 250 * time.Millisecond
	}
	if o.HangTimeout <= 0 {
		o.HangTimeout = DefaultHangTimeout
	}
	return o
}

// Supervised is a provider.InstanceGroup over a plugin process that is relaunched when
// it exits. It re-sends Init with the settings of the first successful Init, so the
// group carries on with the same configuration; a plugin's instances survive its
// process (the contract: a relaunched plugin lists the same instances under the same
// IDs), so the next Update lists them again.
//
// While the plugin is down, calls fail at once with an error wrapping ErrPluginExited
// that says how it ended and when the next relaunch is; they never start a process
// themselves. Relaunches happen in the background with exponential backoff (MinBackoff
// doubling to MaxBackoff, with jitter); a relaunch whose Init fails with
// ErrInvalidConfig, or that reports another group ID, waits MaxBackoff before the next
// attempt, since retrying will not help until the plugin or its environment changes.
// A plugin process that stays alive but does not answer (stopped with SIGSTOP, wedged)
// for HangTimeout is killed and relaunched the same way.
//
// After Drain, a call that finds the plugin down waits for the relaunch instead of
// failing at once. After Shutdown or Kill nothing is relaunched.
type Supervised struct {
	launch LaunchFunc
	opts   SuperviseOptions
	log    *slog.Logger
	name   string

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	kill   sync.Once

	mu       sync.Mutex
	cur      *Plugin // nil while down
	since    time.Time
	attempts int // relaunches since the plugin last ran for StableAfter
	down     *outage
	settings *provider.Settings // of the first successful Init
	info     provider.ProviderInfo
	draining bool          // Drain was called: calls wait for a relaunch
	stopping bool          // Shutdown or Kill was called
	changed  chan struct{} // closed and replaced when cur, down or stopping change
	health   health
	killed   killed // the last process killed for hanging
}

// health tracks the health checks of the current plugin process.
type health struct {
	p        *Plugin   // the process checked; another one starts over
	inFlight bool      // a check is waiting for its answer
	sent     time.Time // when the last check was sent
	// silentSince is when the first check not answered since the last answer was sent;
	// zero after an answer.
	silentSince time.Time
}

var (
	_ provider.InstanceGroup = (*Supervised)(nil)
	_ provider.Heartbeater   = (*Supervised)(nil)
	_ provider.Suspender     = (*Supervised)(nil)
)

// outage is the time between a plugin's exit and a successful relaunch.
type outage struct {
	status      string    // how the process ended, with its last stderr
	began       time.Time // when the exit was noticed
	attempt     int       // the next relaunch attempt, 1-based
	at          time.Time // when it is due
	lastErr     error     // why the previous attempt failed
	hopeless    bool      // lastErr will not go away by retrying
	relaunching bool
}

// Supervise launches the plugin with launch and supervises it until Kill. An error of
// the first launch is returned as is; only a plugin that ran is relaunched.
func Supervise(ctx context.Context, launch LaunchFunc, opts SuperviseOptions) (*Supervised, error) {
	p, err := launch(ctx)
	if err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	sctx, cancel := context.WithCancel(context.Background())
	s := &Supervised{launch: launch, opts: opts, log: opts.Logger, name: p.name, wake: make(chan struct{}, 1),
		cancel: cancel, done: make(chan struct{}), cur: p, since: time.Now(), changed: make(chan struct{})}
	go s.supervise(sctx)
	return s, nil
}

// Name is the plugin's name in errors and logs.
func (s *Supervised) Name() string { return s.name }

// Current is the running plugin process, or nil while it is down.
func (s *Supervised) Current() *Plugin {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Kill stops supervising and stops the plugin process; nothing is relaunched after it
// returns.
func (s *Supervised) Kill() {
	s.kill.Do(func() {
		s.mu.Lock()
		s.stopping = true
		s.notifyLocked()
		s.mu.Unlock()
		s.cancel()
		<-s.done // a relaunch in progress has been undone
		s.mu.Lock()
		p := s.cur
		s.cur = nil
		s.mu.Unlock()
		if p != nil {
			p.Kill() // bounded, also for a hung process
		}
	})
}

// Drain tells the supervisor that its host is stopping and makes its last calls,
// deleting the group's instances: each one counts, and the next may come too late to
// find the plugin relaunched. From now on a call that finds the plugin down waits,
// within its context, for the relaunch attempt in progress or due (one attempt: if it
// fails, the call fails with its cause), and an Update cut short by the plugin's exit
// is made again on the relaunched plugin (a listing has nothing to undo). A relaunch
// that is due only after MaxBackoff (a plugin refusing its configuration) is not waited
// for. Relaunching still ends only with Shutdown or Kill.
func (s *Supervised) Drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.draining = true
}

// notifyLocked wakes the calls waiting for a change of the plugin's state.
func (s *Supervised) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Supervised) supervise(ctx context.Context) {
	defer close(s.done)
	tick := time.NewTicker(s.opts.CheckInterval)
	defer tick.Stop()
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	for {
		s.mu.Lock()
		gone := s.cur
		if gone != nil && !gone.Exited() {
			gone = nil
		}
		s.mu.Unlock()
		if gone != nil {
			s.exited(gone, "")
		} else {
			s.checkHealth(ctx)
		}
		var dueC <-chan time.Time
		s.mu.Lock()
		if s.down != nil && !s.stopping {
			due.Reset(time.Until(s.down.at))
			dueC = due.C
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-tick.C:
		case <-dueC:
			s.relaunch(ctx)
		}
		due.Stop()
	}
}

// checkHealth sends the current plugin a health check when one is due, and kills it
// if its checks have gone unanswered for HangTimeout.
func (s *Supervised) checkHealth(ctx context.Context) {
	s.mu.Lock()
	p := s.cur
	if p == nil || p.Pid() == 0 { // down, or attached: not a process of this host
		s.mu.Unlock()
		return
	}
	now := time.Now()
	h := &s.health
	if h.p != p {
		*h = health{p: p}
	}
	if !h.silentSince.IsZero() && now.Sub(h.silentSince) >= s.opts.HangTimeout {
		silent := now.Sub(h.silentSince)
		*h = health{}
		s.mu.Unlock()
		s.hung(p, silent)
		return
	}
	every := min(s.opts.HangTimeout/4, maxPingInterval)
	if h.inFlight || now.Sub(h.sent) < every {
		s.mu.Unlock()
		return
	}
	h.inFlight, h.sent = true, now
	if h.silentSince.IsZero() {
		h.silentSince = now // until it answers
	}
	s.mu.Unlock()
	go func() {
		pctx, cancel := context.WithTimeout(ctx, s.opts.HangTimeout)
		defer cancel()
		err := p.Ping(pctx)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.health.p == p {
			s.health.inFlight = false
			if err == nil {
				s.health.silentSince = time.Time{}
			}
		}
	}()
}

// hung kills p, which has not answered for silent, and relaunches it unless the
// plugin is being stopped. Calls in flight end when the process does.
func (s *Supervised) hung(p *Plugin, silent time.Duration) {
	if p.Exited() {
		return // it exited meanwhile: the ordinary exit path takes over
	}
	what := fmt.Sprintf("did not answer for %s (pid %d, state: %s)", round(silent), p.Pid(), processState(p.Pid()))
	// Recorded before the kill: a call in flight fails the moment the process dies, and
	// its exit must be reported as this kill, not as a death of unknown cause.
	s.mu.Lock()
	stopping := s.stopping
	s.killed = killed{p: p, why: what}
	s.mu.Unlock()
	if stopping {
		// Logged before the kill: the call waiting on the plugin returns as soon as it dies.
		s.log.Error(fmt.Sprintf("plugin %s %s; killing it; not relaunched: the plugin is being stopped", s.name, what),
			"plugin", s.name, "pid", p.Pid())
		p.sigkill()
		return
	}
	p.sigkill()
	s.exited(p, what)
}

// killed is the plugin process the supervisor killed for hanging, and why.
type killed struct {
	p   *Plugin
	why string
}

// exited records that p has exited, if it is the current plugin, and schedules its
// relaunch. hung, if set, says why the host killed it.
func (s *Supervised) exited(p *Plugin, hung string) {
	s.mu.Lock()
	if s.cur != p || s.stopping {
		s.mu.Unlock()
		return
	}
	if hung == "" && s.killed.p == p {
		hung = s.killed.why // a call noticed the death of the process killed for hanging
	}
	now := time.Now()
	if now.Sub(s.since) >= s.opts.StableAfter {
		s.attempts = 0
	}
	s.attempts++
	attempt, delay, status := s.attempts, s.backoff(s.attempts, false), p.ExitStatus()
	if hung != "" {
		// The process may not be reaped yet; its stderr may still explain the hang.
		status = "killed: it " + hung
		if tail := p.stderr.String(); tail != "" {
			status += stderrLines + tail
		}
	}
	s.cur = nil
	s.down = &outage{status: status, began: now, attempt: attempt, at: now.Add(delay)}
	s.notifyLocked()
	s.mu.Unlock()
	if hung != "" {
		s.log.Error(fmt.Sprintf("plugin %s %s; killed it; relaunching in %s (attempt %d)", s.name, hung, round(delay), attempt),
			"plugin", s.name, "pid", p.Pid(), "attempt", attempt)
	} else {
		s.log.Warn(fmt.Sprintf("plugin %s exited (%s); relaunching in %s (attempt %d)", s.name, oneLine(status), round(delay), attempt),
			"plugin", s.name, "pid", p.Pid(), "attempt", attempt)
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	p.Kill() // releases go-plugin's side of the dead process
}

// backoff is the wait before relaunch attempt n: MinBackoff·2^(n-1) with ±20% jitter,
// at most MaxBackoff; MaxBackoff for a failure retrying will not fix.
func (s *Supervised) backoff(n int, hopeless bool) time.Duration {
	if hopeless {
		return s.opts.MaxBackoff
	}
	d := s.opts.MinBackoff
	for i := 1; i < n && d < s.opts.MaxBackoff; i++ {
		d *= 2
	}
	d = time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return min(d, s.opts.MaxBackoff)
}

// relaunch makes the attempt that is due: launch, then Init with the saved settings.
func (s *Supervised) relaunch(ctx context.Context) {
	s.mu.Lock()
	o := s.down
	if o == nil || s.stopping || time.Now().Before(o.at) {
		s.mu.Unlock()
		return
	}
	o.relaunching = true
	settings, want := s.settings, s.info.ID
	s.mu.Unlock()

	p, info, err := s.start(ctx, settings)
	hopeless := errors.Is(err, provider.ErrInvalidConfig)
	if err == nil && settings != nil && info.ID != want {
		err, hopeless = fmt.Errorf("the relaunched plugin reports group %q, not %q as before: it is not the same group", info.ID, want), true
		p.Kill()
	}

	s.mu.Lock()
	if s.stopping || ctx.Err() != nil {
		s.mu.Unlock()
		if err == nil {
			p.Kill()
		}
		return
	}
	if err != nil {
		s.attempts++
		delay := s.backoff(s.attempts, hopeless)
		failed := s.attempts - 1
		o.attempt, o.at, o.lastErr, o.hopeless, o.relaunching = s.attempts, time.Now().Add(delay), err, hopeless, false
		s.notifyLocked()
		s.mu.Unlock()
		note := ""
		if hopeless {
			note = hopelessNote
		}
		s.log.Error(fmt.Sprintf("plugin %s: relaunch attempt %d failed%s; next attempt in %s", s.name, failed, note, round(delay)),
			"plugin", s.name, "error", err.Error(), "attempt", failed)
		return
	}
	s.cur, s.since, s.down = p, time.Now(), nil
	attempt, began := o.attempt, o.began
	s.notifyLocked()
	s.mu.Unlock()
	s.log.Info(fmt.Sprintf("plugin %s relaunched (attempt %d), %s after it exited", s.name, attempt, round(time.Since(began))),
		"plugin", s.name, "pid", p.Pid(), "attempt", attempt)
}

// hopelessNote explains why a relaunch waits MaxBackoff.
const hopelessNote = " (retrying will not help until the plugin or its configuration changes)"

// start launches a plugin process and, when the group was initialised, initialises it
// with the same settings.
func (s *Supervised) start(ctx context.Context, settings *provider.Settings) (*Plugin, provider.ProviderInfo, error) {
	p, err := s.launch(ctx)
	if err != nil {
		return nil, provider.ProviderInfo{}, err
	}
	if settings == nil {
		return p, provider.ProviderInfo{}, nil
	}
	ictx, cancel := context.WithTimeout(ctx, s.opts.InitTimeout)
	defer cancel()
	info, err := p.Init(ictx, nil, *settings)
	if err != nil {
		p.Kill()
		return nil, info, fmt.Errorf("init of the relaunched plugin: %w", err)
	}
	return p, info, nil
}

// plugin returns the current plugin, or the error that says why there is none. After
// Drain it waits, within ctx, for the relaunch that is due (one attempt).
func (s *Supervised) plugin(ctx context.Context, method string) (*Plugin, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := -1 // the attempt waited for
	for {
		if s.cur != nil {
			return s.cur, nil
		}
		o := s.down
		if !s.draining || s.stopping || o == nil || o.hopeless || first >= 0 && o.attempt != first {
			return nil, s.downErrorLocked(method)
		}
		if first < 0 {
			first = o.attempt
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
		}
		s.mu.Lock()
		if ctx.Err() != nil && s.cur == nil {
			return nil, fmt.Errorf("%w (gave up waiting for the relaunch: %w)", s.downErrorLocked(method), ctx.Err())
		}
	}
}

// check passes a call's error on; if the plugin exited, it schedules the relaunch and
// says so.
func (s *Supervised) check(p *Plugin, method string, err error) error {
	if err == nil || !errors.Is(err, ErrPluginExited) || !p.Exited() {
		return err
	}
	s.exited(p, "")
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down == nil || s.cur != nil {
		return err // relaunched meanwhile, or not relaunching: the call's own error
	}
	return s.downErrorLocked(method)
}

func (s *Supervised) downErrorLocked(method string) error {
	o := s.down
	if o == nil {
		return &exitedError{msg: fmt.Sprintf("%s: plugin %s: %v; it was stopped", method, s.name, ErrPluginExited)}
	}
	status, stderr, _ := strings.Cut(o.status, stderrLines)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: plugin %s exited (%s)", method, s.name, status)
	if o.lastErr != nil {
		fmt.Fprintf(&b, "; relaunch attempt %d failed: %v", o.attempt-1, o.lastErr)
		if o.hopeless {
			b.WriteString(hopelessNote)
		}
	}
	switch {
	case s.stopping:
		b.WriteString("; not relaunched: the plugin is being stopped")
	case o.relaunching || !time.Now().Before(o.at):
		fmt.Fprintf(&b, "; relaunching now (attempt %d)", o.attempt)
	default:
		fmt.Fprintf(&b, "; relaunching in %s (attempt %d)", round(time.Until(o.at)), o.attempt)
	}
	if stderr != "" {
		b.WriteString(stderrLines + stderr)
	}
	return &exitedError{msg: b.String()}
}

// round shortens a duration for messages.
func round(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(10 * time.Millisecond)
}

// oneLine puts an exit status with its stderr lines on one line for a log message.
func oneLine(status string) string {
	status, stderr, ok := strings.Cut(status, stderrLines)
	if !ok {
		return status
	}
	return status + "; last stderr: " + strings.ReplaceAll(stderr, "\n", " | ")
}

// Init initialises the group; a relaunched plugin gets the same settings.
func (s *Supervised) Init(ctx context.Context, logger hclog.Logger, settings provider.Settings) (provider.ProviderInfo, error) {
	p, err := s.plugin(ctx, "init")
	if err != nil {
		return provider.ProviderInfo{}, err
	}
	info, err := p.Init(ctx, logger, settings)
	if err != nil {
		return info, s.check(p, "init", err)
	}
	s.mu.Lock()
	if s.settings == nil {
		s.settings, s.info = &settings, info
	}
	s.mu.Unlock()
	return info, nil
}

// Update lists the group's instances into fn.
func (s *Supervised) Update(ctx context.Context, fn func(string, provider.State)) error {
	p, err := s.plugin(ctx, "update")
	if err != nil {
		return err
	}
	err = s.check(p, "update", p.Update(ctx, fn))
	s.mu.Lock()
	again := s.draining && !s.stopping && errors.Is(err, ErrPluginExited)
	s.mu.Unlock()
	if !again {
		return err
	}
	// Draining: the plugin died under the listing. Plugin.Update reports nothing
	// before the whole answer is in, so it can be made again on the relaunched one.
	p, err = s.plugin(ctx, "update")
	if err != nil {
		return err
	}
	return s.check(p, "update", p.Update(ctx, fn))
}

// Increase requests delta instances.
func (s *Supervised) Increase(ctx context.Context, delta int) (int, error) {
	p, err := s.plugin(ctx, "increase")
	if err != nil {
		return 0, err
	}
	n, err := p.Increase(ctx, delta)
	return n, s.check(p, "increase", err)
}

// Decrease deletes instances.
func (s *Supervised) Decrease(ctx context.Context, ids []string) ([]string, error) {
	p, err := s.plugin(ctx, "decrease")
	if err != nil {
		return nil, err
	}
	done, err := p.Decrease(ctx, ids)
	return done, s.check(p, "decrease", err)
}

// Suspend suspends instances.
func (s *Supervised) Suspend(ctx context.Context, ids []string) ([]string, error) {
	p, err := s.plugin(ctx, "suspend")
	if err != nil {
		return nil, err
	}
	done, err := p.Suspend(ctx, ids)
	return done, s.check(p, "suspend", err)
}

// Resume resumes instances.
func (s *Supervised) Resume(ctx context.Context, ids []string) ([]string, error) {
	p, err := s.plugin(ctx, "resume")
	if err != nil {
		return nil, err
	}
	done, err := p.Resume(ctx, ids)
	return done, s.check(p, "resume", err)
}

// ConnectInfo asks how to reach an instance.
func (s *Supervised) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	p, err := s.plugin(ctx, "connect info")
	if err != nil {
		return provider.ConnectInfo{}, err
	}
	info, err := p.ConnectInfo(ctx, id)
	return info, s.check(p, "connect info", err)
}

// Heartbeat checks an instance's health.
func (s *Supervised) Heartbeat(ctx context.Context, id string) error {
	p, err := s.plugin(ctx, "heartbeat")
	if err != nil {
		return err
	}
	return s.check(p, "heartbeat", p.Heartbeat(ctx, id))
}

// Shutdown asks the plugin to free its resources. From now on an exit is final: a
// plugin is not relaunched to be stopped.
func (s *Supervised) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.stopping = true
	s.notifyLocked()
	s.mu.Unlock()
	p, err := s.plugin(ctx, "shutdown")
	if err != nil {
		return err
	}
	return p.Shutdown(ctx)
}
