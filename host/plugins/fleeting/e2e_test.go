package fleeting_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/registrytest"
)

// TestPublishInstallThenExec is the publishing path end to end, through the real CLI:
// a plugin binary (the standalone local plugin) is packaged, signed and pushed to a real
// registry, `runner fleeting install` installs it, and `runner exec` then runs a job on
// it — found by discovery in the install directory, with nothing on PATH.
func TestPublishInstallThenExec(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	reg := registrytest.Start(t)
	root := moduleRoot(t)
	tmp := t.TempDir()
	runner, plugin := filepath.Join(tmp, "runner"), filepath.Join(tmp, "fleeting-plugin-sandbox")
	goBuild(t, root, "./host/cmd/runner", runner)
	goBuild(t, root, "./plugins/local/cmd/fleeting-plugin-local", plugin)

	env := append(os.Environ(),
		"HOME="+tmp, "DOCKER_CONFIG="+filepath.Join(tmp, "docker"), "XDG_STATE_HOME="+filepath.Join(tmp, "state"),
		"FLEETING_PLUGIN_PATH="+filepath.Join(tmp, "plugins"), "PATH=/usr/bin:/bin")
	run := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command(runner, args...)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("runner %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	key := filepath.Join(tmp, "signing.pem")
	run(tmp, "fleeting", "keygen", key)
	run(tmp, "fleeting", "package", "--name", "sandbox", "--version", "1.2.0",
		"--binary", runtime.GOOS+"/"+runtime.GOARCH+"="+plugin, "--key", key, "-o", filepath.Join(tmp, "sandbox.tar"))
	run(tmp, "fleeting", "--plain-http", "login", reg.Addr, "--username", reg.User, "--password", reg.Password)
	ref := reg.Addr + "/flotilla/plugins/sandbox"
	run(tmp, "fleeting", "--plain-http", "push", filepath.Join(tmp, "sandbox.tar"), ref+":1.2.0")

	cfg := filepath.Join(tmp, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`concurrent = 2
[fleeting]
  public_keys = [%q]

[[runners]]
  name = "installed"
  executor = "instance"
  [runners.autoscaler]
    plugin = "%s:1"
    capacity_per_instance = 2
    max_instances = 1
    update_interval_when_expecting = "100ms"
    shutdown_deletion_interval = "200ms"
    [runners.autoscaler.plugin_config]
      root_dir = %q
`, key+".pub", ref, filepath.Join(tmp, "instances"))), 0o600)
	out := run(tmp, "fleeting", "--plain-http", "-c", cfg, "install")
	if !strings.Contains(out, "plugin: "+ref+":1") || !strings.Contains(out, filepath.Join(tmp, "plugins")) {
		t.Fatalf("install output:\n%s", out)
	}

	project := filepath.Join(tmp, "project")
	os.MkdirAll(project, 0o755)
	os.WriteFile(filepath.Join(project, ".gitlab-ci.yml"), []byte("hello:\n  script: [echo hello from the installed plugin]\n"), 0o644)
	out = run(project, "exec", "-c", cfg)
	for _, want := range []string{"plugin " + ref + ":1", "Pipeline PASSED", "local-"} {
		if !strings.Contains(out, want) {
			t.Errorf("exec output lacks %q:\n%s", want, out)
		}
	}
	// The installed binary ran: the plugin took its root_dir (and released it).
	if _, err := os.Stat(filepath.Join(tmp, "instances", ".lock")); err != nil {
		t.Errorf("the installed plugin did not run in its root_dir: %v", err)
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func goBuild(t *testing.T, root, pkg, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}
