package clock

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

func TestFakeFiresInDeadlineOrder(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := NewFake(start)
	late := f.NewTimer(3 * time.Second)
	early := f.NewTimer(time.Second)
	stopped := f.NewTimer(2 * time.Second)
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop: want true once, then false")
	}
	if next, ok := f.NextDeadline(); !ok || !next.Equal(start.Add(time.Second)) {
		t.Fatalf("NextDeadline %s %v", next, ok)
	}
	f.Advance(2 * time.Second)
	select {
	case at := <-early.C():
		if !at.Equal(start.Add(time.Second)) {
			t.Fatalf("early fired with %s", at)
		}
	default:
		t.Fatal("early timer did not fire")
	}
	select {
	case <-late.C():
		t.Fatal("late timer fired early")
	case <-stopped.C():
		t.Fatal("stopped timer fired")
	default:
	}
	if f.Pending() != 1 {
		t.Fatalf("pending %d", f.Pending())
	}
	f.Set(start) // never backwards
	if !f.Now().Equal(start.Add(2 * time.Second)) {
		t.Fatalf("clock went backwards: %s", f.Now())
	}
	f.Advance(time.Second)
	<-late.C()
	if z := f.NewTimer(0); len(z.C()) != 1 {
		t.Fatal("zero timer did not fire at once")
	}
}

// TestBlockUntil checks that BlockUntil(2) returns only once two timers are pending:
// not while fewer are, whether timers were never made, fired or stopped. After each
// step the test waits until BlockUntil has either returned (a failure while fewer than
// two are pending) or gone back to waiting on the clock, which the goroutine's stack
// shows; no step relies on a sleep.
func TestBlockUntil(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	returned := make(chan int, 1) // the timers pending when BlockUntil returned
	go func() {
		f.BlockUntil(2)
		returned <- f.Pending()
	}()
	var stop Timer
	steps := []struct {
		name string
		do   func()
	}{
		{"no timer yet", func() {}},
		{"one timer", func() { f.NewTimer(time.Second) }},
		{"the timer fired", func() { f.Advance(time.Second) }},
		{"a timer that fires at once", func() { f.NewTimer(0) }},
		{"one timer again", func() { stop = f.NewTimer(time.Second) }},
		{"the timer stopped", func() { stop.Stop() }},
		{"one timer once more", func() { f.NewTimer(time.Minute) }},
	}
	for _, step := range steps {
		step.do()
		if n, ok := waitBlocked(t, returned); !ok {
			t.Fatalf("after %q (%d pending), BlockUntil(2) returned with %d pending", step.name, f.Pending(), n)
		}
	}
	f.NewTimer(time.Hour)
	select {
	case n := <-returned:
		if n != 2 {
			t.Fatalf("BlockUntil(2) returned with %d pending", n)
		}
	case <-time.After(time.Minute):
		t.Fatalf("BlockUntil(2) did not return with %d timers pending", f.Pending())
	}
}

// waitBlocked waits until the goroutine in BlockUntil either returned (ok is false, n
// is what it reported) or waits on the clock's condition variable again.
func waitBlocked(t *testing.T, returned <-chan int) (n int, ok bool) {
	t.Helper()
	buf := make([]byte, 1<<20)
	waiting := false
	eventually.True(t, "BlockUntil to return or wait again", time.Minute, func() bool {
		select {
		case n = <-returned:
			return true
		default:
		}
		// A goroutine woken by the clock's Broadcast is runnable until it has checked
		// the count again; only then does it wait on the condition once more.
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "[sync.Cond.Wait") && strings.Contains(g, "clock.(*Fake).BlockUntil") {
				waiting = true
				return true
			}
		}
		return false
	})
	return n, waiting
}
