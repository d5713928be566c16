package service

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSystemctl writes a systemctl that records its arguments, one call a line, and
// answers is-active with the content of the file "state" next to it. It returns the
// binary and the record's path.
func fakeSystemctl(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	script := "#!/bin/sh\necho \"$*\" >> " + calls + "\n" +
		"if [ \"$1\" = is-active ]; then s=$(cat " + filepath.Join(dir, "state") + " 2>/dev/null || echo inactive); echo $s; [ $s = active ]; exit; fi\n"
	bin := filepath.Join(dir, "systemctl")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, calls
}

func readCalls(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// TestInstallStartStatusUninstall drives the whole life of a service through a
// systemctl that records what it is asked.
func TestInstallStartStatusUninstall(t *testing.T) {
	ctx := context.Background()
	bin, calls := fakeSystemctl(t)
	m := Manager{Name: "ci-pool", UnitDir: filepath.Join(t.TempDir(), "units"), Systemctl: bin}
	exe, _ := os.Executable()
	o := InstallOptions{Executable: exe, ConfigPath: "/etc/gitlab-runner/config.toml", WorkingDirectory: "/var/lib/flotilla", User: "ci"}
	if _, err := m.Running(ctx); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Fatalf("status before install: %v", err)
	}
	if err := m.Install(ctx, o); err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(m.UnitDir, "ci-pool.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ExecStart=" + exe + " run --config /etc/gitlab-runner/config.toml\n",
		"WorkingDirectory=/var/lib/flotilla\n", "User=ci\n", "KillMode=mixed\n", "WantedBy=multi-user.target\n"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q:\n%s", want, unit)
		}
	}
	if err := m.Install(ctx, o); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second install: %v", err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if running, err := m.Running(ctx); err != nil || running {
		t.Errorf("inactive: running %v, %v", running, err)
	}
	os.WriteFile(filepath.Join(filepath.Dir(bin), "state"), []byte("active\n"), 0o644)
	if running, err := m.Running(ctx); err != nil || !running {
		t.Errorf("active: running %v, %v", running, err)
	}
	for _, f := range []func(context.Context) error{m.Stop, m.Restart, m.Uninstall} {
		if err := f(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if m.Installed() {
		t.Error("the unit is still there after uninstall")
	}
	want := []string{"daemon-reload", "enable ci-pool.service", "start ci-pool.service", "is-active ci-pool.service",
		"is-active ci-pool.service", "stop ci-pool.service", "restart ci-pool.service", "stop ci-pool.service",
		"disable ci-pool.service", "daemon-reload"}
	if got := readCalls(t, calls); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("systemctl calls:\n%q\nwant\n%q", got, want)
	}
	if err := m.Start(ctx); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("start after uninstall: %v", err)
	}
}

// TestUnitPassesSystemdAnalyzeVerify: systemd's own checker accepts the unit, and
// refuses a broken one (so the check can fail).
func TestUnitPassesSystemdAnalyzeVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian: systemd)")
	}
	exe, _ := os.Executable()
	dir := t.TempDir()
	for _, o := range []InstallOptions{
		{Executable: exe, ConfigPath: "/etc/gitlab-runner/config.toml"},
		{Executable: exe, ConfigPath: "/srv/my runners/config.toml", WorkingDirectory: "/srv/my runners", User: "root",
			Environment: []string{"FLEETING_PLUGIN_PATH=/opt/plugins", "NOTE=100% $HOME"}},
	} {
		unit, err := Manager{}.Unit(o)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, DefaultName+".service")
		os.WriteFile(path, []byte(unit), 0o644)
		if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify: %v\n%s\n%s", err, out, unit)
		}
	}
	broken := filepath.Join(dir, "broken.service")
	os.WriteFile(broken, []byte("[Service]\nExecStart=relative/runner run\n"), 0o644)
	if out, err := exec.Command(analyze, "verify", broken).CombinedOutput(); err == nil {
		t.Errorf("systemd-analyze verify accepted a broken unit:\n%s", out)
	}
}

// TestUnitRefusesBadPaths: relative paths and line breaks would make a unit systemd
// reads differently from what was meant.
func TestUnitRefusesBadPaths(t *testing.T) {
	for _, o := range []InstallOptions{
		{Executable: "runner", ConfigPath: "/etc/c.toml"},
		{Executable: "/usr/bin/runner", ConfigPath: "config.toml"},
		{Executable: "/usr/bin/runner", ConfigPath: "/etc/c.toml\nUser=root"},
		{Executable: "/usr/bin/runner", ConfigPath: "/etc/c.toml", Environment: []string{"NOEQUALS"}},
	} {
		if _, err := (Manager{}).Unit(o); err == nil {
			t.Errorf("%+v: accepted", o)
		}
	}
}
