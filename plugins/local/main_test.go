package local

import (
	"os"
	"testing"
)

// TestMain lets the test binary act as the runner does: "plugin-local ARGS" serves the
// local plugin (and so also runs its instance-serve and ns-init subcommands). Tests
// launch os.Args[0] with that argument to exercise the real out-of-process paths
// without building a binary.
func TestMain(m *testing.M) {
	ServeIfAsked(os.Args)
	os.Exit(m.Run())
}

// selfCommand is how tests run this test binary as the local plugin.
func selfCommand(t testing.TB) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe, EmbeddedCommand}
}
