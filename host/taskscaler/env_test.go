package taskscaler

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

var t0 = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC) // a Monday

// env is a scaler in Manual mode over a fake group, a fake clock and a memory store.
type env struct {
	t     *testing.T
	clk   *clock.Fake
	g     *fake.Group
	store state.Store
	s     *Scaler
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newEnv(t *testing.T, fo fake.Options, o Options) *env {
	t.Helper()
	e := &env{t: t, clk: clock.NewFake(t0), g: fake.New(fo)}
	if o.Store == nil {
		o.Store = state.NewMemory()
	}
	e.store = o.Store
	e.start(o)
	return e
}

func (e *env) start(o Options) {
	e.t.Helper()
	o.Clock, o.Store, o.Manual = e.clk, e.store, true
	if o.Logger == nil {
		o.Logger = quiet()
	}
	if o.Owner == "" {
		o.Owner = "https://gitlab.example|42"
	}
	s, err := New(context.Background(), e.g, o)
	if err != nil {
		e.t.Fatalf("New: %v", err)
	}
	e.s = s
	e.t.Cleanup(func() { s.cancel() })
}

func (e *env) reconcile(n int) {
	e.t.Helper()
	for range n {
		if err := e.s.Reconcile(context.Background()); err != nil {
			e.t.Fatalf("Reconcile: %v", err)
		}
	}
}

// live returns the IDs of instances the fake group holds in a state other than
// deleting/deleted.
func (e *env) live() []string {
	var ids []string
	for id, st := range e.g.Instances() {
		if st != provider.StateDeleting && st != provider.StateDeleted {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

func (e *env) increases() []int {
	var out []int
	for _, c := range e.g.Calls() {
		if c.Method == "Increase" {
			out = append(out, c.Args.(int))
		}
	}
	return out
}

func (e *env) decreased() []string {
	var out []string
	for _, c := range e.g.Calls() {
		if c.Method == "Decrease" {
			out = append(out, c.Args.([]string)...)
		}
	}
	sort.Strings(out)
	return out
}

func (e *env) acquire(key string) *Acquisition {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := e.s.Acquire(ctx, key)
	if err != nil {
		e.t.Fatalf("Acquire(%s): %v", key, err)
	}
	return a
}

// shutdown runs Shutdown and, while it waits between deletion rounds, moves the fake
// clock to its next timer. It returns Shutdown's error.
func (e *env) shutdown() error {
	e.t.Helper()
	done := make(chan error, 1)
	go func() { done <- e.s.Shutdown(context.Background()) }()
	for {
		select {
		case err := <-done:
			return err
		default:
		}
		if next, ok := e.clk.NextDeadline(); ok {
			e.clk.Set(next)
		}
		runtime.Gosched()
	}
}

func boolp(b bool) *bool { return &b }

func isNoCapacity(err error) bool { return errors.Is(err, ErrNoCapacity) }
