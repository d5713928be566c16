// Package logging is the runner's own log (not the CI job logs, which keep GitLab's
// trace format with its ANSI sections): GitLab Runner's levels (debug, info, warn,
// error, fatal, panic) and formats (runner, text, json), set by flags, environment
// and config.toml in GitLab Runner's precedence, with colour only on a terminal.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// GitLab Runner's levels above error. Nothing in the runner logs at them; they exist
// so that --log-level fatal and panic keep their meaning (only such records pass).
const (
	LevelFatal = slog.Level(12)
	LevelPanic = slog.Level(16)
)

// Format is a log format: FormatRunner, FormatText or FormatJSON.
type Format string

// The formats of GitLab Runner's --log-format.
const (
	// FormatRunner is GitLab Runner's human format: "WARNING: message   key=value",
	// coloured by level on a terminal; the default.
	FormatRunner Format = "runner"
	// FormatText is logfmt: time=… level=… msg=… key=value.
	FormatText Format = "text"
	// FormatJSON is one JSON object per line with GitLab Runner's field names:
	// level, msg, time, then the record's fields (job, runner, error, …).
	FormatJSON Format = "json"
)

var levelNames = []struct {
	name  string
	level slog.Level
}{
	{"debug", slog.LevelDebug}, {"info", slog.LevelInfo}, {"warn", slog.LevelWarn}, {"warning", slog.LevelWarn},
	{"error", slog.LevelError}, {"fatal", LevelFatal}, {"panic", LevelPanic},
}

// ParseLevel reads a level as GitLab Runner accepts it (debug, info, warn or
// warning, error, fatal, panic; any case).
func ParseLevel(s string) (slog.Level, error) {
	for _, l := range levelNames {
		if strings.EqualFold(strings.TrimSpace(s), l.name) {
			return l.level, nil
		}
	}
	return 0, fmt.Errorf("unknown log level %q: want debug, info, warn, error, fatal or panic", s)
}

// ParseFormat reads a log format: runner, text or json.
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(strings.TrimSpace(s))); f {
	case FormatRunner, FormatText, FormatJSON:
		return f, nil
	}
	return "", fmt.Errorf("unknown log format %q: want runner, text or json", s)
}

// LevelName is GitLab Runner's (logrus's) name of a level: debug, info, warning,
// error, fatal or panic.
func LevelName(l slog.Level) string {
	switch {
	case l >= LevelPanic:
		return "panic"
	case l >= LevelFatal:
		return "fatal"
	case l >= slog.LevelError:
		return "error"
	case l >= slog.LevelWarn:
		return "warning"
	case l >= slog.LevelInfo:
		return "info"
	}
	return "debug"
}

// Colour reports whether output to f may be coloured: f is a terminal and NO_COLOR
// is unset or empty (https://no-color.org). Files and pipes never get escape codes.
func Colour(f *os.File) bool {
	if os.Getenv("NO_COLOR") != "" || f == nil {
		return false
	}
	return term.IsTerminal(int(f.Fd()))
}

// NewHandler returns a handler writing format to w at level and above; colour only
// applies to the runner format.
func NewHandler(w io.Writer, format Format, level slog.Leveler, colour bool) slog.Handler {
	switch format {
	case FormatText, FormatJSON:
		o := &slog.HandlerOptions{Level: level, ReplaceAttr: gitlabNames}
		if format == FormatJSON {
			return slog.NewJSONHandler(w, o)
		}
		return slog.NewTextHandler(w, o)
	}
	return newRunnerHandler(w, level, colour)
}

// gitlabNames gives the built-in fields logrus's values: level in lower case with
// logrus's names (warning, not WARN) and time with nanoseconds, as GitLab Runner's
// text and json formats print them.
func gitlabNames(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.LevelKey:
		if l, ok := a.Value.Any().(slog.Level); ok {
			return slog.String(slog.LevelKey, LevelName(l))
		}
	case slog.TimeKey:
		if t, ok := a.Value.Any().(time.Time); ok {
			return slog.String(slog.TimeKey, t.Format(time.RFC3339Nano))
		}
	}
	return a
}

// Settings are the log level and format as flags and environment give them; empty
// fields were not given.
type Settings struct {
	// Debug is --debug (or RUNNER_DEBUG): the debug level, over Level.
	Debug bool
	// Level is --log-level (or LOG_LEVEL).
	Level string
	// Format is --log-format (or LOG_FORMAT).
	Format string
}

// FromEnv reads GitLab Runner's environment variables: RUNNER_DEBUG, LOG_LEVEL and
// LOG_FORMAT.
func FromEnv(getenv func(string) string) Settings {
	d := strings.ToLower(getenv("RUNNER_DEBUG"))
	return Settings{Debug: d == "1" || d == "true" || d == "yes" || d == "on",
		Level: getenv("LOG_LEVEL"), Format: getenv("LOG_FORMAT")}
}

