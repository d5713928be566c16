package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// fakeCloud is plugins/internal/cloudsim's fake AWS run as a process (its command
// fakecloud): host tests cannot import the simulated cloud, but they can run it.
type fakeCloud struct {
	PluginConfig map[string]any `json:"plugin_config"`
	Control      string         `json:"control"`
}

func startFakeCloud(t *testing.T) *fakeCloud {
	t.Helper()
	bin := conformancetest.Build(t, "github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/cmd/fakecloud")
	cmd := exec.Command(bin, "-dir", t.TempDir(), "-max", "6")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start fakecloud: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	var fc fakeCloud
	if err != nil || json.Unmarshal([]byte(line), &fc) != nil || fc.Control == "" {
		t.Fatalf("fakecloud's ready line %q: %v", line, err)
	}
	return &fc
}

// liveVMs are the simulated cloud's VMs that are not terminated, by its own account.
func (fc *fakeCloud) liveVMs(t *testing.T) []string {
	t.Helper()
	resp, err := http.Get(fc.Control + "/vms")
	if err != nil {
		t.Fatalf("fakecloud /vms: %v", err)
	}
	defer resp.Body.Close()
	var vms []struct {
		ID    string `json:"id"`
		State string `json:"state"`
		Live  bool   `json:"live"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vms); err != nil {
		t.Fatalf("fakecloud /vms: %v", err)
	}
	var live []string
	for _, vm := range vms {
		if vm.Live {
			live = append(live, vm.ID+" ("+vm.State+")")
		}
	}
	return live
}

// pluginTable writes plugin_config as a TOML table (JSON strings and numbers are TOML
// values as they are).
func pluginTable(cfg map[string]any) string {
	keys := make([]string, 0, len(cfg))
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("    [runners.autoscaler.plugin_config]\n")
	for _, k := range keys {
		v, _ := json.Marshal(cfg[k])
		fmt.Fprintf(&b, "      %s = %s\n", k, v)
	}
	return b.String()
}

// TestHACloudPlugin: three managers share one Auto Scaling group of the simulated
// cloud through the real aws plugin (each manager its own plugin process): the jobs
// run once each with no slot held twice, the leader's kill -9 hands the pool to
// another manager, which serves the next jobs, and at the end the cloud has no VM
// left.
func TestHACloudPlugin(t *testing.T) {
	defer wallTime(t)()
	if testing.Short() {
		t.Skip("builds the aws plugin and the simulated cloud")
	}
	p := newHAPool(t)
	fc := startFakeCloud(t)
	awsBin := conformancetest.Build(t, "github.com/flotilla-ci/flotilla/plugins/aws/cmd/fleeting-plugin-aws")
	p.plugin = fmt.Sprintf("    plugin = %q\n%s    [runners.autoscaler.connector_config]\n      username = \"ec2-user\"\n      use_static_credentials = false\n",
		awsBin, pluginTable(fc.PluginConfig))
	ms := []*haManager{p.start(haOptions{idleCount: 2}), p.start(haOptions{idleCount: 2}), p.start(haOptions{idleCount: 2})}
	leader := p.leader(ms...)
	from := p.revision()

	first := p.enqueue(30, "sleep 0.2")
	p.waitFinished(first, 3*time.Minute, ms...)
	p.checkSuccess(first)
	if acqs := p.audit(from); len(acqs) != len(first) {
		t.Errorf("audit: %d acquisitions for %d jobs", len(acqs), len(first))
	}
	if len(fc.liveVMs(t)) == 0 {
		t.Fatal("the jobs ran, but the simulated cloud has no VM")
	}

	rest := others(ms, leader)
	leader.kill()
	next := p.leader(rest...)
	from = p.revision()
	second := p.enqueue(12, "sleep 0.2")
	p.waitFinished(second, 3*time.Minute, rest...)
	p.checkSuccess(second)
	if acqs := p.audit(from); len(acqs) != len(second) {
		t.Errorf("audit after the takeover: %d acquisitions for %d jobs", len(acqs), len(second))
	}
	t.Logf("leader %s killed; %s leads; jobs per manager after it: %v", leader.id, next.id, byManager(p.audit(from)))

	// The end: one manager with no idle target removes what is idle; the cloud, by its
	// own account, has no VM left.
	for _, m := range rest {
		m.stop()
	}
	last := p.start(haOptions{idleTime: "0s"})
	eventually.NoError(t, "the simulated cloud to have no live VM", 2*time.Minute, func() error {
		if live := fc.liveVMs(t); len(live) > 0 {
			return fmt.Errorf("live VMs: %v; last manager:\n%s", live, tail(last.output(), 8<<10))
		}
		return nil
	})
	last.stop()
	resp, err := http.Get(fc.Control + "/check")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("the simulated cloud's own check: %v %v", resp, err)
	}
}
