package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/config"
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

// TestRegisterFromGitLabEnvironment: GitLab Runner's environment variables and
// --non-interactive register a runner; a flag wins over its variable. Before, with
// CI_SERVER_URL set, register said "--url is required", and --non-interactive was an
// unknown flag.
func TestRegisterFromGitLabEnvironment(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRunner("glrt-env")
	path := filepath.Join(t.TempDir(), "config.toml")
	t.Setenv("CI_SERVER_URL", srv.URL)
	t.Setenv("RUNNER_TOKEN", "glrt-env")
	t.Setenv("RUNNER_NAME", "from-env")
	t.Setenv("RUNNER_EXECUTOR", "docker-autoscaler")
	t.Setenv("DOCKER_IMAGE", "alpine:3")
	t.Setenv("RUNNER_LIMIT", "3")
	t.Setenv("REGISTER_NON_INTERACTIVE", "true")
	out, errOut, code := runCLI(t, "", "register", "-c", path, "--name", "from-flag", "--docker-privileged",
		"--env", "A=1", "--env", "B=2", "--kubernetes-namespace", "ci", "--cache-type=s3", "--docker-services", "redis")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "WARNING: ignored --cache-type, --docker-services, --kubernetes-namespace: Flotilla has no such executor or feature") {
		t.Errorf("stderr %q", errOut)
	}
	cfg, _, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Runners[0]
	if r.Name != "from-flag" || r.URL != srv.URL || r.Token != "glrt-env" || r.Executor != "docker-autoscaler" || r.Limit != 3 ||
		r.Docker.Image != "alpine:3" || !r.Docker.Privileged || strings.Join(r.Environment, " ") != "A=1 B=2" {
		t.Errorf("entry %+v", r)
	}

	// A legacy registration token from REGISTRATION_TOKEN, with the settings GitLab
	// keeps for the runner: sent to GitLab as given.
	srv.AddRegistrationToken("legacy-reg")
	t.Setenv("RUNNER_TOKEN", "")
	t.Setenv("REGISTRATION_TOKEN", "legacy-reg")
	t.Setenv("RUNNER_TAG_LIST", "linux,big")
	t.Setenv("REGISTER_LOCKED", "false")
	t.Setenv("REGISTER_MAINTENANCE_NOTE", "ops team")
	t.Setenv("RUNNER_NAME", "legacy")
	if _, errOut, code := runCLI(t, "", "register", "-c", path); code != 0 {
		t.Fatalf("legacy: exit %d: %s", code, errOut)
	}
	regs := srv.Registrations()
	if len(regs) != 1 || regs[0].Description != "legacy" || regs[0].TagList != "linux,big" || regs[0].Locked || regs[0].RunUntagged ||
		regs[0].MaintenanceNote != "ops team" {
		t.Errorf("registrations %+v", regs)
	}
	if _, errOut, code := runCLI(t, "", "register", "-c", path, "--locked=maybe"); code != exitUsage {
		t.Errorf("--locked=maybe: exit %d: %s", code, errOut)
	}
	t.Setenv("REGISTER_PAUSED", "maybe")
	if _, errOut, code := runCLI(t, "", "register", "-c", path); code != 1 || !strings.Contains(errOut, `REGISTER_PAUSED="maybe" for --paused`) {
		t.Errorf("REGISTER_PAUSED=maybe: exit %d: %s", code, errOut)
	}
}

// TestRegisterRefusesServerSettingsWithAuthToken: as GitLab Runner, the settings that
// live in GitLab are refused with a runner authentication token, and nothing is
// registered.
func TestRegisterRefusesServerSettingsWithAuthToken(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRunner("glrt-x")
	path := filepath.Join(t.TempDir(), "config.toml")
	_, errOut, code := runCLI(t, "", "register", "-n", "-c", path, "--url", srv.URL, "--token", "glrt-x", "--tag-list", "a", "--paused")
	if code != exitUsage || !strings.Contains(errOut, "--paused, --tag-list cannot be given with a runner authentication token") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(path); err == nil {
		t.Error("a config file was written")
	}
}

