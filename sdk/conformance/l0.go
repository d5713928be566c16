package conformance

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// unknownID is an instance ID no plugin has.
const unknownID = "flotilla-conformance-no-such-instance"

func (c *checker) runL0(ctx context.Context) {
	// A plugin that is never initialised: the handshake, and refusal before Init.
	var first *running
	c.clause(ctx, "L0.handshake", nil, func(ctx context.Context) outcome {
		r, err := c.start(ctx, c.cfg.PluginConfig, false)
		if err != nil {
			return fail("%v", err)
		}
		first = r
		if v := r.plugin.ProtocolVersion(); v != 1 {
			return fail("negotiated protocol version %d, want 1", v)
		}
		return pass("protocol version 1; started, handshake and dispense in %s", r.started.Round(time.Millisecond))
	})
	c.clause(ctx, "L0.version", nil, c.checkVersion)
	c.clause(ctx, "L0.init.first", []string{"L0.handshake"}, func(ctx context.Context) outcome {
		cctx, cancel := c.call(ctx)
		defer cancel()
		err := first.Update(cctx, func(string, provider.State) {})
		switch {
		case err == nil:
			return fail("Update before Init answered OK; it must be refused until Init succeeded")
		case errors.Is(err, pluginclient.ErrPluginExited):
			return fail("the plugin exited: %v", err)
		}
		return pass("Update before Init: %v", err)
	})
	if first != nil {
		first.stop()
	}

	c.clause(ctx, "L0.config.all-problems", nil, c.checkBadConfig)

	// One initialised plugin serves the remaining L0 clauses.
	sess, err := c.start(ctx, c.cfg.PluginConfig, c.cfg.New != nil)
	if err != nil {
		c.clause(ctx, "L0.info", nil, func(context.Context) outcome { return fail("start plugin: %v", err) })
		c.skipAll("needs L0.info, which did not pass", "L0.unsupported", "L0.not-found", "L0.cancel", "L0.panic", "L0.shutdown.idempotent")
		return
	}
	defer sess.stop()
	var info provider.ProviderInfo
	c.clause(ctx, "L0.info", nil, func(ctx context.Context) outcome {
		info, err = c.init(ctx, sess)
		if err != nil {
			if c.cfg.noConfig { // most plugins cannot start without one (credentials, a region)
				return skip("Init without a plugin_config failed, so the clauses that need an initialised plugin cannot run; "+
					"give a configuration (Config.PluginConfig, or --config for runner plugin check): %v", err)
			}
			return fail("Init: %v", err)
		}
		var problems []string
		if info.ID == "" || strings.ContainsAny(info.ID, " \t\n") {
			problems = append(problems, fmt.Sprintf("ID %q must be set and have no spaces (\"<provider>/<region>/<name>\")", info.ID))
		}
		if info.MaxSize < 0 {
			problems = append(problems, fmt.Sprintf("MaxSize %d is negative (0 means no limit)", info.MaxSize))
		}
		if slices.Contains(info.Capabilities, "") {
			problems = append(problems, "an empty capability is announced")
		}
		if len(problems) > 0 {
			return fail("provider info %+v: %s", info, strings.Join(problems, "; "))
		}
		c.implements = map[provider.Capability]bool{
			provider.CapabilityHeartbeat:     info.HasCapability(provider.CapabilityHeartbeat),
			provider.CapabilitySuspendResume: info.HasCapability(provider.CapabilitySuspendResume),
		}
		return pass("ID %q, MaxSize %d, version %q, capabilities %v", info.ID, info.MaxSize, info.Version, info.Capabilities)
	})
	initialised := []string{"L0.info"}

	c.clause(ctx, "L0.unsupported", initialised, func(ctx context.Context) outcome {
		if info.HasCapability(provider.CapabilitySuspendResume) {
			return skip("the plugin implements Suspend and Resume (it announces %s)", provider.CapabilitySuspendResume)
		}
		cctx, cancel := c.call(ctx)
		defer cancel()
		var problems []string
		for name, call := range map[string]func(context.Context, []string) ([]string, error){"Suspend": sess.plugin.Suspend, "Resume": sess.plugin.Resume} {
			done, err := call(cctx, []string{unknownID})
			if !errors.Is(err, provider.ErrNotSupported) {
				problems = append(problems, fmt.Sprintf("%s answered %v, %v; want ErrNotSupported", name, done, err))
			}
		}
		if len(problems) > 0 {
			slices.Sort(problems)
			return fail("%s", strings.Join(problems, "\n"))
		}
		return pass("Suspend and Resume answer ErrNotSupported")
	})

	c.clause(ctx, "L0.not-found", initialised, func(ctx context.Context) outcome {
		cctx, cancel := c.call(ctx)
		defer cancel()
		var problems []string
		if ci, err := sess.ConnectInfo(cctx, unknownID); !errors.Is(err, provider.ErrNotFound) {
			problems = append(problems, fmt.Sprintf("ConnectInfo(%q) answered %+v, %v; want ErrNotFound", unknownID, ci, err))
		}
		hb, problem := heartbeatAnswer(sess.plugin.Heartbeat(cctx, unknownID), info)
		if problem != "" {
			problems = append(problems, problem)
		}
		if c.implements != nil {
			c.implements[provider.CapabilityHeartbeat] = hb
		}
		if len(problems) > 0 {
			return fail("%s", strings.Join(problems, "\n"))
		}
		if !hb {
			return pass("ConnectInfo of %q answers ErrNotFound; Heartbeat is not implemented (it answers ErrNotSupported, as a plugin of the first fleeting generation)", unknownID)
		}
		return pass("ConnectInfo and Heartbeat of %q answer ErrNotFound", unknownID)
	})

	c.clause(ctx, "L0.cancel", initialised, func(ctx context.Context) outcome { return c.checkCancel(ctx, sess) })

	c.clause(ctx, "L0.panic", initialised, func(ctx context.Context) outcome {
		cctx, cancel := c.call(ctx)
		defer cancel()
		var err error
		switch {
		case sess.probe != nil:
			_, err = sess.ConnectInfo(cctx, panicID)
		case c.cfg.Panic != nil:
			err = c.cfg.Panic(cctx, sess.plugin)
		default:
			return skip("binary mode: an arbitrary plugin cannot be made to panic; set Config.Panic to a call that makes it panic")
		}
		if err == nil {
			return fail("the call that panicked answered OK; want an error")
		}
		if errors.Is(err, pluginclient.ErrPluginExited) {
			return fail("the panic killed the plugin: %v", err)
		}
		if _, lerr := c.list(ctx, sess); lerr != nil {
			return fail("after the panic (%v) the plugin no longer serves: %v", err, lerr)
		}
		return pass("the call answered %q and the plugin still serves", err)
	})

	c.clause(ctx, "L0.shutdown.idempotent", nil, func(ctx context.Context) outcome {
		for i := 1; i <= 2; i++ {
			cctx, cancel := c.call(ctx)
			err := sess.Shutdown(cctx)
			cancel()
			if err != nil {
				return fail("Shutdown call %d: %v", i, err)
			}
		}
		if r := c.results["L0.info"]; r.Status != Pass {
			return pass("Shutdown answered OK twice, but before Init: the plugin's own Shutdown was not reached")
		}
		return pass("Shutdown answered OK twice")
	})
}

