package logging

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// GitLab Runner's colours of its runner format (helpers/colors.go there).
const (
	ansiBoldWhite = "\x1b[37;1m"
	ansiYellow    = "\x1b[0;33m"
	ansiBoldRed   = "\x1b[31;1m"
	ansiReset     = "\x1b[0;m"
)

// runnerHandler writes GitLab Runner's "runner" format: the level's prefix
// (WARNING:, ERROR:, FATAL:, PANIC:; none for info and debug) and the message padded
// to 50 columns, then the fields sorted by key as " key=value". On a terminal the
// message and keys take the level's colour. Control characters in messages and
// values are written escaped (\x1b, \n), so a record is always one line and never
// carries escape codes of its own.
type runnerHandler struct {
	mu     *sync.Mutex
	w      io.Writer
	level  slog.Leveler
	colour bool
	attrs  []field // from WithAttrs, keys already qualified
	prefix string  // group prefix for later attributes: "a.b."
}

type field struct{ key, value string }

func newRunnerHandler(w io.Writer, level slog.Leveler, colour bool) *runnerHandler {
	return &runnerHandler{mu: new(sync.Mutex), w: w, level: level, colour: colour}
}

func (h *runnerHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *runnerHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(h.attrs[:len(h.attrs):len(h.attrs)], nil...)
	for _, a := range as {
		n.attrs = appendAttr(n.attrs, h.prefix, a)
	}
	return &n
}

func (h *runnerHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.prefix = h.prefix + name + "."
	return &n
}

func levelStyle(l slog.Level) (colour, prefix string) {
	switch {
	case l >= LevelPanic:
		return ansiBoldRed, "PANIC: "
	case l >= LevelFatal:
		return ansiBoldRed, "FATAL: "
	case l >= slog.LevelError:
		return ansiBoldRed, "ERROR: "
	case l >= slog.LevelWarn:
		return ansiYellow, "WARNING: "
	case l >= slog.LevelInfo:
		return "", ""
	}
	return ansiBoldWhite, ""
}

func (h *runnerHandler) Handle(_ context.Context, r slog.Record) error {
	fields := append([]field(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		fields = appendAttr(fields, h.prefix, a)
		return true
	})
	sort.SliceStable(fields, func(i, j int) bool { return fields[i].key < fields[j].key })

	colour, prefix := levelStyle(r.Level)
	reset := ansiReset
	if !h.colour {
		colour, reset = "", ""
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s%s%-*s%s ", colour, prefix, 50-len(prefix), escape(r.Message), reset)
	for _, f := range fields {
		fmt.Fprintf(&b, " %s%s%s=%s", colour, f.key, reset, f.value)
	}
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.w.Write(b.Bytes())
	return err
}

// appendAttr flattens a (groups become "group.key") and formats its value.
func appendAttr(fs []field, prefix string, a slog.Attr) []field {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return fs
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			fs = appendAttr(fs, p, g)
		}
		return fs
	}
	var v string
	switch a.Value.Kind() {
	case slog.KindTime:
		v = a.Value.Time().Format(time.RFC3339Nano)
	case slog.KindAny:
		if err, ok := a.Value.Any().(error); ok {
			v = err.Error()
		} else {
			v = fmt.Sprint(a.Value.Any())
		}
	default:
		v = a.Value.String()
	}
	return append(fs, field{escape(prefix + a.Key), escape(v)})
}

// escape writes control characters (and invalid UTF-8) as Go escapes.
func escape(s string) string {
	clean := true
	for _, r := range s {
		if isControl(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b []byte
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if isControl(r) {
			q := strconv.QuoteRune(r)
			b = append(b, q[1:len(q)-1]...)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return string(b)
}

func isControl(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == utf8.RuneError
}
