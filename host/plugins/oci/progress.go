package oci

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress draws a download bar on a terminal, and start/finish lines elsewhere, so
// logs of non-interactive installs stay readable.
type progress struct {
	w           io.Writer
	label       string
	total, done int64
	tty         bool
	last        time.Time
	now         func() time.Time
}

func newProgress(w io.Writer, label string, total int64) *progress {
	p := &progress{w: w, label: label, total: total, now: time.Now}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	if w != nil && !p.tty {
		fmt.Fprintf(w, "downloading %s (%s)\n", label, humanBytes(total))
	}
	return p
}

// Write counts bytes passing through an io.TeeReader.
func (p *progress) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	if p.w != nil && p.tty && (p.now().Sub(p.last) > 100*time.Millisecond || p.done == p.total) {
		p.last = p.now()
		p.draw()
	}
	return len(b), nil
}

func (p *progress) draw() {
	const width = 30
	frac := 1.0
	if p.total > 0 {
		frac = float64(p.done) / float64(p.total)
	}
	if frac > 1 {
		frac = 1
	}
	n := int(frac * width)
	bar := strings.Repeat("=", n) + strings.Repeat(" ", width-n)
	fmt.Fprintf(p.w, "\r%s [%s] %3.0f%% %s/%s", p.label, bar, frac*100, humanBytes(p.done), humanBytes(p.total))
}

// finish ends the bar (or prints the completion line).
func (p *progress) finish(err error) {
	if p.w == nil {
		return
	}
	if p.tty {
		p.draw()
		fmt.Fprintln(p.w)
		return
	}
	if err == nil {
		fmt.Fprintf(p.w, "downloaded %s (%s)\n", p.label, humanBytes(p.done))
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
