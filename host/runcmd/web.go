package runcmd

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/host/version"
	"github.com/flotilla-ci/flotilla/host/webui"
)

// The operator's page (host/webui) on listen_address: each runner entry's Recorder is
// fed by runJob (the jobs) and by a poll of its pool (decisions and history samples),
// and the page reads them with the pools' status at every request and update.

// decisionPoll is how often the pools' last decisions and samples are taken: the
// taskscaler keeps only its last decision, so this bounds how soon one that another
// replaces may be missed.
const decisionPoll = time.Second

// webHandler serves the operator's page at / and its updates at /events.
func (s *Service) webHandler() http.Handler {
	return webui.Handler(webui.Options{
		Snapshot: s.webSnapshot,
		Token: func() string {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.cfg.WebToken
		},
		Loopback: s.loopback,
		Interval: s.opts.WebInterval,
		Span:     s.opts.WebRecorder.Span,
	})
}

// loopback reports whether the HTTP listener is bound to a loopback address (one
// reachable from this host only). Before it is bound, it is not.
func (s *Service) loopback() bool {
	host, _, err := net.SplitHostPort(s.Addr())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// logWebPage says where the page is, or why it is not served.
func (s *Service) logWebPage(cfg *config.Config) {
	switch {
	case cfg.WebToken != "":
		s.log.Info("serving the operator's page (web_token required)", "url", "http://"+s.Addr()+"/")
	case s.loopback():
		s.log.Info("serving the operator's page", "url", "http://"+s.Addr()+"/")
	default:
		s.log.Info("not serving the operator's page: listen_address is not a loopback address and web_token is not set (see docs/operator.md)",
			"address", s.Addr())
	}
}

// pollWeb feeds the Recorders until ctx ends.
func (s *Service) pollWeb(ctx context.Context) {
	webui.Poll(ctx, clock.Real{}, decisionPoll, func() []*webui.Recorder {
		s.mu.Lock()
		defer s.mu.Unlock()
		var out []*webui.Recorder
		for _, rs := range s.runners {
			out = append(out, rs.rec)
		}
		return out
	})
}

// webSnapshot is what the page shows now: per runner entry being served, in config
// order, its settings, its pool's status and its Recorder's past.
func (s *Service) webSnapshot() webui.Snapshot {
	type entry struct {
		rs  *runnerState
		cfg *config.Runner
	}
	s.mu.Lock()
	var entries []entry
	for _, rs := range s.sortedLocked() {
		entries = append(entries, entry{rs, rs.cfg})
	}
	snap := webui.Snapshot{Time: time.Now(), Host: s.systemID, Version: version.Version, Draining: s.draining}
	s.mu.Unlock()
	for _, e := range entries {
		jobs, decisions, history := e.rs.rec.Past()
		r := webui.Runner{Name: e.cfg.Name, Token: e.cfg.Token, URL: e.cfg.URL, Executor: e.cfg.Executor, Status: e.rs.m.Status(),
			Jobs: jobs, Decisions: decisions, History: history}
		if a := e.cfg.Autoscaler; a != nil {
			r.MaxUseCount, r.Policies = a.MaxUseCount, a.ScalerPolicies()
		}
		snap.Runners = append(snap.Runners, r)
	}
	return snap
}

// pageState is a job's final state as the page shows it.
func pageState(state string) string {
	if state == "success" {
		return webui.JobPassed
	}
	return webui.JobFailed
}
