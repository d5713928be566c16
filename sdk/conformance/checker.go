package conformance

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// checker runs the clauses and collects their results.
type checker struct {
	cfg     Config
	results map[string]Result
	// implements is what the plugin was found to implement of the optional methods
	// (CapabilityHeartbeat, CapabilitySuspendResume): set by L0.info from the announced
	// capabilities, refined by L0.not-found from Heartbeat's answer; nil if the plugin
	// could not be initialised.
	implements map[provider.Capability]bool
}

// outcome is what a clause function decides.
type outcome struct {
	status Status
	detail string
}

func pass(format string, args ...any) outcome { return outcome{Pass, fmt.Sprintf(format, args...)} }
func fail(format string, args ...any) outcome { return outcome{Fail, fmt.Sprintf(format, args...)} }
func skip(format string, args ...any) outcome { return outcome{Skip, fmt.Sprintf(format, args...)} }

// clause runs fn as clause id unless a clause it needs did not pass; a panic in fn (a
// bug of the kit, or a plugin answer it did not foresee) fails the clause, not Check.
func (c *checker) clause(ctx context.Context, id string, needs []string, fn func(context.Context) outcome) bool {
	start := time.Now()
	var out outcome
	for _, n := range needs {
		if r, ok := c.results[n]; !ok || r.Status != Pass {
			out = skip("needs %s, which did not pass", n)
			break
		}
	}
	if out.status == "" {
		func() {
			defer func() {
				if r := recover(); r != nil {
					out = fail("the check itself panicked: %v\n%s", r, debug.Stack())
				}
			}()
			out = fn(ctx)
		}()
	}
	c.results[id] = Result{Clause: id, Status: out.status, Detail: out.detail, Elapsed: time.Since(start)}
	return out.status == Pass
}

// skipAll marks clauses as skipped for one reason.
func (c *checker) skipAll(reason string, ids ...string) {
	for _, id := range ids {
		c.results[id] = Result{Clause: id, Status: Skip, Detail: reason}
	}
}

// running is one plugin "process": a launched binary or an in-process server.
type running struct {
	provider.InstanceGroup
	plugin   *pluginclient.Plugin
	probe    *probe // in process with a probe only
	started  time.Duration
	stopOnce sync.Once
	stopFn   func()
}

func (r *running) stop() { r.stopOnce.Do(r.stopFn) }

func (c *checker) logger() hclog.Logger {
	if c.cfg.LogOutput == nil {
		return hclog.NewNullLogger()
	}
	return hclog.New(&hclog.LoggerOptions{Name: "plugin", Level: hclog.Trace, Output: c.cfg.LogOutput})
}

// start launches (or serves in process) a fresh plugin that will send config with Init.
// withProbe wraps an in-process plugin so that the kit can observe and inject: the kit
// then decodes config into the plugin itself, exactly as sdk/plugin would.
func (c *checker) start(ctx context.Context, config []byte, withProbe bool) (*running, error) {
	begin := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if c.cfg.Binary != "" {
		p, err := pluginclient.Launch(ctx, c.cfg.Binary, config, pluginclient.Options{
			Args: c.cfg.Args, Env: c.cfg.Env, Logger: c.logger(), StartTimeout: c.cfg.Timeout})
		if err != nil {
			return nil, err
		}
		return &running{InstanceGroup: p, plugin: p, started: time.Since(begin), stopFn: p.Kill}, nil
	}
	impl := c.cfg.New()
	var pr *probe
	if withProbe {
		if err := plugin.DecodeConfig(config, impl); err != nil {
			return nil, fmt.Errorf("decode plugin_config: %w", err)
		}
		pr = &probe{InstanceGroup: impl}
		impl, config = pr.withOptional(impl), []byte(`{}`)
	}
	serveCtx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	logOut := c.cfg.LogOutput
	if logOut == nil {
		logOut = io.Discard
	}
	rc, closed, err := plugin.ServeInProcess(serveCtx, impl, plugin.VersionInfo{Name: "conformance-in-process"}, logOut)
	if err != nil {
		stopServing()
		return nil, err
	}
	p, err := pluginclient.Attach(ctx, rc, config, pluginclient.Options{Logger: c.logger()})
	if err != nil {
		stopServing()
		return nil, err
	}
	stop := func() {
		p.Kill()
		stopServing()
		select {
		case <-closed:
		case <-time.After(10 * time.Second): // a plugin call ignoring cancellation; let it be
		}
	}
	return &running{InstanceGroup: p, plugin: p, probe: pr, started: time.Since(begin), stopFn: stop}, nil
}

