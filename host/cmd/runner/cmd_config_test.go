package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/config"
)

// runConfigCmd runs `runner config …` in-process and returns stdout, stderr and the
// exit code main would use.
func runConfigCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"config"}, args...))
	defer root.SetArgs(nil)
	err := root.Execute()
	code := 0
	var ee exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
	case err != nil:
		errOut.WriteString(err.Error())
		code = 1
	}
	return out.String(), errOut.String(), code
}

func TestConfigCheckCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", "[[runners]]\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"local\"\n")
	warn := write("warn.toml", "concurent = 3\n[[runners]]\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"local\"\n")
	bad := write("bad.toml", "[[runners]]\n  executor = \"docker-autoscaler\"\n  limit = \"2\"\n")
	tests := []struct {
		name     string
		args     []string
		code     int
		contains []string
	}{
		{"clean", []string{"check", "-c", good}, 0, []string{"good.toml: OK (0 warning(s))"}},
		{"warnings only exit 0", []string{"check", "--config", warn}, 0,
			[]string{"warn.toml:1:1: warning: concurent: unknown key", `did you mean "concurrent"?`, "OK (1 warning(s))"}},
		{"errors exit 1", []string{"check", "-c", bad}, 1, []string{
			"bad.toml:2:3: error: runners[0].executor: executor requires autoscaler config",
			"bad.toml:3:3: error: runners[0].limit: wrong type", "2 error(s), 0 warning(s)"}},
		{"missing file", []string{"check", "-c", filepath.Join(dir, "none.toml")}, 1, []string{"reading config file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runConfigCmd(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\n%s%s", code, tt.code, out, errOut)
			}
			for _, c := range tt.contains {
				if !strings.Contains(out+errOut, c) {
					t.Errorf("output lacks %q:\n%s%s", c, out, errOut)
				}
			}
		})
	}
}

func TestConfigMigrateCommand(t *testing.T) {
	in := filepath.Join("..", "..", "..", "examples", "configs", "docker-machine-aws.toml")
	outFile := filepath.Join(t.TempDir(), "migrated.toml")
	_, errOut, code := runConfigCmd(t, "migrate", "-c", in, "-o", outFile)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "warning: runners[0] \"static-scaler\": MaxGrowthRate") || !strings.Contains(errOut, "2 runner(s) migrated") {
		t.Errorf("stderr:\n%s", errOut)
	}
	cfg, _, err := config.Load(outFile)
	if err != nil {
		t.Fatalf("migrated file does not load: %v", err)
	}
	if cfg.Runners[1].Executor != "docker-autoscaler" || len(cfg.Runners[1].Autoscaler.Policy) != 3 {
		t.Errorf("%+v", cfg.Runners[1])
	}

	// Without -o the result goes to stdout; a file without docker+machine is no error.
	out, _, code := runConfigCmd(t, "migrate", "-c", in, "-o", "")
	if code != 0 || !strings.Contains(out, "executor = 'docker-autoscaler'") {
		t.Errorf("stdout (exit %d):\n%s", code, out)
	}
	_, errOut, code = runConfigCmd(t, "migrate", "-c", outFile, "-o", "")
	if code != 0 || !strings.Contains(errOut, "no docker+machine runner to migrate") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestDefaultConfigPath(t *testing.T) {
	t.Setenv("CONFIG_FILE", "/etc/flotilla/config.toml")
	if got := defaultConfigPath(); got != "/etc/flotilla/config.toml" {
		t.Errorf("with $CONFIG_FILE: %q", got)
	}
	t.Setenv("CONFIG_FILE", "")
	if got := defaultConfigPath(); got != "config.toml" {
		t.Errorf("default: %q", got)
	}
}
