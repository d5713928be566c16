package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
)

func record(l slog.Level, msg string, attrs ...slog.Attr) slog.Record {
	r := slog.NewRecord(time.Date(2025, 3, 4, 5, 6, 7, 890, time.UTC), l, msg, 0)
	r.AddAttrs(attrs...)
	return r
}

// TestRunnerFormat checks GitLab Runner's runner format: prefix by level, message
// padded to 50 columns, sorted fields, colours only when asked for.
func TestRunnerFormat(t *testing.T) {
	pad := func(prefixMsg string) string { return prefixMsg + strings.Repeat(" ", 50-len(prefixMsg)) }
	attrs := []slog.Attr{slog.String("runner", "abcd1234"), slog.Int("job", 42)}
	for _, tc := range []struct {
		name   string
		level  slog.Level
		colour bool
		want   string
	}{
		{"info", slog.LevelInfo, false, pad("job received") + "  job=42 runner=abcd1234\n"},
		{"warning", slog.LevelWarn, false, pad("WARNING: job received") + "  job=42 runner=abcd1234\n"},
		{"error", slog.LevelError, false, pad("ERROR: job received") + "  job=42 runner=abcd1234\n"},
		{"fatal", LevelFatal, false, pad("FATAL: job received") + "  job=42 runner=abcd1234\n"},
		{"panic", LevelPanic, false, pad("PANIC: job received") + "  job=42 runner=abcd1234\n"},
		{"debug", slog.LevelDebug, false, pad("job received") + "  job=42 runner=abcd1234\n"},
		{"info colour", slog.LevelInfo, true, pad("job received") + "\x1b[0;m  job\x1b[0;m=42 runner\x1b[0;m=abcd1234\n"},
		{"warning colour", slog.LevelWarn, true, "\x1b[0;33m" + pad("WARNING: job received") + "\x1b[0;m  \x1b[0;33mjob\x1b[0;m=42 \x1b[0;33mrunner\x1b[0;m=abcd1234\n"},
		{"error colour", slog.LevelError, true, "\x1b[31;1m" + pad("ERROR: job received") + "\x1b[0;m  \x1b[31;1mjob\x1b[0;m=42 \x1b[31;1mrunner\x1b[0;m=abcd1234\n"},
		{"debug colour", slog.LevelDebug, true, "\x1b[37;1m" + pad("job received") + "\x1b[0;m  \x1b[37;1mjob\x1b[0;m=42 \x1b[37;1mrunner\x1b[0;m=abcd1234\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			h := NewHandler(&b, FormatRunner, slog.LevelDebug, tc.colour)
			if err := h.Handle(t.Context(), record(tc.level, "job received", attrs...)); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("got  %q\nwant %q", b.String(), tc.want)
			}
		})
	}
}

// TestRunnerFormatFields checks groups, attributes added with With, errors, and that
// control characters never reach the output raw: a record is one line without
// escape codes of its own.
func TestRunnerFormatFields(t *testing.T) {
	var b bytes.Buffer
	log := slog.New(NewHandler(&b, FormatRunner, slog.LevelInfo, false)).With("runner", "r1").WithGroup("pool")
	log.Warn("plugin said \x1b[31mred\x1b[0m\nsecond line", "error", errors.New("dial 10.0.0.5:22: refused\n"), "size", 3, slog.Group("", "name", "e2e"))
	out := b.String()
	if strings.ContainsRune(out, 0x1b) || strings.Count(out, "\n") != 1 {
		t.Fatalf("raw control characters in %q", out)
	}
	for _, want := range []string{`WARNING: plugin said \x1b[31mred\x1b[0m\nsecond line`, ` pool.error=dial 10.0.0.5:22: refused\n pool.name=e2e pool.size=3 runner=r1`} {
		if !strings.Contains(out, want) {
			t.Errorf("%q lacks %q", out, want)
		}
	}
}

// TestStructuredFormats checks json and text: GitLab Runner's (logrus's) field names
// and level names, time with nanoseconds.
func TestStructuredFormats(t *testing.T) {
	var b bytes.Buffer
	h := NewHandler(&b, FormatJSON, slog.LevelInfo, true)
	if err := h.Handle(t.Context(), record(slog.LevelWarn, "job finished \x1b[0m", slog.Int("job", 7), slog.String("runner", "abcd1234"))); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Fatalf("%q: %v", b.String(), err)
	}
	if m["level"] != "warning" || m["msg"] != "job finished \x1b[0m" || m["time"] != "2025-03-04T05:06:07.00000089Z" || m["job"] != 7.0 || m["runner"] != "abcd1234" {
		t.Errorf("json: %v", m)
	}
	if bytes.ContainsRune(b.Bytes(), 0x1b) {
		t.Errorf("json carries a raw escape: %q", b.String())
	}

	b.Reset()
	h = NewHandler(&b, FormatText, slog.LevelInfo, true)
	if err := h.Handle(t.Context(), record(LevelFatal, "stopping", slog.String("error", "bad\x1b"))); err != nil {
		t.Fatal(err)
	}
	if want := `time=2025-03-04T05:06:07.00000089Z level=fatal msg=stopping error="bad\x1b"` + "\n"; b.String() != want {
		t.Errorf("text: got %q, want %q", b.String(), want)
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "INFO": slog.LevelInfo, "warn": slog.LevelWarn,
		"warning": slog.LevelWarn, "error": slog.LevelError, "fatal": LevelFatal, "panic": LevelPanic} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseLevel("verbose"); err == nil || !strings.Contains(err.Error(), `"verbose"`) {
		t.Errorf("ParseLevel(verbose): %v", err)
	}
	if _, err := ParseFormat("xml"); err == nil || !strings.Contains(err.Error(), "runner, text or json") {
		t.Errorf("ParseFormat(xml): %v", err)
	}
}