// call returns a context for one call, bounded by Timeout.
func (c *checker) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.Timeout)
}

func (c *checker) init(ctx context.Context, g provider.InstanceGroup) (provider.ProviderInfo, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	return g.Init(ctx, hclog.NewNullLogger(), provider.Settings{ConnectorConfig: c.cfg.Connector})
}

// listing is one Update's answer.
type listing map[string]provider.State

// list calls Update once; an ID listed twice is an error.
func (c *checker) list(ctx context.Context, g provider.InstanceGroup) (listing, error) {
	ctx, cancel := c.call(ctx)
	defer cancel()
	out := listing{}
	var dup []string
	err := g.Update(ctx, func(id string, s provider.State) {
		if _, ok := out[id]; ok {
			dup = append(dup, id)
		}
		out[id] = s
	})
	if err != nil {
		return nil, fmt.Errorf("update: %w", err)
	}
	if len(dup) > 0 {
		return nil, fmt.Errorf("update listed instances more than once: %s", strings.Join(dup, ", "))
	}
	return out, nil
}

// present reports whether id is listed and not deleted.
func (l listing) present(id string) bool {
	s, ok := l[id]
	return ok && s != provider.StateDeleted
}

// count is how many listed instances are not deleted: what takes room in the group.
func (l listing) count() int {
	n := 0
	for id := range l {
		if l.present(id) {
			n++
		}
	}
	return n
}

func (l listing) String() string {
	if len(l) == 0 {
		return "(none)"
	}
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, id+"="+string(l[id]))
	}
	return strings.Join(parts, " ")
}

// poll calls Update until done says so, done fails, or Timeout passes.
func (c *checker) poll(ctx context.Context, g provider.InstanceGroup, what string, done func(listing) (bool, error)) (listing, error) {
	deadline := time.Now().Add(c.cfg.Timeout)
	for {
		l, err := c.list(ctx, g)
		if err != nil {
			return nil, err
		}
		ok, err := done(l)
		if err != nil {
			return l, err
		}
		if ok {
			return l, nil
		}
		if time.Now().After(deadline) {
			return l, fmt.Errorf("timed out after %s waiting for %s; last listing: %s", c.cfg.Timeout, what, l)
		}
		select {
		case <-ctx.Done():
			return l, fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(c.cfg.PollInterval):
		}
	}
}

// dialTCP is the default Dial: a TCP connection to the address the host would dial.
func dialTCP(ctx context.Context, info provider.ConnectInfo) error {
	addr, err := info.Addr(false)
	if err != nil {
		return err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// probe wraps an in-process plugin so that the kit can see when a call really returns
// inside the plugin [L0.cancel] and make a call panic there [L0.panic].
type probe struct {
	provider.InstanceGroup

	mu       sync.Mutex
	entered  chan struct{}
	returned chan struct{}
}

// panicID is the instance whose ConnectInfo the probe turns into a panic. ConnectInfo is
// a method every generation of plugin has.
const panicID = "flotilla-conformance-panic"

// arm makes the next Update report when it enters and returns.
func (p *probe) arm() (entered, returned <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.entered, p.returned = make(chan struct{}), make(chan struct{})
	return p.entered, p.returned
}

func (p *probe) Update(ctx context.Context, fn func(string, provider.State)) error {
	p.mu.Lock()
	entered, returned := p.entered, p.returned
	p.entered, p.returned = nil, nil
	p.mu.Unlock()
	if entered != nil {
		close(entered)
		defer close(returned)
	}
	return p.InstanceGroup.Update(ctx, fn)
}

func (p *probe) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if id == panicID {
		panic("conformance: deliberate panic to check that the plugin survives it")
	}
	return p.InstanceGroup.ConnectInfo(ctx, id)
}

// withOptional returns p with exactly the optional interfaces of impl (which p wraps),
// so that the SDK serves and announces what the plugin itself implements. Each is a
// pointer to a struct, as the SDK's configuration decoding requires (the kit has
// already decoded the configuration into impl; the wrapper gets {}).
func (p *probe) withOptional(impl provider.InstanceGroup) provider.InstanceGroup {
	hb, isHB := impl.(provider.Heartbeater)
	sr, isSR := impl.(provider.Suspender)
	switch {
	case isHB && isSR:
		return &struct {
			*probe
			provider.Heartbeater
			provider.Suspender
		}{p, hb, sr}
	case isHB:
		return &struct {
			*probe
			provider.Heartbeater
		}{p, hb}
	case isSR:
		return &struct {
			*probe
			provider.Suspender
		}{p, sr}
	}
	return p
}
