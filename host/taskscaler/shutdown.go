package taskscaler

// Shutdown: stop the loop, and delete every instance when configured.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Shutdown stops the loop, waits for background readiness checks, and, with
// delete_instances_on_shutdown, deletes every instance in up to
// shutdown_deletion_retries rounds shutdown_deletion_interval apart. Without it the
// instances stay and the next start adopts them. It then shuts the plugin down.
func (s *Scaler) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	var errs []error
	if s.opts.DeleteInstancesOnShutdown {
		if err := s.deleteAll(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	s.mu.Lock()
	for _, w := range s.waiters {
		close(w.ch)
	}
	s.waiters = nil
	s.flushLocked()
	s.mu.Unlock()
	if err := s.group.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("shut down plugin: %w", err))
	}
	return errors.Join(errs...)
}

// deleteAll deletes every instance at shutdown, in rounds shutdown_deletion_interval
// apart: each round lists the group (Update), begins the removal of every instance not
// yet deleting and calls Decrease for them; an instance is deleted once a listing no
// longer shows it. A round whose Update or Decrease fails (a dropped connection, a
// plugin being relaunched) is retried in the next one: one error never ends the
// deletion. After shutdown_deletion_retries rounds beyond the first, or when ctx ends,
// the error names the instances left and the last cause.
func (s *Scaler) deleteAll(ctx context.Context) error {
	var cause error // the last failed call
	causeRound := 0
	for round := 1; ; round++ {
		var listed []observed
		uctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
		err := s.group.Update(uctx, func(id string, st provider.State) { listed = append(listed, observed{id, st}) })
		cancel()
		var ids []string
		if err != nil {
			s.m.InternalOperation("update_failure")
			if ctx.Err() != nil {
				return s.shutdownLeftError(round, ctx.Err(), cause, causeRound)
			}
			cause, causeRound = stepErr("update", "", err), round
			s.log.Warn("delete instances on shutdown: listing the group failed; retrying", "round", round, "err", cause)
		} else {
			s.m.InternalOperation("update")
			now := s.clock.Now()
			s.mu.Lock()
			s.applyLocked(now, listed)
			for _, in := range s.instances {
				if in.State == provider.StateDeleting || in.State == provider.StateDeleted {
					continue
				}
				if in.phase != phaseRemoving {
					s.cancelAcquisitionsLocked(in)
					s.beginRemovalLocked(now, in, "delete_instances_on_shutdown")
				}
				ids = append(ids, in.ID)
			}
			remaining := len(s.instances)
			s.flushLocked()
			s.mu.Unlock()
			if remaining == 0 {
				return nil
			}
		}
		if round > s.opts.ShutdownDeletionRetries {
			return s.shutdownLeftError(round, nil, cause, causeRound)
		}
		if len(ids) > 0 {
			slices.Sort(ids)
			dctx, cancel := context.WithTimeout(ctx, s.opts.OperationTimeout)
			_, err := s.group.Decrease(dctx, ids)
			cancel()
			if err != nil {
				cause, causeRound = stepErr("decrease", "", err), round
				s.m.InternalOperation("decrease_failure")
				s.log.Warn("delete instances on shutdown: Decrease failed; retrying", "round", round, "instances", ids, "err", cause)
			} else {
				s.m.InternalOperation("decrease")
			}
		}
		t := s.clock.NewTimer(s.opts.ShutdownDeletionInterval)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return s.shutdownLeftError(round, ctx.Err(), cause, causeRound)
		}
	}
}

// shutdownLeftError says which instances deleteAll leaves after rounds rounds, why it
// stopped (stop: the caller's context ended; nil: the rounds were used up) and the
// last failed call, if any.
func (s *Scaler) shutdownLeftError(rounds int, stop, cause error, causeRound int) error {
	s.mu.Lock()
	var left []string
	for _, in := range s.instances {
		st := string(in.State)
		if st == "" {
			st = "not listed yet"
		}
		left = append(left, fmt.Sprintf("%s (%s)", in.ID, st))
	}
	s.mu.Unlock()
	slices.Sort(left)
	const show = 10
	list := strings.Join(left[:min(len(left), show)], ", ")
	if len(left) > show {
		list += fmt.Sprintf(" and %d more", len(left)-show)
	}
	what := fmt.Sprintf("%d instances left", len(left))
	if len(left) == 0 {
		// Never listed: nothing says the group is empty.
		what, list = "the group could not be listed", "instances it may hold are not known"
	}
	msg := fmt.Sprintf("delete instances on shutdown: %s after %d rounds", what, rounds)
	if stop != nil {
		msg += fmt.Sprintf(", stopped early (%v)", stop)
	}
	msg += ": " + list
	if cause == nil {
		return errors.New(msg)
	}
	return fmt.Errorf("%s; last error (round %d): %w", msg, causeRound, cause)
}