// format tells which format a line is in.
func format(line string) Format {
	switch {
	case strings.HasPrefix(line, "{"):
		return FormatJSON
	case strings.HasPrefix(line, "time="):
		return FormatText
	}
	return FormatRunner
}

// TestPrecedence checks GitLab Runner's order: flag, then environment, then
// config.toml, then the defaults (info, runner); --debug and RUNNER_DEBUG mean debug.
func TestPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name                string
		flags, env          Settings
		cfgLevel, cfgFormat string
		wantLevel           slog.Level
		wantFormat          Format
	}{
		{"defaults", Settings{}, Settings{}, "", "", slog.LevelInfo, FormatRunner},
		{"config", Settings{}, Settings{}, "error", "json", slog.LevelError, FormatJSON},
		{"env over config", Settings{}, Settings{Level: "warn", Format: "text"}, "error", "json", slog.LevelWarn, FormatText},
		{"flag over env", Settings{Level: "debug", Format: "json"}, Settings{Level: "warn", Format: "text"}, "error", "runner", slog.LevelDebug, FormatJSON},
		{"--debug over --log-level", Settings{Debug: true, Level: "error"}, Settings{}, "error", "", slog.LevelDebug, FormatRunner},
		{"RUNNER_DEBUG over config", Settings{}, Settings{Debug: true}, "error", "", slog.LevelDebug, FormatRunner},
		{"flag over RUNNER_DEBUG", Settings{Level: "error"}, Settings{Debug: true}, "", "", slog.LevelError, FormatRunner},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			s, err := New(&b, false, tc.flags, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			log := s.Logger().With("runner", "r1") // made before config.toml is applied
			if err := s.ApplyConfig(tc.cfgLevel, tc.cfgFormat); err != nil {
				t.Fatal(err)
			}
			if s.Level() != tc.wantLevel {
				t.Errorf("level %v, want %v", s.Level(), tc.wantLevel)
			}
			log.Log(t.Context(), LevelPanic, "hello")
			if f := format(b.String()); f != tc.wantFormat || !strings.Contains(b.String(), "runner") {
				t.Errorf("logged %q (%s), want the %s format with the logger's fields", b.String(), f, tc.wantFormat)
			}
		})
	}
}

// TestBadSettings checks that invalid values are refused with where they came from,
// and that an invalid config.toml value changes nothing.
func TestBadSettings(t *testing.T) {
	if _, err := New(new(bytes.Buffer), false, Settings{Level: "loud"}, Settings{}); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad flag: %v", err)
	}
	if _, err := New(new(bytes.Buffer), false, Settings{}, Settings{Format: "xml"}); err == nil || !strings.Contains(err.Error(), "LOG_FORMAT") {
		t.Errorf("bad env: %v", err)
	}
	var b bytes.Buffer
	s, err := New(&b, false, Settings{}, Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyConfig("debug", "xml"); err == nil || !strings.Contains(err.Error(), "log_format") {
		t.Errorf("bad config: %v", err)
	}
	if err := s.ApplyConfig("loud", "json"); err == nil || !strings.Contains(err.Error(), "log_level") {
		t.Errorf("bad config: %v", err)
	}
	s.Logger().Info("still")
	if s.Level() != slog.LevelInfo || format(b.String()) != FormatRunner {
		t.Errorf("a refused config changed the log: level %v, %q", s.Level(), b.String())
	}
}

// openPTY returns a pseudo-terminal's controlling end and its terminal.
func openPTY(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	m, s, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// TestColour: a terminal gets colour unless NO_COLOR is set; pipes and files never.
func TestColour(t *testing.T) {
	_, tty := openPTY(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	f, err := os.Create(t.TempDir() + "/log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	t.Setenv("NO_COLOR", "")
	if !Colour(tty) || Colour(w) || Colour(f) {
		t.Errorf("terminal %v, pipe %v, file %v; want true, false, false", Colour(tty), Colour(w), Colour(f))
	}
	t.Setenv("NO_COLOR", "1")
	if Colour(tty) {
		t.Error("NO_COLOR=1: colour on a terminal")
	}
}
