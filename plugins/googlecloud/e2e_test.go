package googlecloud

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim"
	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/gcpfake"
	"github.com/flotilla-ci/flotilla/sdk/conformance"
)

// tomlInline renders a flat JSON object as a TOML inline table.
func tomlInline(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		v, _ := json.Marshal(m[k]) // JSON strings and numbers are valid TOML values here
		parts = append(parts, fmt.Sprintf("%s = %s", k, v))
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

// TestRunnerExecJob runs a real pipeline with `runner exec`: the runner launches the
// built fleeting-plugin-googlecloud, which resizes the simulated managed instance group;
// the job runs over SSH on a VM of the simulated cloud, logged in with the ephemeral key
// the plugin put in the instance's ssh-keys metadata.
func TestRunnerExecJob(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the runner and the plugin")
	}
	env := gcpfake.Start(t, gcpfake.EnvOptions{SSH: true, Group: group("ci-e2e", 2, 0)})
	pluginBin := conformance.Build(t, "./cmd/fleeting-plugin-googlecloud")
	runnerBin := conformance.Build(t, "github.com/flotilla-ci/flotilla/host/cmd/runner")

	dir := t.TempDir()
	project := filepath.Join(dir, "project")
	if err := os.MkdirAll(project, 0o755); err != nil {
		t.Fatal(err)
	}
	pipeline := "build:\n  script:\n    - echo \"built on $(basename $PWD/..)\"\n    - test -f .gitlab-ci.yml\n"
	if err := os.WriteFile(filepath.Join(project, ".gitlab-ci.yml"), []byte(pipeline), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`concurrent = 2

[[runners]]
  name = "gcp-e2e"
  url = "https://gitlab.example.com"
  token = "unused"
  executor = "instance"
  shell = "bash"

  [runners.autoscaler]
    plugin = %q
    capacity_per_instance = 1
    max_use_count = 1
    max_instances = 2
    plugin_config = %s

    [runners.autoscaler.connector_config]
      username = "runner"
      use_static_credentials = false

    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "1s"
`, pluginBin, tomlInline(t, env.PluginConfig))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, runnerBin, "exec", "--config", cfgPath, "--dir", project, "--log-dir", filepath.Join(dir, "logs"))
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_STATE_HOME="+filepath.Join(dir, "state"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("runner exec: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("runner exec output:\n%s", stdout.String())
	logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*"))
	var all strings.Builder
	all.WriteString(stdout.String())
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		all.Write(b)
	}
	if !strings.Contains(all.String(), "built on ") {
		t.Errorf("job output not found\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	vms := env.Cloud.AllVMs()
	if len(vms) == 0 {
		t.Fatal("the job ran on no VM of the simulated cloud")
	}
	for _, vm := range vms {
		if vm.State.Live() && vm.State != cloudsim.Terminating {
			t.Errorf("VM %s left %s after the pipeline", vm.ID, vm.State)
		}
	}
	if err := env.Cloud.Check(); err != nil {
		t.Error(err)
	}
}
