package local

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// sshTrue proves an instance reachable the way the host uses it: SSH with the reported
// host key and credentials, then a command.
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

// TestConformance runs the conformance kit at L1 against the plugin both ways it is
// shipped: the standalone fleeting-plugin-local binary, and the runner's embedded mode
// (a binary re-executed with the plugin-local argument; here, this test binary); and
// in process, where the kit can also inject a panic [L0.panic].
func TestConformance(t *testing.T) {
	tests := []struct {
		name   string
		binary func(t *testing.T) (string, []string)
	}{
		{name: "in process"},
		{name: "standalone binary", binary: func(t *testing.T) (string, []string) {
			return conformancetest.Build(t, "./cmd/fleeting-plugin-local"), nil
		}},
		{name: "embedded", binary: func(t *testing.T) (string, []string) {
			self := selfCommand(t)
			return self[0], self[1:]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot(t)
			cfg, _ := json.Marshal(map[string]any{"root_dir": root, "max_instances": 3})
			kit := conformance.Config{PluginConfig: cfg, L1: true, Dial: sshTrue}
			if tt.binary != nil {
				kit.Binary, kit.Args = tt.binary(t)
			} else {
				self := selfCommand(t)
				kit.New = func() provider.InstanceGroup { return New(self) }
			}
			conformancetest.Run(t, kit)
		})
	}
}