// Setup is the process's log: its level and format come from the command line, then
// the environment, then config.toml (ApplyConfig), then the defaults (info, runner).
// Loggers made from it follow later changes of level and format, so `runner run`
// can apply config.toml (and its reloads) to loggers it has already handed out.
type Setup struct {
	out    io.Writer
	colour bool
	level  slog.LevelVar

	mu          sync.Mutex
	format      Format
	levelFixed  bool // by a flag or the environment: config.toml does not change it
	formatFixed bool
	gen         atomic.Uint64
	base        atomic.Pointer[slog.Handler]
}

// New returns the Setup writing to out, with flags over env (both as read from the
// command line and the environment). colour enables colour for the runner format
// (see Colour).
func New(out io.Writer, colour bool, flags, env Settings) (*Setup, error) {
	s := &Setup{out: out, colour: colour, format: FormatRunner}
	s.level.Set(slog.LevelInfo)
	pick := func(flag, env string) string {
		if flag != "" {
			return flag
		}
		return env
	}
	switch lv := pick(flags.Level, env.Level); {
	case flags.Debug:
		s.level.Set(slog.LevelDebug)
		s.levelFixed = true
	case flags.Level != "":
		if err := s.setLevel(flags.Level, "--log-level"); err != nil {
			return nil, err
		}
	case env.Debug:
		s.level.Set(slog.LevelDebug)
		s.levelFixed = true
	case lv != "":
		if err := s.setLevel(lv, "LOG_LEVEL"); err != nil {
			return nil, err
		}
	}
	if f, src := pick(flags.Format, env.Format), "--log-format"; f != "" {
		if flags.Format == "" {
			src = "LOG_FORMAT"
		}
		format, err := ParseFormat(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", src, err)
		}
		s.format, s.formatFixed = format, true
	}
	s.rebuild()
	return s, nil
}

func (s *Setup) setLevel(v, src string) error {
	l, err := ParseLevel(v)
	if err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	s.level.Set(l)
	s.levelFixed = true
	return nil
}

func (s *Setup) rebuild() {
	h := NewHandler(s.out, s.format, &s.level, s.colour)
	s.base.Store(&h)
	s.gen.Add(1)
}

// ApplyConfig applies config.toml's log_level and log_format (empty: not set) where
// neither a flag nor the environment set them, as GitLab Runner does on start and on
// every reload. Nothing is changed if either value is invalid.
func (s *Setup) ApplyConfig(level, format string) error {
	var l slog.Level
	var f Format
	var err error
	if level != "" {
		if l, err = ParseLevel(level); err != nil {
			return fmt.Errorf("log_level: %w", err)
		}
	}
	if format != "" {
		if f, err = ParseFormat(format); err != nil {
			return fmt.Errorf("log_format: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if level != "" && !s.levelFixed {
		s.level.Set(l)
	}
	if format != "" && !s.formatFixed && f != s.format {
		s.format = f
		s.rebuild()
	}
	return nil
}

// Level returns the level in force.
func (s *Setup) Level() slog.Level { return s.level.Level() }

// Logger returns a logger that follows the Setup's level and format.
func (s *Setup) Logger() *slog.Logger { return slog.New(&dynamic{s: s}) }

// dynamic is a handler that rebuilds itself (with the attributes and groups added to
// it) on the Setup's current base handler whenever the format changes.
type dynamic struct {
	s     *Setup
	ops   []func(slog.Handler) slog.Handler
	cache atomic.Pointer[built]
}

type built struct {
	gen uint64
	h   slog.Handler
}

func (d *dynamic) current() slog.Handler {
	gen := d.s.gen.Load()
	if c := d.cache.Load(); c != nil && c.gen == gen {
		return c.h
	}
	h := *d.s.base.Load()
	for _, op := range d.ops {
		h = op(h)
	}
	d.cache.Store(&built{gen, h})
	return h
}

func (d *dynamic) Enabled(_ context.Context, l slog.Level) bool { return l >= d.s.level.Level() }

func (d *dynamic) Handle(ctx context.Context, r slog.Record) error { return d.current().Handle(ctx, r) }

func (d *dynamic) with(op func(slog.Handler) slog.Handler) slog.Handler {
	return &dynamic{s: d.s, ops: append(d.ops[:len(d.ops):len(d.ops)], op)}
}

func (d *dynamic) WithAttrs(as []slog.Attr) slog.Handler {
	return d.with(func(h slog.Handler) slog.Handler { return h.WithAttrs(as) })
}

func (d *dynamic) WithGroup(name string) slog.Handler {
	return d.with(func(h slog.Handler) slog.Handler { return h.WithGroup(name) })
}
