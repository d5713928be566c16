// Command minimal-plugin is the smallest real Flotilla plugin; see docs/write-a-plugin.md.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/hashicorp/go-hclog"
)

// Group is the plugin; its JSON-tagged fields are its plugin_config.
type Group struct {
	Dir      string `json:"dir"`     // instance files live here; they outlive the plugin
	Address  string `json:"address"` // host:port every instance is reached at
	settings provider.Settings
}

// Validate reports every configuration problem at once, each naming its key.
func (g *Group) Validate() (errs error) {
	for key, value := range map[string]string{"dir": g.Dir, "address": g.Address} {
		if value == "" {
			errs = errors.Join(errs, fmt.Errorf("plugin_config.%s: required", key))
		}
	}
	return errs
}

func (g *Group) Init(_ context.Context, _ hclog.Logger, s provider.Settings) (provider.ProviderInfo, error) {
	g.settings = s
	return provider.ProviderInfo{ID: "minimal/" + g.Dir, Version: "1.0.0"}, os.MkdirAll(g.Dir, 0o755)
}

func (g *Group) Update(_ context.Context, fn func(string, provider.State)) error {
	entries, err := os.ReadDir(g.Dir) // a failed listing is an error, never "no instances"
	for _, e := range entries {
		fn(e.Name(), provider.StateRunning)
	}
	return err
}

func (g *Group) Increase(_ context.Context, n int) (int, error) {
	for i := range n { // IDs are random, so they never repeat across restarts
		if err := os.WriteFile(filepath.Join(g.Dir, "i-"+rand.Text()[:12]), nil, 0o644); err != nil {
			return i, err
		}
	}
	return n, nil
}

func (g *Group) Decrease(_ context.Context, ids []string) (done []string, errs error) {
	for _, id := range ids { // only the IDs given: never touch another instance
		if err := os.Remove(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
			errs = errors.Join(errs, fmt.Errorf("delete %s: %w", id, provider.ErrNotFound))
		} else {
			done = append(done, id)
		}
	}
	return done, errs
}

func (g *Group) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	return provider.ConnectInfo{ConnectorConfig: g.settings.ConnectorConfig, ID: id, InternalAddr: g.Address}, g.Heartbeat(ctx, id)
}
func (g *Group) Heartbeat(_ context.Context, id string) error {
	if _, err := os.Stat(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
		return fmt.Errorf("instance %s: %w", id, provider.ErrNotFound)
	}
	return nil
}
func (g *Group) Shutdown(context.Context) error { return nil } // no clients to close

func main() { plugin.Main(&Group{}, plugin.VersionInfo{Name: "minimal-plugin", Version: "1.0.0"}) }
