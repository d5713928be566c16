package clock

import (
	"testing"
	"time"
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

func TestBlockUntil(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	done := make(chan struct{})
	go func() {
		f.BlockUntil(2)
		close(done)
	}()
	f.NewTimer(time.Second)
	f.NewTimer(time.Second)
	<-done
}
