// Package eventually waits in tests for a condition that becomes true on its own
// (a process exits, a log shows a line, a pool reaches a state), by polling it with a
// deadline.
//
// A fixed sleep is not synchronisation: it is too short on a loaded machine and
// wastes time on an idle one. A poll checks at once, then often, and the deadline is
// only a bound on a wait that should end long before it, never a timing assertion. On
// a timeout the test fails naming what was awaited and the last state observed, so the
// failure can be read without rerunning. Every test of this module waits through this
// package instead of its own deadline loop.
//
// It lives in the SDK, not in an internal package, for two reasons: plugin authors
// can wait in their own tests the same way, and sdk/ imports nothing else of this
// repository, so a helper its tests share with the rest must be part of it.
package eventually

import (
	"testing"
	"time"
)

// maxInterval bounds the pause between two checks. Checks start 1ms apart and back
// off to it, so a condition that holds soon is seen at once and a long wait costs
// little CPU on a shared machine.
const maxInterval = 16 * time.Millisecond

// Poll checks cond at once and then repeatedly until it returns true or within has
// passed, and reports whether it held. It is for callers that report a timeout
// themselves (with t.Errorf, or with state gathered in cond); cond may call t.Fatal.
func Poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, maxInterval)
	}
}

// True polls cond until it returns true; if it does not within the given time, it
// fails t with "timed out after <within> waiting for <what>".
func True(t testing.TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	if !Poll(within, cond) {
		t.Fatalf("timed out after %s waiting for %s", within, what)
	}
}

// NoError polls check until it returns nil; if it does not within the given time, it
// fails t naming what and the last error check returned, which describes the state
// last observed (for example "instances [a:creating]").
func NoError(t testing.TB, what string, within time.Duration, check func() error) {
	t.Helper()
	var last error
	if !Poll(within, func() bool { last = check(); return last == nil }) {
		t.Fatalf("timed out after %s waiting for %s: %v", within, what, last)
	}
}