// checkVersion runs `<binary> version --json` without the handshake's environment.
func (c *checker) checkVersion(ctx context.Context) outcome {
	if c.cfg.Binary == "" {
		return skip("in-process mode: there is no binary to run")
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	// Bounded: a binary that prints without end must not fill the checker's memory.
	v, err := pluginclient.ReadVersion(ctx, c.cfg.Binary, pluginclient.Options{Args: c.cfg.Args, Env: c.cfg.Env})
	if err != nil {
		return fail("%v", err)
	}
	var problems []string
	if v.Name == "" || v.Version == "" {
		problems = append(problems, fmt.Sprintf("name %q and version %q must be set", v.Name, v.Version))
	}
	if !slices.Contains(v.Protocols, 1) {
		problems = append(problems, fmt.Sprintf("protocol_versions %v does not include 1", v.Protocols))
	}
	if len(problems) > 0 {
		return fail("version --json: %s", strings.Join(problems, "; "))
	}
	return pass("%s %s, protocol versions %v", v.Name, v.Version, v.Protocols)
}

// checkBadConfig launches a plugin with cfg.BadConfig and expects every problem named.
func (c *checker) checkBadConfig(ctx context.Context) outcome {
	r, err := c.start(ctx, c.cfg.BadConfig, false)
	if err != nil {
		return fail("start plugin: %v", err)
	}
	defer r.stop()
	_, err = c.init(ctx, r)
	if err == nil {
		return fail("Init with plugin_config %s answered OK; want ErrInvalidConfig", c.cfg.BadConfig)
	}
	if !errors.Is(err, provider.ErrInvalidConfig) {
		return fail("Init with plugin_config %s: %v; want an error wrapping ErrInvalidConfig", c.cfg.BadConfig, err)
	}
	probs := problems(err)
	var missing, unkinded []string
	for _, want := range c.cfg.BadConfigWant {
		i := slices.IndexFunc(probs, func(p error) bool { return strings.Contains(p.Error(), want) })
		switch {
		case i < 0:
			missing = append(missing, fmt.Sprintf("%q", want))
		case !errors.Is(probs[i], provider.ErrInvalidConfig):
			unkinded = append(unkinded, fmt.Sprintf("%q", probs[i].Error()))
		}
	}
	if len(missing) > 0 {
		return fail("Init with plugin_config %s reported:\n%v\nbut not the problems mentioning %s (every problem must be reported at once)",
			c.cfg.BadConfig, err, strings.Join(missing, ", "))
	}
	if len(unkinded) > 0 {
		return fail("Init with plugin_config %s reported %s without the kind INVALID_CONFIG (each problem is one error of that kind)",
			c.cfg.BadConfig, strings.Join(unkinded, ", "))
	}
	return pass("%d problems reported, each an ErrInvalidConfig:\n%v", len(probs), err)
}

// problems splits an error from the host into the problems the plugin reported: the
// branches of the first errors.Join found under its wrappers, or the error itself.
func problems(err error) []error {
	for e := err; e != nil; {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			var out []error
			for _, b := range j.Unwrap() {
				out = append(out, problems(b)...)
			}
			return out
		}
		w, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = w.Unwrap()
	}
	return []error{err}
}

