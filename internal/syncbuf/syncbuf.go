// Package syncbuf is a bytes.Buffer that several goroutines may write and read at
// once: the output of a child process that os/exec copies in a goroutine of its own, or
// a logger's, read by a test while it is still being written. (sdk/ keeps its own copy:
// it imports nothing else of this repository.)
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
