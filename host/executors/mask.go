package executors

import (
	"bytes"
	"io"
	"slices"
	"sync"
	"time"
)

// Masked is what a masked variable's value is replaced with in the job log.
const Masked = "[MASKED]"

// maskQuietPeriod is how long the MaskWriter holds the start of a possible secret at
// the end of the output before it writes it anyway.
const maskQuietPeriod = 250 * time.Millisecond

// MaskWriter redacts secrets from a stream. A secret split across two writes is still
// caught: the writer holds back the end of the output when it is the start of a secret
// (only then, and never more than the longest secret minus one byte) until the next
// write shows whether the secret follows.
//
// A log line never waits for more output: held bytes are written after a short quiet
// period (maskQuietPeriod), on Flush and on Close. If the rest of a secret comes after
// such a write, it is still replaced, so at most the start of a secret, written before a
// pause in the middle of it, appears in the log; never the whole secret.
type MaskWriter struct {
	mu      sync.Mutex
	out     io.Writer
	secrets [][]byte // longest first
	// buf holds the bytes not decided yet; its first written bytes were already
	// written out (by a flush) and are kept only to catch a secret they start.
	buf     []byte
	written int
	timer   *time.Timer
	err     error // of a write made by the timer, reported by the next call
	closed  bool
}

// NewMaskWriter returns a writer that redacts every non-empty secret before writing to out.
func NewMaskWriter(out io.Writer, secrets []string) *MaskWriter {
	m := &MaskWriter{out: out}
	for _, s := range secrets {
		if s != "" && !slices.ContainsFunc(m.secrets, func(b []byte) bool { return string(b) == s }) {
			m.secrets = append(m.secrets, []byte(s))
		}
	}
	// Longest first, so that a secret containing another is redacted whole.
	slices.SortFunc(m.secrets, func(a, b []byte) int { return len(b) - len(a) })
	return m
}

// Write redacts and forwards p. When p ends with the start of a secret, those bytes are
// held until the next write, a quiet period, Flush or Close.
func (m *MaskWriter) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.takeErr(); err != nil {
		return 0, err
	}
	if len(m.secrets) == 0 {
		return m.out.Write(p)
	}
	m.buf = append(m.buf, p...)
	// After Close nothing would write held bytes: hold none.
	if err := m.emit(m.redact(m.closed)); err != nil {
		return 0, err
	}
	if !m.closed {
		m.armTimer()
	}
	return len(p), nil
}

// Flush writes what is held back. A secret that the held bytes start is still
// replaced if the rest of it comes later.
func (m *MaskWriter) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.takeErr(); err != nil {
		return err
	}
	return m.flush()
}

// Close writes what is held back and stops the quiet-period timer. It does not close
// the underlying writer.
func (m *MaskWriter) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	if m.timer != nil {
		m.timer.Stop()
	}
	if err := m.takeErr(); err != nil {
		return err
	}
	err := m.flush()
	m.buf, m.written = nil, 0
	return err
}

func (m *MaskWriter) takeErr() error {
	err := m.err
	m.err = nil
	return err
}

// flush writes every undecided byte; the ones that may start a secret stay in buf,
// marked as written, so that the rest of the secret is caught.
func (m *MaskWriter) flush() error {
	if m.written == len(m.buf) {
		return nil
	}
	return m.emit(m.redact(true))
}

func (m *MaskWriter) emit(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, err := m.out.Write(b)
	return err
}

// armTimer (re)starts the quiet period when bytes are held back.
func (m *MaskWriter) armTimer() {
	if m.written == len(m.buf) {
		return
	}
	if m.timer == nil {
		m.timer = time.AfterFunc(maskQuietPeriod, m.quietFlush)
		return
	}
	m.timer.Reset(maskQuietPeriod)
}

func (m *MaskWriter) quietFlush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	if err := m.flush(); err != nil && m.err == nil {
		m.err = err
	}
}

// redact decides the bytes of buf and returns what to write. Unless final, it stops at
// a suffix that may still grow into a secret. What stays in buf afterwards is at most
// the start of a secret.
func (m *MaskWriter) redact(final bool) []byte {
	var out []byte
	data := m.buf
	i := 0
	for i < len(data) {
		rest := data[i:]
		if !final && m.mayGrow(rest) {
			break
		}
		n := m.matchAt(rest)
		switch {
		case i < m.written && i+n > m.written:
			// A secret that began in bytes already written (and maybe already
			// replaced, as a shorter secret): hide the rest of it.
			out = append(out, Masked...)
			i += n
		case i < m.written:
			i++ // written already
		case n > 0:
			out = append(out, Masked...)
			i += n
		default:
			out = append(out, data[i])
			i++
		}
	}
	keep := i
	m.written = max(0, m.written-keep)
	if final {
		// Everything is written; keep the longest tail that may start a secret (marked
		// written), to catch the secret if it continues.
		keep = len(data)
		for k := max(0, len(data)-m.longest()+1); k < len(data); k++ {
			if m.mayGrow(data[k:]) {
				keep = k
				break
			}
		}
		m.written = len(data) - keep
	}
	m.buf = append(m.buf[:0], data[keep:]...)
	return out
}

func (m *MaskWriter) longest() int { return len(m.secrets[0]) }

// mayGrow reports whether b is a proper prefix of a secret.
func (m *MaskWriter) mayGrow(b []byte) bool {
	if len(b) >= m.longest() {
		return false
	}
	for _, s := range m.secrets {
		if len(s) > len(b) && bytes.HasPrefix(s, b) {
			return true
		}
	}
	return false
}

// matchAt returns the length of the longest secret b starts with, or 0.
func (m *MaskWriter) matchAt(b []byte) int {
	for _, s := range m.secrets {
		if bytes.HasPrefix(b, s) {
			return len(s)
		}
	}
	return 0
}
