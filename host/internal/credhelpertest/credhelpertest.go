// Package credhelpertest installs a stand-in Docker credential helper for tests: a
// shell script docker-credential-<name> in a temporary directory put first on PATH,
// which speaks the helper protocol's `get` from a table and records every server
// address it was asked for.
package credhelpertest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// StderrMarker is what the helper writes to its stderr on every call, so a test can
// check that a helper's stderr never reaches a job log.
const StderrMarker = "helper-stderr-must-not-be-logged"

// Cred is the helper's answer for one server address. Fail makes the helper exit 1
// with that message on stdout (the protocol's error channel) instead.
type Cred struct {
	Username, Secret string
	Fail             string
}

// Helper is an installed stand-in.
type Helper struct {
	// Name is the part after docker-credential-.
	Name  string
	asked string
}

// Install writes the helper and prepends its directory to PATH for the test. A
// server address not in creds gets the protocol's "credentials not found" answer.
func Install(t testing.TB, name string, creds map[string]Cred) *Helper {
	t.Helper()
	dir := t.TempDir()
	h := &Helper{Name: name, asked: filepath.Join(dir, "asked")}
	var b strings.Builder
	fmt.Fprintf(&b, "#!/bin/sh\necho %s >&2\n[ \"$1\" = get ] || { echo \"unsupported action $1\"; exit 1; }\n", StderrMarker)
	fmt.Fprintf(&b, "read -r server\necho \"$server\" >> %s\ncase \"$server\" in\n", quote(h.asked))
	for server, c := range creds {
		if c.Fail != "" {
			fmt.Fprintf(&b, "%s) echo %s; exit 1;;\n", quote(server), quote(c.Fail))
			continue
		}
		fmt.Fprintf(&b, "%s) printf '%%s' %s;;\n", quote(server),
			quote(fmt.Sprintf(`{"ServerURL":%q,"Username":%q,"Secret":%q}`, server, c.Username, c.Secret)))
	}
	b.WriteString("*) echo 'credentials not found in native keychain'; exit 1;;\nesac\n")
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-"+name), []byte(b.String()), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return h
}

// Asked returns the server addresses the helper was asked for, in order.
func (h *Helper) Asked(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(h.asked)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(data))
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
