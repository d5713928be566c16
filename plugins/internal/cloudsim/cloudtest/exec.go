// Package cloudtest holds what the cloud plugins' tests share: a real `runner exec`
// job through a plugin binary and its simulated cloud, and the B4 ramp. Only tests
// import it.
package cloudtest

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
	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
)

// ExecJob describes a `runner exec` run through a cloud plugin.
type ExecJob struct {
	// PluginPkg is the plugin's main package (e.g. "./cmd/fleeting-plugin-aws").
	PluginPkg string
	// PluginConfig is the plugin_config the fake's environment produced.
	PluginConfig json.RawMessage
	// Connector is the body of [runners.autoscaler.connector_config], one key per line.
	Connector string
	// Cloud is the simulated cloud whose VMs must have run the job.
	Cloud *cloudsim.Cloud
}

// TOMLInline renders a flat JSON object (a plugin_config) as a TOML inline table, keys
// sorted, for the config.toml of a test run.
func TOMLInline(raw json.RawMessage) (string, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("plugin_config %s: %w", raw, err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		v, _ := json.Marshal(m[k]) // JSON strings and numbers are valid TOML values here
		parts = append(parts, fmt.Sprintf("%s = %s", k, v))
	}
	return "{ " + strings.Join(parts, ", ") + " }", nil
}

// RunnerExecJob builds the runner and the plugin, writes a config.toml that uses the
// plugin binary, runs a one-job pipeline with `runner exec`, and checks that the job ran
// on a VM of the simulated cloud and that every VM was deleted afterwards.
func RunnerExecJob(t *testing.T, j ExecJob) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the runner and the plugin")
	}
	pluginBin := conformancetest.Build(t, j.PluginPkg)
	runnerBin := conformancetest.Build(t, "github.com/flotilla-ci/flotilla/host/cmd/runner")

	dir := t.TempDir()
	project := filepath.Join(dir, "project")
	if err := os.MkdirAll(project, 0o755); err != nil {
		t.Fatal(err)
	}
	pipeline := "build:\n  script:\n    - echo \"built on $(basename $PWD/..)\"\n    - test -f .gitlab-ci.yml\n"
	if err := os.WriteFile(filepath.Join(project, ".gitlab-ci.yml"), []byte(pipeline), 0o644); err != nil {
		t.Fatal(err)
	}
	inline, err := TOMLInline(j.PluginConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`concurrent = 2

[[runners]]
  name = "cloud-e2e"
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
%s
    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "1s"
`, pluginBin, inline, j.Connector)
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
	vms := j.Cloud.AllVMs()
	if len(vms) == 0 {
		t.Fatal("the job ran on no VM of the simulated cloud")
	}
	for _, vm := range vms {
		if vm.State.Live() && vm.State != cloudsim.Terminating {
			t.Errorf("VM %s left %s after the pipeline", vm.ID, vm.State)
		}
	}
	if err := j.Cloud.Check(); err != nil {
		t.Error(err)
	}
}

// RunConformance runs the conformance kit on a plugin over the simulated cloud (bounded
// waits suited to it), then checks the cloud's accounting and that the kit left no VM
// in the group.
func RunConformance(t *testing.T, cloud *cloudsim.Cloud, group string, cfg conformance.Config) {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	conformancetest.Run(t, cfg)
	if err := cloud.Check(); err != nil {
		t.Errorf("cloud accounting after the kit: %v", err)
	}
	if vms, _ := cloud.VMs(group); len(vms) != 0 {
		t.Errorf("VMs left behind: %v", vms)
	}
}
