package pool

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Slot is a job slot on an instance, held from Acquire to Release (a
// *taskscaler.Acquisition).
type Slot interface {
	InstanceID() string
	Slot() int
	ConnectInfo(ctx context.Context) (provider.ConnectInfo, error)
	WithContext(ctx context.Context) (context.Context, context.CancelFunc)
}

// Slots hands out slots by key; a reservation made with a key is used by the Acquire
// with that key. A pool's own taskscaler (ScalerSlots) and a pool shared with other
// runner managers (host/coord) implement it.
type Slots interface {
	Acquire(ctx context.Context, key string) (Slot, error)
	Release(key string)
}

// ScalerSlots hands out the slots of a taskscaler.
func ScalerSlots(s *taskscaler.Scaler) Slots { return slotsOf[*taskscaler.Acquisition]{s} }

// slotsOf hands out the slots of a source whose Acquire returns its own slot type (a
// taskscaler's, or a shared pool's).
type slotsOf[A Slot] struct {
	src interface {
		Acquire(ctx context.Context, key string) (A, error)
		Release(key string)
	}
}

func (s slotsOf[A]) Acquire(ctx context.Context, key string) (Slot, error) {
	a, err := s.src.Acquire(ctx, key)
	if err != nil {
		return nil, err // not a Slot holding a nil A
	}
	return a, nil
}

func (s slotsOf[A]) Release(key string) { s.src.Release(key) }

// EnvFactory makes the executor environment of job on slot. ctx is bounded by the
// slot: it ends if the instance disappears.
type EnvFactory func(ctx context.Context, job *jobs.Job, slot Slot) (executors.Env, error)

// Stops are the ways to end jobs early beyond cancelling their context, which
// cancels a job but still runs its after_script and cleanup. A nil channel never
// fires.
type Stops struct {
	// Drain, once closed, starts no more jobs: a job that has no slot yet (waiting
	// for its dependencies, for `concurrent` or for an instance) ends as canceled
	// without running, while the running ones go on to their end (SIGQUIT).
	Drain <-chan struct{}
	// Abort, once closed, cuts every remaining step of a running job short:
	// after_script, the cache upload and the cleanup are not waited for (a second
	// stop signal). The job ends canceled, or failed if it was not canceled.
	Abort <-chan struct{}
}

// ErrNotStarted is the cause of a job that a drain kept from starting.
var ErrNotStarted = errors.New("not started: the runner is stopping and starts no new jobs")

// ErrAborted is the cause of a step cut short by Stops.Abort.
var ErrAborted = errors.New("aborted: the runner is stopping without waiting for its jobs")

// RunOptions tune one run of a job on a slot.
type RunOptions struct {
	// Stops: Drain ends the wait for a slot (the job ends canceled, not started) and
	// Abort cuts the job's steps short.
	Stops Stops
	// Runtime is passed to executors.Run (InstanceID is filled in).
	Runtime executors.RunOptions
	// Wrap, if set, wraps the executor's environment, for steps the job's source adds
	// around the executor's (GitLab's artifacts upload).
	Wrap func(executors.Env) executors.Env
	// OnSlot, if set, is called once the slot is held.
	OnSlot func(Slot)
}

// releaser is an Env that holds something beyond the job's steps (its VM under
// vm_isolation) until the run is over.
type releaser interface {
	Release(ctx context.Context) error
}

// Jobs runs jobs on slots: the part of a Pool that holds "a job on a slot", over any
// Slots and EnvFactory (a Pool uses its taskscaler and its executor; tests use fakes).
type Jobs struct {
	Slots  Slots
	NewEnv EnvFactory
}

// Run acquires the slot for key (a reservation made with that key is used), runs job
// once on it, writing the log to log, and releases the slot. It returns the result and
// the instance the job ran on ("" if no slot was acquired). A slot that cannot be had,
// an environment that cannot be built, and an instance that vanishes under the job are
// system failures; only ctx cancellation cancels the job. Both `runner exec` and
// `runner run` run every job through it.
func (p Jobs) Run(ctx context.Context, job *jobs.Job, key string, log io.Writer, o RunOptions) (executors.Result, string) {
	stops := o.Stops
	actx, stopAcquire := context.WithCancelCause(ctx)
	defer stopAcquire(nil)
	for _, ch := range []<-chan struct{}{stops.Drain, stops.Abort} {
		if ch != nil {
			stop := afterClose(ch, func() { stopAcquire(ErrNotStarted) })
			defer stop()
		}
	}
	slot, err := p.Slots.Acquire(actx, key)
	if err != nil {
		status := executors.StatusFailed
		if actx.Err() != nil {
			status = executors.StatusCanceled
			if cause := context.Cause(actx); errors.Is(cause, ErrNotStarted) {
				err = cause
			}
		}
		fmt.Fprintf(log, "ERROR: Preparation failed: %v\n", err)
		return executors.Result{Status: status, FailureReason: executors.RunnerSystemFailure, ExitCode: -1, Err: err}, ""
	}
	defer p.Slots.Release(key)
	if o.OnSlot != nil {
		o.OnSlot(slot)
	}
	// The job's steps run to their end although ctx is cancelled (that is how
	// after_script and the cleanup run after a cancel), unless the slot's instance
	// vanishes (a system failure, not a cancellation, which only the user's ctx means)
	// or the run is aborted.
	base, abort := context.WithCancelCause(context.WithoutCancel(ctx))
	defer abort(nil)
	if stops.Abort != nil {
		stop := afterClose(stops.Abort, func() { abort(ErrAborted) })
		defer stop()
	}
	slotCtx, cancel := slot.WithContext(base)
	defer cancel()
	env, err := p.NewEnv(slotCtx, job, slot)
	if err != nil {
		fmt.Fprintf(log, "ERROR: Preparation failed: %v\n", err)
		return executors.Result{Status: executors.StatusFailed, FailureReason: executors.RunnerSystemFailure, ExitCode: -1, Err: err}, slot.InstanceID()
	}
	if r, ok := env.(releaser); ok {
		// After the job's steps, whatever their outcome (also when cancelled or aborted).
		defer func() {
			if err := r.Release(context.WithoutCancel(ctx)); err != nil {
				fmt.Fprintf(log, "WARNING: %v\n", err)
			}
		}()
	}
	if o.Wrap != nil {
		env = o.Wrap(env)
	}
	opts := o.Runtime
	opts.InstanceID = slot.InstanceID()
	return executors.Run(ctx, job, slotBound{env, slotCtx}, log, opts), slot.InstanceID()
}

// afterClose calls f once ch is closed, unless the returned stop is called first.
func afterClose(ch <-chan struct{}, f func()) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-ch:
			f()
		case <-done:
		}
	}()
	return func() { close(done) }
}

