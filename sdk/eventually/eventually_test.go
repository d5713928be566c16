package eventually

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// fakeTB records a failure and stops the calling goroutine as testing.T's Fatalf does.
type fakeTB struct {
	testing.TB
	failure string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failure = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// run calls wait with a fake TB in its own goroutine (Fatalf ends it) and returns the
// failure message, empty if wait returned.
func run(wait func(testing.TB)) string {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait(f)
	}()
	<-done
	return f.failure
}

func TestFailsNamingWhatAndLastState(t *testing.T) {
	calls := 0
	got := run(func(tb testing.TB) {
		NoError(tb, "the pool to be empty", 50*time.Millisecond, func() error {
			calls++
			return fmt.Errorf("instances after check %d", calls)
		})
	})
	want := fmt.Sprintf("timed out after 50ms waiting for the pool to be empty: instances after check %d", calls)
	if got != want {
		t.Fatalf("failure %q, want %q (the last state observed)", got, want)
	}
	got = run(func(tb testing.TB) {
		True(tb, "the file", 20*time.Millisecond, func() bool { return false })
	})
	if got != "timed out after 20ms waiting for the file" {
		t.Fatalf("failure %q", got)
	}
}

func TestReturnsOnceTheConditionHolds(t *testing.T) {
	tests := []struct {
		name   string
		holdAt int // the check at which the condition first holds
	}{
		{"at once", 1},
		{"on the third check", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			cond := func() bool { calls++; return calls >= tt.holdAt }
			// The deadline is far away: the helper must return when cond holds,
			// not when it expires.
			if f := run(func(tb testing.TB) { True(tb, "cond", time.Hour, cond) }); f != "" || calls != tt.holdAt {
				t.Fatalf("True: failure %q after %d checks, want none after %d", f, calls, tt.holdAt)
			}
			calls = 0
			check := func() error {
				if cond() {
					return nil
				}
				return errors.New("not yet")
			}
			if f := run(func(tb testing.TB) { NoError(tb, "check", time.Hour, check) }); f != "" || calls != tt.holdAt {
				t.Fatalf("NoError: failure %q after %d checks, want none after %d", f, calls, tt.holdAt)
			}
		})
	}
}

func TestPollReportsWithoutFailing(t *testing.T) {
	if Poll(10*time.Millisecond, func() bool { return false }) {
		t.Fatal("Poll reported a condition that never held")
	}
	if !Poll(time.Hour, func() bool { return true }) {
		t.Fatal("Poll missed a condition that held at once")
	}
}
