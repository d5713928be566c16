package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
)

// TestRegisterVerifyUnregisterCommands drives the three commands as a user would.
func TestRegisterVerifyUnregisterCommands(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRunner("glrt-cli")
	path := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(path, []byte("# mine\nconcurrent = 2\n"), 0o600)
	steps := []struct {
		args     []string
		wantOut  string
		wantCode int
	}{
		{[]string{"register", "-c", path, "--url", srv.URL, "--token", "glrt-cli", "--name", "cli"}, `Runner "cli" (id `, 0},
		{[]string{"verify", "-c", path}, `Verifying runner "cli" at ` + srv.URL + `: is valid`, 0},
		{[]string{"unregister", "-c", path, "--name", "cli"}, `Runner "cli" unregistered`, 0},
		{[]string{"register", "-c", path, "--url", srv.URL, "--token", "glrt-bad", "--name", "bad"}, "", 1},
	}
	for _, st := range steps {
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(st.args)
		err := root.Execute()
		code := 0
		var ee exitError
		switch {
		case errors.As(err, &ee):
			code = ee.code
		case err != nil:
			code = 1
		}
		if code != st.wantCode || !strings.Contains(out.String(), st.wantOut) {
			t.Errorf("runner %v: code %d err %v, output %q; want code %d and %q", st.args, code, err, out.String(), st.wantCode, st.wantOut)
		}
	}
	b, _ := os.ReadFile(path)
	if string(b) != "# mine\nconcurrent = 2\n" {
		t.Errorf("config after register+unregister:\n%s", b)
	}
}