// slotBound makes an environment's steps end when the slot's instance disappears or
// the run is aborted.
type slotBound struct {
	executors.Env
	slotCtx context.Context
}

func (s slotBound) bind(ctx context.Context) (context.Context, context.CancelFunc) {
	child, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(s.slotCtx, func() { cancel(s.cause()) })
	return child, func() { stop(); cancel(context.Canceled) }
}

// cause says why the slot's context ended: an abort, or the instance was lost.
func (s slotBound) cause() error {
	cause := context.Cause(s.slotCtx)
	if errors.Is(cause, ErrAborted) {
		return cause
	}
	return errors.Join(errors.New("instance lost"), cause)
}

func (s slotBound) Prepare(ctx context.Context, log io.Writer) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	return s.Env.Prepare(ctx, log)
}

func (s slotBound) Exec(ctx context.Context, script executors.Script, out io.Writer) (int, error) {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	code, err := s.Env.Exec(ctx, script, out)
	if err == nil && s.slotCtx.Err() != nil {
		err = s.cause()
	}
	return code, err
}

func (s slotBound) Cleanup(ctx context.Context) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	return s.Env.Cleanup(ctx)
}

func (s slotBound) Pack(ctx context.Context, spec executors.PackSpec, archive, messages io.Writer) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	return s.Env.Pack(ctx, spec, archive, messages)
}

func (s slotBound) Unpack(ctx context.Context, r io.Reader) error {
	ctx, cancel := s.bind(ctx)
	defer cancel()
	return s.Env.Unpack(ctx, r)
}
