package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/creack/pty"
)

// logRun starts `runner run` on a config.toml with no runners whose listen_address
// is taken, so that the process logs its config warning (no [[runners]]) and exits
// on its own; stderr is the given file, or a pipe when nil. It returns stderr's text
// (from the pipe) and the exit code.
func logRun(t *testing.T, globals string, env []string, stderr *os.File, args ...string) (string, int) {
	t.Helper()
	bin := runnerBinary(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte("concurrent = 1\nlisten_address = \""+taken.Addr().String()+"\"\n"+globals), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(args, "run", "-c", cfg)...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "XDG_STATE_HOME="+dir, "NO_COLOR=", "LOG_LEVEL=", "LOG_FORMAT=", "RUNNER_DEBUG="), env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	if stderr != nil {
		cmd.Stderr = stderr
	} else {
		cmd.Stderr = &out // not an *os.File: exec gives the process a pipe
	}
	err = cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return out.String(), cmd.ProcessState.ExitCode()
}

// TestLogFlagsEnvAndConfig runs the runner as a process writing its log to a pipe:
// --log-level and --log-format, LOG_LEVEL and LOG_FORMAT, and config.toml's log_level
// and log_format apply in GitLab Runner's order (flag, environment, config.toml), in
// GitLab Runner's formats, and no escape code reaches the pipe.
func TestLogFlagsEnvAndConfig(t *testing.T) {
	const warning = "no [[runners]] configured"
	for _, tc := range []struct {
		name    string
		globals string
		env     []string
		args    []string
		want    string // runner, text, json, or none (the warning is filtered out)
	}{
		{"default runner format", "", nil, nil, "runner"},
		{"config json", "log_format = \"json\"\n", nil, nil, "json"},
		{"env over config", "log_format = \"json\"\n", []string{"LOG_FORMAT=text"}, nil, "text"},
		{"flag over env", "log_format = \"json\"\n", []string{"LOG_FORMAT=text"}, []string{"--log-format", "json"}, "json"},
		{"config level error", "log_level = \"error\"\n", nil, nil, "none"},
		{"LOG_LEVEL over config", "log_level = \"error\"\n", []string{"LOG_LEVEL=warn"}, nil, "runner"},
		{"-l over LOG_LEVEL", "log_level = \"warn\"\n", []string{"LOG_LEVEL=warn"}, []string{"-l", "error"}, "none"},
		{"--debug over config", "log_level = \"error\"\n", nil, []string{"--debug"}, "runner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := logRun(t, tc.globals, tc.env, nil, tc.args...)
			if code != 1 || !strings.Contains(out, "listen_address") {
				t.Fatalf("exit %d, want 1 with the listen_address error:\n%s", code, out)
			}
			if strings.ContainsRune(out, 0x1b) {
				t.Errorf("escape codes in a pipe:\n%q", out)
			}
			var line string
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, warning) {
					line = l
				}
			}
			switch tc.want {
			case "none":
				if line != "" {
					t.Errorf("the warning passed the error level: %q", line)
				}
			case "runner":
				if !strings.HasPrefix(line, "WARNING: config") || !strings.Contains(line, "  warning=") {
					t.Errorf("want the runner format, got %q", line)
				}
			case "text":
				if !strings.HasPrefix(line, "time=") || !strings.Contains(line, " level=warning msg=config ") {
					t.Errorf("want the text format, got %q", line)
				}
			case "json":
				var m map[string]any
				if err := json.Unmarshal([]byte(line), &m); err != nil || m["level"] != "warning" || m["msg"] != "config" || m["time"] == nil {
					t.Errorf("want a JSON line with level, msg and time, got %q (%v)", line, err)
				}
			}
		})
	}
}

// TestLogBadValues: an unknown level or format is refused with exit status 2 and
// what was wrong; in config.toml, with the file named.
func TestLogBadValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		globals string
		env     []string
		args    []string
		code    int
		want    string
	}{
		{"flag", "", nil, []string{"--log-level", "loud"}, 2, `--log-level: unknown log level "loud"`},
		{"env", "", []string{"LOG_FORMAT=xml"}, nil, 2, `LOG_FORMAT: unknown log format "xml"`},
		{"config", "log_format = \"xml\"\n", nil, nil, 1, `config.toml:3:1: error: log_format: unknown log_format "xml" (hint: one of runner, text, json)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := logRun(t, tc.globals, tc.env, nil, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("exit %d, want %d with %q:\n%s", code, tc.code, tc.want, out)
			}
		})
	}
}

// TestLogColourOnTerminal gives the runner a terminal as stderr: the runner format is
// coloured there, unless NO_COLOR is set.
func TestLogColourOnTerminal(t *testing.T) {
	for _, tc := range []struct {
		name   string
		env    []string
		colour bool
	}{{"terminal", nil, true}, {"NO_COLOR", []string{"NO_COLOR=1"}, false}} {
		t.Run(tc.name, func(t *testing.T) {
			master, tty := openPTY(t)
			got := make(chan string, 1)
			go func() {
				b, _ := io.ReadAll(master) // ends with EIO once the process has exited
				got <- string(b)
			}()
			logRun(t, "", tc.env, tty)
			tty.Close()
			out := <-got
			if !strings.Contains(out, "no [[runners]] configured") {
				t.Fatalf("no warning on the terminal:\n%q", out)
			}
			if has := strings.Contains(out, "\x1b[0;33mWARNING: config"); has != tc.colour {
				t.Errorf("coloured warning: %v, want %v\n%q", has, tc.colour, out)
			}
			if !tc.colour && strings.ContainsRune(out, 0x1b) {
				t.Errorf("escape codes with NO_COLOR:\n%q", out)
			}
		})
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
