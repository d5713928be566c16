package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServiceCommands: install, start, status, stop and uninstall as GitLab Runner's,
// against a systemctl on PATH that records its calls and a unit directory of the
// test's. `runner status` without a service but with a config of pools points to
// `runner pool status`.
func TestServiceCommands(t *testing.T) {
	bin := t.TempDir()
	calls := filepath.Join(bin, "calls")
	os.WriteFile(filepath.Join(bin, "systemctl"), []byte("#!/bin/sh\necho \"$*\" >> "+calls+
		"\n[ \"$1\" = is-active ] && { echo active; exit 0; }\nexit 0\n"), 0o755)
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	units := t.TempDir()
	t.Setenv(unitDirEnv, units)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte("[[runners]]\n  name = \"a\"\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"local\"\n"), 0o600)
	t.Setenv("CONFIG_FILE", cfg)

	_, errOut, code := runCLI(t, "", "status")
	if code != 1 || !strings.Contains(errOut, "the service is not installed") || !strings.Contains(errOut, "`runner pool status`") {
		t.Errorf("status before install: exit %d: %s", code, errOut)
	}
	steps := []struct {
		args []string
		want string
	}{
		{[]string{"install", "--service", "ci", "-c", cfg, "-d", dir, "--user", "ci", "--syslog", "--password", "x"}, "Installed " + filepath.Join(units, "ci.service")},
		{[]string{"start", "-n", "ci"}, "ci: Service started"},
		{[]string{"status", "-n", "ci"}, "ci: Service is running"},
		{[]string{"stop", "--service", "ci"}, "ci: Service stopped"},
		{[]string{"uninstall", "-n", "ci"}, "ci: Service uninstalled"},
	}
	for _, st := range steps {
		out, errOut, code := runCLI(t, "", st.args...)
		if code != 0 || !strings.Contains(out, st.want) {
			t.Fatalf("%v: exit %d\n%s%s", st.args, code, out, errOut)
		}
		if st.args[0] == "install" {
			if !strings.Contains(errOut, "ignored --password") || !strings.Contains(errOut, "ignored --syslog") {
				t.Errorf("install warnings: %q", errOut)
			}
			unit, _ := os.ReadFile(filepath.Join(units, "ci.service"))
			if !strings.Contains(string(unit), " run --config "+cfg+"\n") || !strings.Contains(string(unit), "WorkingDirectory="+dir+"\n") {
				t.Errorf("unit:\n%s", unit)
			}
		}
	}
	b, _ := os.ReadFile(calls)
	want := "daemon-reload\nenable ci.service\nstart ci.service\nis-active ci.service\nstop ci.service\nstop ci.service\ndisable ci.service\ndaemon-reload\n"
	if string(b) != want {
		t.Errorf("systemctl calls:\n%s\nwant\n%s", b, want)
	}
}
