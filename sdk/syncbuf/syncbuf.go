// Package syncbuf is a bytes.Buffer that several goroutines may write and read at
// once: the output of a child process that os/exec copies in a goroutine of its own, or
// a logger's, read by a test while it is still being written.
//
// It lives in the SDK, not in an internal package, for two reasons: plugin authors
// can use it in their own tests (a plugin's log, read while go-plugin writes it), and
// sdk/ imports nothing else of this repository, so a buffer its tests share with the
// rest must be part of it.
package syncbuf

import (
	"bytes"
	"sync"
)

// Buffer collects writes under a lock; the zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
