// Package service installs `runner run` as a systemd service and starts, stops and
// queries it through systemctl, as GitLab Runner's install, uninstall, start, stop,
// restart and status commands do. The unit directory and the systemctl binary are
// settable, so tests never touch the machine's systemd.
package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
)

// DefaultName is the service name when none is given. It is not GitLab Runner's
// "gitlab-runner", so that installing Flotilla never replaces GitLab Runner's unit.
const DefaultName = "flotilla-runner"

// DefaultUnitDir is where system units installed by an administrator go.
const DefaultUnitDir = "/etc/systemd/system"

// Manager installs and controls one service.
type Manager struct {
	// Name is the service (unit) name without ".service"; DefaultName when empty.
	Name string
	// UnitDir is where the unit file is written; DefaultUnitDir when empty.
	UnitDir string
	// Systemctl is the systemctl binary; "systemctl" on PATH when empty.
	Systemctl string
}

// InstallOptions describe the service's `runner run`.
type InstallOptions struct {
	// Executable is the runner binary (absolute); ConfigPath the config.toml it serves.
	Executable, ConfigPath string
	// WorkingDirectory is the service's working directory (absolute; "" leaves
	// systemd's default, /).
	WorkingDirectory string
	// User runs the service as this user instead of root.
	User string
	// Environment is KEY=VALUE set for the service.
	Environment []string
}

// ErrNotInstalled is returned when the unit file is not there.
var ErrNotInstalled = errors.New("the service is not installed")

func (m Manager) name() string {
	if m.Name == "" {
		return DefaultName
	}
	return m.Name
}

// UnitPath is the unit file's path.
func (m Manager) UnitPath() string {
	dir := m.UnitDir
	if dir == "" {
		dir = DefaultUnitDir
	}
	return filepath.Join(dir, m.name()+".service")
}

// Installed reports whether the unit file exists.
func (m Manager) Installed() bool {
	_, err := os.Stat(m.UnitPath())
	return err == nil
}

// unitTemplate is GitLab Runner's systemd unit with two changes for Flotilla's
// shutdown: SIGTERM goes to the runner only (KillMode=mixed), not to its plugins, so
// that it can still ask them to delete the instances; and it gets ten minutes for
// that before systemd kills what is left.
var unitTemplate = template.Must(template.New("unit").Parse(`# Written by "runner install"; "runner uninstall" removes it.
[Unit]
Description=Flotilla runner ({{.Name}})
Documentation=https://github.com/flotilla-ci/flotilla
ConditionFileIsExecutable={{.Executable}}
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=5
StartLimitBurst=10

[Service]
ExecStart={{.ExecStart}}
{{- if .WorkingDirectory}}
WorkingDirectory={{.WorkingDirectory}}
{{- end}}
{{- if .User}}
User={{.User}}
{{- end}}
{{- range .Environment}}
Environment={{.}}
{{- end}}
Restart=always
RestartSec=120
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=10min

[Install]
WantedBy=multi-user.target
`))

// Unit returns the unit file's text.
func (m Manager) Unit(o InstallOptions) (string, error) {
	for _, p := range []struct{ what, path string }{{"executable", o.Executable}, {"config file", o.ConfigPath}, {"working directory", o.WorkingDirectory}} {
		if p.path != "" && !filepath.IsAbs(p.path) {
			return "", fmt.Errorf("install: the %s %q must be an absolute path", p.what, p.path)
		}
		if strings.ContainsAny(p.path, "\n") {
			return "", fmt.Errorf("install: the %s %q has a line break", p.what, p.path)
		}
	}
	if o.Executable == "" || o.ConfigPath == "" {
		return "", errors.New("install: the executable and the config file are required")
	}
	env := make([]string, len(o.Environment))
	for i, e := range o.Environment {
		if !strings.Contains(e, "=") || strings.ContainsAny(e, "\n") {
			return "", fmt.Errorf("install: environment %q: want KEY=VALUE on one line", e)
		}
		env[i] = quote(e)
	}
	var b bytes.Buffer
	err := unitTemplate.Execute(&b, map[string]any{
		"Name": m.name(), "Executable": o.Executable, "WorkingDirectory": o.WorkingDirectory, "User": o.User,
		"Environment": env,
		"ExecStart":   strings.Join([]string{quote(o.Executable), "run", "--config", quote(o.ConfigPath)}, " "),
	})
	return b.String(), err
}

