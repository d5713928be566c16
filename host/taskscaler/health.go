package taskscaler

// Readiness and health: the ready command and probe of a booting instance, and the
// heartbeats of ready ones.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// runReadyQueue runs the readiness of instances that became running: inline in
// Manual mode, else in the background.
func (s *Scaler) runReadyQueue() {
	s.mu.Lock()
	q := s.readyQueue
	s.readyQueue = nil
	for _, in := range q {
		in.readyStarted = true
	}
	s.mu.Unlock()
	for _, in := range q {
		if s.opts.Manual {
			s.ready(in)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.ready(in)
		}()
	}
}

// ready runs the readiness of a running instance: the plugin's Heartbeat, the host's
// ready command, then its probe. An instance the host cannot reach is not ready.
//
// A failed check of reachability (connect info, Heartbeat, probe) is tried again after
// a backoff (healthRecheckMin, doubling per failure) while the instance stays booting:
// a cloud may list a new VM before its lookups show it, and SSH may come up late, and
// such an instance must not be deleted and replaced in a loop of milliseconds. At
// failure_threshold consecutive failures the instance is removed, and that counts as
// a provisioning failure, so a fleet-wide cause (a wrong client key, a plugin that
// never finds its new instances) opens the circuit breaker instead of replacing
// instances forever. A failed ready command removes the instance at once: it is the
// operator's own verdict, and it had ReadyTimeout to wait.
func (s *Scaler) ready(in *instance) {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.ReadyTimeout)
	final, err := s.readiness(ctx, in)
	cancel()
	now := s.clock.Now()
	s.mu.Lock()
	if in.phase != phaseBooting {
		s.mu.Unlock()
		return
	}
	if err != nil {
		in.failures++
		in.lastHealthErr = err.Error()
		if !final && in.failures < s.opts.FailureThreshold {
			in.readyRetry = true
			in.nextCheck = now.Add(backoff(in.failures, healthRecheckMin, healthRecheckMax))
			in.event(now, "unready", fmt.Sprintf("readiness check failure %d of %d (next attempt at %s): %v", in.failures,
				s.opts.FailureThreshold, in.nextCheck.UTC().Format(time.RFC3339), err))
			s.log.Info("instance not ready yet", "instance", in.ID, "failures", in.failures, "next_attempt", in.nextCheck, "err", err)
			s.mu.Unlock()
			return
		}
		reason := fmt.Sprintf("ready: %v", err)
		if in.failures > 1 {
			reason += fmt.Sprintf(" (%d consecutive readiness failures, failure_threshold %d)", in.failures, s.opts.FailureThreshold)
		}
		s.breaker.failure(now, fmt.Sprintf("instance %s: %s", in.ID, reason))
		s.beginRemovalLocked(now, in, reason)
		s.flushLocked()
		s.mu.Unlock()
		s.kick()
		return
	}
	in.failures, in.lastHealthErr, in.readyRetry = 0, "", false
	in.phase, in.ReadyAt, in.idleSince, in.lastHeartbeat = phaseReady, now, now, now
	s.m.ObserveInstance("readiness", now.Sub(in.runningAt))
	if !in.restored && in.Cause == "created" {
		s.demand.booted(now.Sub(in.CreatedAt))
	}
	s.breaker.success()
	in.event(now, "ready", "readiness passed; serving slots")
	s.dirty[in.ID] = true
	s.dispatchLocked(now)
	s.flushLocked()
	s.mu.Unlock()
}

// readiness runs the checks of ready; final says that its failure is not retried.
func (s *Scaler) readiness(ctx context.Context, in *instance) (final bool, err error) {
	var info InstanceInfo
	if s.opts.Ready != nil || s.opts.Probe != nil {
		if info, err = s.instanceInfo(ctx, in); err != nil {
			return false, err
		}
	}
	hctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
	err = pluginHeartbeat(hctx, s.group, in.ID)
	cancel()
	if err != nil && !errors.Is(err, provider.ErrNotSupported) {
		s.m.InternalOperation("heartbeat_failure")
		return false, stepErr("heartbeat", "", err)
	}
	s.m.InternalOperation("heartbeat")
	if s.opts.Ready != nil {
		if err := s.opts.Ready(ctx, info); err != nil {
			return true, err
		}
	}
	if s.opts.Probe != nil {
		if err := s.opts.Probe(ctx, info); err != nil {
			return false, fmt.Errorf("probe: %w", err)
		}
	}
	return false, nil
}

