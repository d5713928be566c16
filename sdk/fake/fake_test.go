package fake

import (
	"context"
	"errors"
	"testing"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func states(t *testing.T, g *Group) map[string]provider.State {
	t.Helper()
	out := map[string]provider.State{}
	if err := g.Update(context.Background(), func(id string, s provider.State) { out[id] = s }); err != nil {
		t.Fatalf("Update: %v", err)
	}
	return out
}

func TestTransitions(t *testing.T) {
	tests := []struct {
		name            string
		opts            Options
		wantAfterCreate []provider.State // states seen by successive Updates after Increase(1)
	}{
		{"immediate", Options{}, []provider.State{provider.StateRunning, provider.StateRunning}},
		{"two creating updates", Options{CreatingUpdates: 2}, []provider.State{provider.StateCreating, provider.StateCreating, provider.StateRunning}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := New(tt.opts)
			if n, err := g.Increase(context.Background(), 1); n != 1 || err != nil {
				t.Fatalf("Increase = %d, %v", n, err)
			}
			for i, want := range tt.wantAfterCreate {
				got := states(t, g)
				if len(got) != 1 || got["fake-0001"] != want {
					t.Fatalf("update %d: got %v, want fake-0001=%s", i, got, want)
				}
			}
		})
	}
}

func TestDecreaseDeletingThenGone(t *testing.T) {
	g := New(Options{DeletingUpdates: 1})
	a, b := g.AddInstance(provider.StateRunning), g.AddInstance(provider.StateRunning)
	done, err := g.Decrease(context.Background(), []string{a, "nope"})
	if len(done) != 1 || done[0] != a || !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("Decrease = %v, %v; want [%s] and ErrNotFound", done, err, a)
	}
	if got := states(t, g); got[a] != provider.StateDeleting || got[b] != provider.StateRunning {
		t.Fatalf("after Decrease: %v", got)
	}
	if got := states(t, g); len(got) != 1 || got[b] != provider.StateRunning {
		t.Fatalf("second update: %v, want only %s running", got, b)
	}
}

func TestMaxSizeAndInjectedErrors(t *testing.T) {
	g := New(Options{MaxSize: 2})
	if n, err := g.Increase(context.Background(), 3); n != 2 || !errors.Is(err, provider.ErrCapacity) {
		t.Fatalf("Increase(3) with MaxSize 2 = %d, %v", n, err)
	}
	boom := errors.New("boom")
	g.FailNext("Update", boom)
	if err := g.Update(context.Background(), func(string, provider.State) {}); !errors.Is(err, boom) {
		t.Fatalf("Update err = %v, want injected", err)
	}
	if got := len(states(t, g)); got != 2 {
		t.Fatalf("instances after failed update = %d, want 2 (a failed Update changes nothing)", got)
	}
	if g.CallCount("Update") != 2 || g.CallCount("Increase") != 1 {
		t.Fatalf("calls = %v", g.Calls())
	}
}

func TestGenerations(t *testing.T) {
	// Each fleeting generation's method set, as the SDK detects it.
	tests := []struct {
		name                string
		g                   provider.InstanceGroup
		heartbeat, suspends bool
	}{
		{"FirstGeneration", FirstGeneration(New(Options{})), false, false},
		{"Group", New(Options{}), true, false},
		{"Suspending", NewSuspending(Options{}), true, true},
	}
	for _, tt := range tests {
		_, hb := tt.g.(provider.Heartbeater)
		_, sr := tt.g.(provider.Suspender)
		if hb != tt.heartbeat || sr != tt.suspends {
			t.Errorf("%s: Heartbeater %v, Suspender %v; want %v, %v", tt.name, hb, sr, tt.heartbeat, tt.suspends)
		}
	}
}

func TestSuspendResume(t *testing.T) {
	g := NewSuspending(Options{})
	id := g.AddInstance(provider.StateRunning)
	if done, err := g.Resume(context.Background(), []string{id}); len(done) != 0 || err == nil {
		t.Fatalf("Resume of a running instance = %v, %v; want an error", done, err)
	}
	if done, err := g.Suspend(context.Background(), []string{id}); len(done) != 1 || err != nil {
		t.Fatalf("Suspend = %v, %v", done, err)
	}
	for _, want := range []provider.State{provider.StateSuspending, provider.StateSuspended} {
		if got := states(t, g.Group); got[id] != want {
			t.Fatalf("state = %v, want %s", got, want)
		}
	}
	if done, err := g.Resume(context.Background(), []string{id}); len(done) != 1 || err != nil {
		t.Fatalf("Resume = %v, %v", done, err)
	}
	for _, want := range []provider.State{provider.StateResuming, provider.StateRunning} {
		if got := states(t, g.Group); got[id] != want {
			t.Fatalf("state = %v, want %s", got, want)
		}
	}
}
