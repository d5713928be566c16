package conformancetest

import (
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// Build compiles the plugin's main package pkg (an import path, or a directory such as
// "." or "./cmd/fleeting-plugin-x" relative to the test's package) with `go build` into
// a temporary directory and returns the binary's path, for binary-mode checks. The test
// is skipped when the go command is not on PATH (`go test` puts it there).
func Build(t testing.TB, pkg string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("building plugin %s needs the go command: %v", pkg, err)
	}
	name := path.Base(strings.TrimSuffix(filepath.ToSlash(pkg), "/"))
	if name == "." || name == "" {
		name = "plugin"
	}
	out := filepath.Join(t.TempDir(), name)
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}
