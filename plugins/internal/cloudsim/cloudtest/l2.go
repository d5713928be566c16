package cloudtest

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// L2 describes a conformance run against a real cloud account (level L2), gated by the
// caller on its environment variables.
type L2 struct {
	// Prefix names the variables: <Prefix>_KEY_FILE (a static SSH key), <Prefix>_MAX
	// (the group's size limit, for the max-size clause) and <Prefix>_EXTERNAL=1 (dial
	// external addresses).
	Prefix       string
	PluginPkg    string
	PluginConfig map[string]any
	// MaxSizeKey, if set, is the plugin_config key <Prefix>_MAX also sets.
	MaxSizeKey string
	Connector  provider.ConnectorConfig
	Timeout    time.Duration
}

// RunL2 runs the kit at L1 against the real cloud: instances are real, so reaching one
// means waiting until its sshd listens, not just until the cloud says it runs.
func RunL2(t *testing.T, l L2) {
	t.Helper()
	cc := l.Connector
	if kf := os.Getenv(l.Prefix + "_KEY_FILE"); kf != "" {
		key, err := os.ReadFile(kf)
		if err != nil {
			t.Fatalf("%s_KEY_FILE: %v", l.Prefix, err)
		}
		cc.Key, cc.UseStaticCredentials = key, true
	}
	maxSize := 0
	if v := os.Getenv(l.Prefix + "_MAX"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s_MAX: %v", l.Prefix, err)
		}
		maxSize = n
		if l.MaxSizeKey != "" {
			l.PluginConfig[l.MaxSizeKey] = n
		}
	}
	external := os.Getenv(l.Prefix+"_EXTERNAL") == "1"
	raw, _ := json.Marshal(l.PluginConfig)
	conformancetest.Run(t, conformance.Config{
		Binary:       conformancetest.Build(t, l.PluginPkg),
		PluginConfig: raw,
		Connector:    cc,
		L1:           true,
		MaxSize:      maxSize,
		Timeout:      l.Timeout,
		PollInterval: 10 * time.Second,
		Dial: func(ctx context.Context, info provider.ConnectInfo) error {
			addr, err := info.Addr(external)
			if err != nil {
				return err
			}
			for {
				c, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", addr)
				if err == nil {
					return c.Close()
				}
				select {
				case <-ctx.Done():
					return err
				case <-time.After(5 * time.Second):
				}
			}
		},
	})
}