// TestRegisterAsksOnATerminal: on a terminal register asks GitLab Runner's questions,
// with the flags' values as defaults (Enter keeps them), and a glrt- token given as
// the registration token is taken as an authentication token.
func TestRegisterAsksOnATerminal(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRunner("glrt-ask")
	path := filepath.Join(t.TempDir(), "config.toml")
	old := stdinIsTerminal
	stdinIsTerminal = func(io.Reader) bool { return true }
	defer func() { stdinIsTerminal = old }()
	// URL: typed; token: typed; name: typed; executor: a wrong one, then the right
	// one; image: Enter keeps the flag's; plugin: Enter keeps the default.
	answers := srv.URL + "\nglrt-ask\nasked\nshell\ndocker-autoscaler\n\n\n"
	out, errOut, code := runCLI(t, answers, "register", "-c", path, "--docker-image", "debian:12")
	if code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"Enter the GitLab instance URL (for example, https://gitlab.com/):",
		"Enter the registration token:", "Enter a name for the runner. This is stored only in the local config.toml file:",
		"Enter an executor: instance, docker-autoscaler:", `Invalid executor "shell"`,
		"Enter the default Docker image (for example, ruby:3.3):\n[debian:12]: ", "[local]: ", `Runner "asked"`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	cfg, _, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if r := cfg.Runners[0]; r.Name != "asked" || r.Token != "glrt-ask" || r.Executor != "docker-autoscaler" || r.Docker.Image != "debian:12" {
		t.Errorf("entry %+v", r)
	}
	// --non-interactive asks nothing even on a terminal.
	if _, errOut, code := runCLI(t, "", "register", "-n", "-c", path); code != 1 || !strings.Contains(errOut, "--url is required") {
		t.Errorf("non-interactive: exit %d: %s", code, errOut)
	}
}

// TestListAndResetToken: list shows the entries as GitLab Runner does; reset-token
// replaces a token in GitLab and in the file (by name with the current token, by URL
// and ID with a personal access token, and for all runners), keeping the rest of the
// file byte for byte.
func TestListAndResetToken(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRunner("glrt-one")
	id2 := srv.AddRunner("glrt-two")
	srv.AddPersonalAccessToken("glpat-admin")
	path := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(path, []byte("# mine\nconcurrent = 2\n"), 0o600)
	for _, n := range []string{"one", "two"} {
		if _, errOut, code := runCLI(t, "", "register", "-n", "-c", path, "--url", srv.URL, "--token", "glrt-"+n, "--name", n); code != 0 {
			t.Fatalf("register %s: %s", n, errOut)
		}
	}
	out, _, code := runCLI(t, "", "list", "-c", path)
	if code != 0 || !strings.Contains(out, "Listing configs") || !strings.Contains(out, "ConfigFile="+path) ||
		!regexp.MustCompile(`(?m)^one +Executor=instance Token=glrt-one URL=`+regexp.QuoteMeta(srv.URL)+`$`).MatchString(out) {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	before, _ := os.ReadFile(path)

	token := func(name string) string {
		cfg, _, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range cfg.Runners {
			if r.Name == name {
				return r.Token
			}
		}
		t.Fatalf("no runner %q", name)
		return ""
	}
	steps := []struct {
		args    []string
		changed []string
	}{
		{[]string{"--name", "one"}, []string{"one"}},
		{[]string{"--url", srv.URL, "--id", strconv.FormatInt(id2, 10), "--pat", "glpat-admin"}, []string{"two"}},
		{[]string{"--all-runners"}, []string{"one", "two"}},
	}
	for _, st := range steps {
		old := map[string]string{"one": token("one"), "two": token("two")}
		out, errOut, code := runCLI(t, "", append([]string{"reset-token", "-c", path}, st.args...)...)
		if code != 0 {
			t.Fatalf("reset-token %v: exit %d: %s", st.args, code, errOut)
		}
		for _, n := range []string{"one", "two"} {
			now := token(n)
			changed := slices.Contains(st.changed, n)
			if changed != (now != old[n]) || !srv.ValidToken(now) || (changed && srv.ValidToken(old[n])) {
				t.Errorf("reset-token %v: runner %s: token %q → %q (valid now %v, old %v)", st.args, n, old[n], now,
					srv.ValidToken(now), srv.ValidToken(old[n]))
			}
			if changed && !strings.Contains(out, `Runner "`+n+`": token reset and saved in `+path) {
				t.Errorf("reset-token %v: output %q", st.args, out)
			}
		}
	}
	after, _ := os.ReadFile(path)
	tokenLines := regexp.MustCompile(`(?m)^\s*token(_obtained_at)? = .*$`)
	if tokenLines.ReplaceAllString(string(after), "") != tokenLines.ReplaceAllString(string(before), "") {
		t.Errorf("more than the token lines changed:\n%s\n---\n%s", before, after)
	}
	if _, errOut, code := runCLI(t, "", "reset-token", "-c", path, "--name", "three"); code != 1 || !strings.Contains(errOut, "no matching runner") {
		t.Errorf("unknown name: exit %d: %s", code, errOut)
	}
	if _, errOut, code := runCLI(t, "", "reset-token", "-c", path); code != 1 || !strings.Contains(errOut, "give one of --name") {
		t.Errorf("no selector: exit %d: %s", code, errOut)
	}
}
