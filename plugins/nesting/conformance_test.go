package nesting

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// sshTrue proves a VM reachable the way the runner uses it: SSH with the credentials
// ConnectInfo reports, then a command.
func sshTrue(ctx context.Context, info provider.ConnectInfo) error {
	c, err := connector.Dial(ctx, info, connector.DialOptions{HostKeys: connector.NewMemoryHostKeyStore()})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Run(ctx, connector.RunOptions{Command: "true"}); err != nil {
		return fmt.Errorf("run true on %s: %w", info.ID, err)
	}
	return nil
}

// vmHost starts an OpenSSH server standing for the VM host a remote daemon runs on
// (its socket is on this machine, so the server forwards to it) and returns the
// nesting_ssh object that reaches it, by the name "localhost" so that the address the
// plugin reports for a VM shows that it is the VM host's.
func vmHost(t *testing.T) (*sshdtest.Server, map[string]any) {
	t.Helper()
	host := sshdtest.Start(t, sshdtest.Options{})
	return host, map[string]any{
		"address":  "localhost:" + strconv.Itoa(host.Port),
		"username": host.User,
		"key_file": filepath.Join(host.Dir, "client_key"),
		"host_key": strings.TrimSpace(string(host.HostKey)),
	}
}

// TestConformance runs the conformance kit, L0 and L1, against the built plugin
// binary, launched as the runner launches it, driving a nesting daemon: on a socket of
// this machine, and on a VM host reached over SSH. L1.connect logs in to every VM.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	binary := conformancetest.Build(t, "./cmd/fleeting-plugin-nesting")
	tests := []struct {
		name   string
		remote bool
		start  func(t *testing.T) daemon
	}{
		{name: "local socket", start: startDaemon},
		{name: "remote over SSH", remote: true, start: startDaemon},
		// Real QEMU VMs: every VM the kit creates boots and answers SSH.
		{name: "qemu VMs", start: func(t *testing.T) daemon { return startQEMUDaemon(t, 3) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.start(t)
			extra := map[string]any{"max_size": 3}
			if tt.remote {
				_, extra["nesting_ssh"] = vmHost(t)
			}
			conformancetest.Run(t, conformance.Config{
				Binary:       binary,
				PluginConfig: d.pluginConfig(t, extra),
				L1:           true,
				Dial:         sshTrue,
				// Two problems at once: a value of the wrong type and a misspelt key.
				BadConfig:     json.RawMessage(`{"nesting_host": "unix:///run/nesting.sock", "image": 5, "max_sise": 2}`),
				BadConfigWant: []string{"plugin_config.image: expected string", `plugin_config.max_sise: unknown key (did you mean "max_size"?)`},
			})
		})
	}
}