// checkCancel checks that cancelled calls return promptly: with an already cancelled
// context, with an expired deadline, and cancelled while in flight. In process the
// probe also sees when the plugin's method itself returned.
func (c *checker) checkCancel(ctx context.Context, sess *running) outcome {
	prompt := c.cfg.Prompt
	nop := func(string, provider.State) {}

	timed := func(what string, callCtx context.Context, want error) string {
		done := make(chan error, 1)
		go func() { done <- sess.Update(callCtx, nop) }()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, want) {
				return fmt.Sprintf("%s: Update answered %v; want an error wrapping %v", what, err, want)
			}
		case <-time.After(prompt):
			return fmt.Sprintf("%s: Update had not returned after %s", what, prompt)
		}
		return ""
	}

	var problems []string
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if p := timed("already cancelled context", cancelled, context.Canceled); p != "" {
		problems = append(problems, p)
	}
	expired, cancel2 := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel2()
	if p := timed("deadline already passed", expired, context.DeadlineExceeded); p != "" {
		problems = append(problems, p)
	}

	// Cancelled in flight.
	var entered, returned <-chan struct{}
	if sess.probe != nil {
		entered, returned = sess.probe.arm()
	}
	inflight, cancel3 := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sess.Update(inflight, nop) }()
	if entered != nil {
		select { // cancel once the plugin's Update is running, or has already answered
		case <-entered:
		case err := <-done:
			done <- err
		case <-time.After(c.cfg.Timeout):
		}
	}
	cancel3()
	cancelledAt := time.Now()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			problems = append(problems, fmt.Sprintf("cancelled in flight: Update answered %v; want OK or context.Canceled", err))
		}
	case <-time.After(prompt):
		problems = append(problems, fmt.Sprintf("cancelled in flight: Update had not returned in the host %s after cancellation", prompt))
	}
	if returned != nil {
		remaining := max(prompt-time.Since(cancelledAt), 10*time.Millisecond)
		select {
		case <-returned:
		default:
			select {
			case <-returned:
			case <-time.After(remaining):
				problems = append(problems, fmt.Sprintf("cancelled in flight: the plugin's Update method was still running %s after its context was cancelled (it must honour ctx)", prompt))
			}
		}
	}

	// The plugin still answers afterwards.
	if _, err := c.list(ctx, sess); err != nil {
		problems = append(problems, fmt.Sprintf("after the cancelled calls the plugin no longer answers: %v", err))
	}
	if len(problems) > 0 {
		return fail("%s", strings.Join(problems, "\n"))
	}
	if sess.probe == nil {
		return pass("cancelled calls return within %s in the host (binary mode: the plugin's side is not observable)", prompt)
	}
	return pass("cancelled calls return within %s, in the host and in the plugin", prompt)
}

// heartbeatAnswer judges what Heartbeat of an unknown ID answered: whether the plugin
// implements Heartbeat, and a problem when the answer breaks the contract. A plugin
// built with an SDK older than the heartbeat capability implements Heartbeat without
// announcing it, so the answer, not the announcement, says whether it is implemented.
func heartbeatAnswer(err error, info provider.ProviderInfo) (implemented bool, problem string) {
	switch {
	case errors.Is(err, provider.ErrNotFound):
		return true, ""
	case errors.Is(err, provider.ErrNotSupported) && info.HasCapability(provider.CapabilityHeartbeat):
		return false, fmt.Sprintf("Heartbeat answered %v although the plugin announces %s", err, provider.CapabilityHeartbeat)
	case errors.Is(err, provider.ErrNotSupported):
		return false, ""
	}
	return true, fmt.Sprintf("Heartbeat(%q) answered %v; want ErrNotFound", unknownID, err)
}
