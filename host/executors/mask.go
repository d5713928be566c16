package executors

import (
	"bytes"
	"io"
	"slices"
	"sync"
)

// Masked is what a masked variable's value is replaced with in the job log.
const Masked = "[MASKED]"

// MaskWriter redacts secrets from a stream. A secret split across two writes is still
// caught: the writer holds back as many bytes as the longest secret, minus one, until
// the next write or Close.
type MaskWriter struct {
	mu      sync.Mutex
	out     io.Writer
	secrets [][]byte
	hold    int
	pending []byte
}

// NewMaskWriter returns a writer that redacts every non-empty secret before writing to out.
func NewMaskWriter(out io.Writer, secrets []string) *MaskWriter {
	m := &MaskWriter{out: out}
	for _, s := range secrets {
		if s != "" {
			m.secrets = append(m.secrets, []byte(s))
			m.hold = max(m.hold, len(s)-1)
		}
	}
	// Longest first, so that a secret containing another is redacted whole.
	slices.SortFunc(m.secrets, func(a, b []byte) int { return len(b) - len(a) })
	return m
}

// Write redacts and forwards p; the last few bytes may be held back until more arrive.
func (m *MaskWriter) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.secrets) == 0 {
		return m.out.Write(p)
	}
	m.pending = append(m.pending, p...)
	safe := m.redactUpTo(len(m.pending) - m.hold)
	if len(safe) > 0 {
		if _, err := m.out.Write(safe); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// redactUpTo emits pending bytes before limit, with secrets replaced, and keeps the rest.
// A secret that starts before limit is consumed whole even if it ends after it.
func (m *MaskWriter) redactUpTo(limit int) []byte {
	var out []byte
	i := 0
	for i < limit {
		matched := false
		for _, s := range m.secrets {
			if bytes.HasPrefix(m.pending[i:], s) {
				out = append(out, Masked...)
				i += len(s)
				matched = true
				break
			}
		}
		if !matched {
			out = append(out, m.pending[i])
			i++
		}
	}
	m.pending = append(m.pending[:0], m.pending[i:]...)
	return out
}

// Close flushes what was held back. It does not close the underlying writer.
func (m *MaskWriter) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	rest := m.redactUpTo(len(m.pending))
	if len(rest) == 0 {
		return nil
	}
	_, err := m.out.Write(rest)
	return err
}