func (s *Scaler) instanceInfo(ctx context.Context, in *instance) (InstanceInfo, error) {
	s.mu.Lock()
	info := InstanceInfo{Instance: in.Instance, Restored: in.restored}
	s.mu.Unlock()
	ci, err := s.group.ConnectInfo(ctx, in.ID)
	if err != nil {
		s.m.InternalOperation("connect_info_failure")
		return info, stepErr("connect info", in.ID, err)
	}
	s.m.InternalOperation("connect_info")
	info.ConnectInfo = ci
	return info, nil
}

// heartbeatDueLocked lists idle ready instances whose heartbeat is older than the
// interval, and unhealthy ones whose recheck is due (see healthRecheckMin) until they
// recover or reach failure_threshold. probe[i] says whether due[i] also gets the probe:
// an unhealthy instance recovers only by passing the same check that failed, so a
// plugin Heartbeat that succeeds cannot reset the failures of a probe that does not.
// In the same pass, booting instances whose next readiness attempt is due are queued
// for runReadyQueue.
func (s *Scaler) heartbeatDueLocked(now time.Time) (due []*instance, probe []bool) {
	for _, in := range s.instances {
		if in.phase == phaseBooting && in.readyRetry && !now.Before(in.nextCheck) {
			in.readyRetry = false
			s.readyQueue = append(s.readyQueue, in)
			continue
		}
		if in.phase != phaseReady || in.busy() > 0 {
			continue
		}
		if in.unhealthy {
			if !now.Before(in.nextCheck) {
				due = append(due, in)
			}
			continue
		}
		if now.Sub(in.lastHeartbeat) >= s.opts.HeartbeatInterval {
			due = append(due, in)
		}
	}
	sort.Slice(due, func(i, j int) bool { return due[i].ID < due[j].ID })
	if len(due) > 0 {
		probe = make([]bool, len(due))
		for i, in := range due {
			probe[i] = in.unhealthy
		}
	}
	return due, probe
}

func (s *Scaler) runHeartbeats(ctx context.Context, due []*instance, probe []bool) {
	if len(due) == 0 {
		return
	}
	errs := make([]error, len(due))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, in := range due {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = s.heartbeat(ctx, in, probe[i])
		}()
	}
	wg.Wait()
	now := s.clock.Now()
	s.mu.Lock()
	for i, in := range due {
		s.healthResultLocked(now, in, errs[i])
	}
	s.dispatchLocked(now) // recovered instances can serve waiting jobs
	s.mu.Unlock()
}

// pluginHeartbeat calls the group's Heartbeat. A group without one (a plugin of the
// first fleeting generation, in process) answers ErrNotSupported, as such a plugin does
// over the wire; callers count that as healthy, as GitLab's host does, and the probe
// (connecting to the instance) is then what judges its health.
func pluginHeartbeat(ctx context.Context, g provider.InstanceGroup, id string) error {
	hb, ok := g.(provider.Heartbeater)
	if !ok {
		return fmt.Errorf("heartbeat: %w", provider.ErrNotSupported)
	}
	return hb.Heartbeat(ctx, id)
}

// heartbeat calls the plugin's Heartbeat (ErrNotSupported counts as healthy) and,
// when probe is set, the host's probe command.
func (s *Scaler) heartbeat(ctx context.Context, in *instance, probe bool) error {
	hctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
	defer cancel()
	if err := pluginHeartbeat(hctx, s.group, in.ID); err != nil && !errors.Is(err, provider.ErrNotSupported) {
		s.m.InternalOperation("heartbeat_failure")
		return stepErr("heartbeat", "", err)
	}
	s.m.InternalOperation("heartbeat")
	if probe && s.opts.Probe != nil {
		info, err := s.instanceInfo(hctx, in)
		if err == nil {
			err = s.opts.Probe(hctx, info)
		}
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
	}
	return nil
}

// healthResultLocked records a health check.
func (s *Scaler) healthResultLocked(now time.Time, in *instance, err error) {
	in.lastHeartbeat = now
	if err == nil {
		if in.unhealthy {
			in.event(now, "healthy", "health check passed again")
		}
		in.unhealthy, in.failures, in.lastHealthErr = false, 0, ""
		return
	}
	in.unhealthy = true
	in.failures++
	in.lastHealthErr = err.Error()
	in.nextCheck = now.Add(backoff(in.failures, healthRecheckMin, healthRecheckMax))
	in.event(now, "unhealthy", fmt.Sprintf("health check failure %d of %d (next check at %s): %v", in.failures, s.opts.FailureThreshold,
		in.nextCheck.UTC().Format(time.RFC3339), err))
}
