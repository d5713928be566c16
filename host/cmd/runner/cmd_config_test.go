package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/config"
)

// runConfigCmd runs `runner config …` in-process and returns stdout, stderr and the
// exit code main would use.
func runConfigCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runCLI(t, "", append([]string{"config"}, args...)...)
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
		{"file as argument", []string{"check", bad}, 1, []string{"bad.toml:3:3: error: runners[0].limit: wrong type"}},
		{"same file twice", []string{"check", "-c", good, good}, 0, []string{"good.toml: OK"}},
		{"two files", []string{"check", "-c", good, bad}, 2, []string{"the file is given twice"}},
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

// TestDefaultConfigPath: without -c, $CONFIG_FILE, then GitLab Runner's location
// when it exists, then ./config.toml when it exists (Flotilla's earlier default), then
// GitLab's location. Before, the default was ./config.toml whatever existed.
func TestDefaultConfigPath(t *testing.T) {
	const root, user = "/etc/gitlab-runner/config.toml", "/home/ci/.gitlab-runner/config.toml"
	tests := []struct {
		name   string
		env    string
		euid   int
		exists []string
		want   string
	}{
		{"$CONFIG_FILE wins", "/etc/flotilla/config.toml", 0, []string{root, "config.toml"}, "/etc/flotilla/config.toml"},
		{"root, GitLab's file", "", 0, []string{root, "config.toml"}, root},
		{"user, GitLab's file", "", 1000, []string{user, "config.toml"}, user},
		{"only ./config.toml", "", 1000, []string{"config.toml"}, "config.toml"},
		{"nothing: root", "", 0, nil, root},
		{"nothing: user", "", 1000, nil, user},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := configPathFor(func(string) string { return tt.env }, tt.euid, "/home/ci",
				func(p string) bool { return slices.Contains(tt.exists, p) })
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