// quote quotes one word of a systemd command line or assignment when it needs it.
func quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"'\\$%;") {
		return s
	}
	s = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "$", "$$", "%", "%%").Replace(s)
	return `"` + s + `"`
}

// Install writes the unit, reloads systemd and enables the service (it does not start
// it: `runner start` does, as with GitLab Runner).
func (m Manager) Install(ctx context.Context, o InstallOptions) error {
	unit, err := m.Unit(o)
	if err != nil {
		return err
	}
	if m.Installed() {
		return fmt.Errorf("install: %s already exists: run `runner uninstall --service %s` first", m.UnitPath(), m.name())
	}
	if err := os.MkdirAll(filepath.Dir(m.UnitPath()), 0o755); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := os.WriteFile(m.UnitPath(), []byte(unit), 0o644); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := m.systemctl(ctx, "daemon-reload"); err != nil {
		os.Remove(m.UnitPath())
		return fmt.Errorf("install: %w", err)
	}
	if err := m.systemctl(ctx, "enable", m.name()+".service"); err != nil {
		return fmt.Errorf("install: the unit was written to %s but: %w", m.UnitPath(), err)
	}
	return nil
}

// Uninstall stops and disables the service and removes its unit.
func (m Manager) Uninstall(ctx context.Context) error {
	if !m.Installed() {
		return fmt.Errorf("uninstall %s: %w", m.name(), ErrNotInstalled)
	}
	// A service that is not running makes stop succeed anyway.
	if err := m.systemctl(ctx, "stop", m.name()+".service"); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if err := m.systemctl(ctx, "disable", m.name()+".service"); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if err := os.Remove(m.UnitPath()); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if err := m.systemctl(ctx, "daemon-reload"); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	return nil
}

// Start, Stop and Restart the installed service.
func (m Manager) Start(ctx context.Context) error   { return m.control(ctx, "start") }
func (m Manager) Stop(ctx context.Context) error    { return m.control(ctx, "stop") }
func (m Manager) Restart(ctx context.Context) error { return m.control(ctx, "restart") }

func (m Manager) control(ctx context.Context, verb string) error {
	if !m.Installed() {
		return fmt.Errorf("%s %s: %w", verb, m.name(), ErrNotInstalled)
	}
	if err := m.systemctl(ctx, verb, m.name()+".service"); err != nil {
		return fmt.Errorf("%s: %w", verb, err)
	}
	return nil
}

// Running reports whether the installed service is active (systemctl is-active).
func (m Manager) Running(ctx context.Context) (bool, error) {
	if !m.Installed() {
		return false, fmt.Errorf("status of %s: %w", m.name(), ErrNotInstalled)
	}
	out, err := exec.CommandContext(ctx, m.bin(), "is-active", m.name()+".service").Output()
	state := strings.TrimSpace(string(out))
	var ee *exec.ExitError
	switch {
	case err == nil:
		return state == "active", nil
	case errors.As(err, &ee) && state != "":
		// is-active exits non-zero for every state but active: inactive, failed, ….
		return false, nil
	default:
		return false, fmt.Errorf("status: %s is-active: %w", m.bin(), err)
	}
}

func (m Manager) bin() string {
	if m.Systemctl == "" {
		return "systemctl"
	}
	return m.Systemctl
}

func (m Manager) systemctl(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, m.bin(), args...).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if msg != "" {
			msg = ": " + msg
		}
		return fmt.Errorf("%s %s: %w%s", m.bin(), strings.Join(args, " "), err, msg)
	}
	return nil
}
