package executors

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// ANSI colours GitLab's job log uses for the runner's own lines.
const (
	ansiBoldGreen  = "\x1b[32;1m"
	ansiBoldRed    = "\x1b[31;1m"
	ansiBoldYellow = "\x1b[0;33m"
	ansiReset      = "\x1b[0;m"
	ansiClearLine  = "\x1b[0K"
)

// Trace writes a job log: every line gets a timestamp prefix in GitLab's timestamped
// log format (`2026-01-02T15:04:05.000000Z 00O `), and runner steps are wrapped in
// collapsible sections (`section_start:<unix>:<name>`). Safe for concurrent use, so
// stdout and stderr of a script can share it.
type Trace struct {
	mu          sync.Mutex
	out         io.Writer
	now         func() time.Time
	atLineStart bool
	// OnSection, if set, is told the name of each section as it starts (GitLab
	// Runner's build stages: get_sources, step_script, …).
	OnSection func(name string)
}

// NewTrace writes to out; now is the clock (time.Now when nil).
func NewTrace(out io.Writer, now func() time.Time) *Trace {
	if now == nil {
		now = time.Now
	}
	return &Trace{out: out, now: now, atLineStart: true}
}

func (t *Trace) prefix() []byte {
	return []byte(t.now().UTC().Format("2006-01-02T15:04:05.000000Z") + " 00O ")
}

// Write timestamps each line of p.
func (t *Trace) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var buf []byte
	for _, b := range p {
		if t.atLineStart {
			buf = append(buf, t.prefix()...)
			t.atLineStart = false
		}
		buf = append(buf, b)
		if b == '\n' {
			t.atLineStart = true
		}
	}
	if _, err := t.out.Write(buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (t *Trace) line(s string) {
	t.mu.Lock()
	if !t.atLineStart {
		// Finish a script's unterminated last line so the runner's line starts clean.
		_, _ = t.out.Write([]byte("\n"))
		t.atLineStart = true
	}
	t.mu.Unlock()
	_, _ = t.Write([]byte(s + "\n"))
}

// Infof writes a runner line in bold green.
func (t *Trace) Infof(format string, args ...any) {
	t.line(ansiBoldGreen + fmt.Sprintf(format, args...) + ansiReset)
}

// Warnf writes a warning line in yellow.
func (t *Trace) Warnf(format string, args ...any) {
	t.line(ansiBoldYellow + "WARNING: " + fmt.Sprintf(format, args...) + ansiReset)
}

// Errorf writes an error line in bold red.
func (t *Trace) Errorf(format string, args ...any) {
	t.line(ansiBoldRed + "ERROR: " + fmt.Sprintf(format, args...) + ansiReset)
}

// Section runs fn inside a collapsible section with the given name and header.
func (t *Trace) Section(name, header string, collapsed bool, fn func() error) error {
	opt := ""
	if collapsed {
		opt = "[collapsed=true]"
	}
	if t.OnSection != nil {
		t.OnSection(name)
	}
	t.line(fmt.Sprintf("section_start:%d:%s%s\r%s%s%s%s", t.now().Unix(), name, opt, ansiClearLine, ansiBoldGreen, header, ansiReset))
	err := fn()
	t.line(fmt.Sprintf("section_end:%d:%s\r%s", t.now().Unix(), name, ansiClearLine))
	return err
}
