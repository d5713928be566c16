package plugins

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce  sync.Once
	builtDir   string
	buildError error
)

// builtPrograms builds, once per test binary, two real programs: the repository's
// minimal plugin (a real Flotilla plugin, linking go-plugin) and a tiny Go program
// that is not a plugin. It returns the directory holding "plugin" and "notplugin".
func builtPrograms(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go toolchain to build the test programs")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "plugins-test-bin-")
		if err != nil {
			buildError = err
			return
		}
		builtDir = dir
		src := filepath.Join(dir, "src")
		os.MkdirAll(src, 0o755)
		os.WriteFile(filepath.Join(src, "go.mod"), []byte("module example.com/notplugin\n\ngo 1.21\n"), 0o644)
		os.WriteFile(filepath.Join(src, "main.go"), []byte("package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"usage: notplugin [options]\") }\n"), 0o644)
		for _, b := range []struct{ dir, out, pkg string }{
			{src, filepath.Join(dir, "notplugin"), "."},
			{".", filepath.Join(dir, "plugin"), "github.com/flotilla-ci/flotilla/examples/minimal-plugin"},
		} {
			cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
			cmd.Dir = b.dir
			cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildError = errors.New("go build " + b.pkg + ": " + err.Error() + ": " + string(out))
				return
			}
		}
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
	return builtDir
}

func copyExe(t *testing.T, from, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestResolveChecksBareNameOnPath: a program found on PATH under the bare plugin name
// is used only when it is built as a plugin; anything else is skipped without being
// started, and the error says what was found and why it was skipped.
func TestResolveChecksBareNameOnPath(t *testing.T) {
	progs := builtPrograms(t)
	bin := t.TempDir()
	marker := filepath.Join(t.TempDir(), "started")
	// The AWS CLI v1 is a Python script; this one records that it was run.
	aws := writeScript(t, bin, "aws", "#!/bin/sh\ntouch "+marker+"\necho 'usage: aws [options] <command> <subcommand>'\n")
	notPlugin := copyExe(t, filepath.Join(progs, "notplugin"), bin, "tool")
	real := copyExe(t, filepath.Join(progs, "plugin"), bin, "minimal")

	tests := []struct {
		value    string
		wantPath string
		wantErr  []string
	}{
		{value: "minimal", wantPath: real},
		{value: "aws", wantErr: []string{
			"found " + aws + `: not a Flotilla plugin (a script run by "/bin/sh", not a plugin binary; it looks like the AWS command-line tool; it was not started)`,
			"runner fleeting install", "flotilla-plugin-aws"}},
		{value: "tool", wantErr: []string{
			"found " + notPlugin + ": not a Flotilla plugin (a Go program (example.com/notplugin) that does not link github.com/hashicorp/go-plugin, so it cannot answer the plugin handshake; it was not started)"}},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			got, err := Resolve(tt.value, Options{Root: t.TempDir(), Path: []string{bin}, Getenv: envOf(nil)})
			if tt.wantPath != "" {
				if err != nil || got.Path != tt.wantPath || got.Source != SourcePath {
					t.Fatalf("Resolve = %+v, %v; want %s from PATH", got, err, tt.wantPath)
				}
				return
			}
			if !errors.Is(err, ErrPluginNotFound) {
				t.Fatalf("Resolve = %+v, %v; want ErrPluginNotFound", got, err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
		})
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the non-plugin aws program was started")
	}
}

func writeScript(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
