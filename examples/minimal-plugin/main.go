// Command minimal-plugin is the smallest real Flotilla provider plugin. Its instances
// are files in a directory, and every instance is reached at one configured address (a
// shared SSH host, say). It shows the whole contract in one screen; see the README's
// "Write a plugin" section.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Group is the plugin; its JSON-tagged fields are its plugin_config.
type Group struct {
	provider.NoSuspend
	Dir     string `json:"dir"`     // where instance files live; they outlive the plugin
	Address string `json:"address"` // host:port every instance is reached at
	MaxSize int    `json:"max_size"`

	settings provider.Settings
}

// Validate reports every configuration problem at once.
func (g *Group) Validate() error {
	var errs []error
	if g.Dir == "" {
		errs = append(errs, errors.New("plugin_config.dir: required"))
	}
	if g.Address == "" {
		errs = append(errs, errors.New("plugin_config.address: required"))
	}
	return errors.Join(errs...)
}

func (g *Group) Init(_ context.Context, _ hclog.Logger, s provider.Settings) (provider.ProviderInfo, error) {
	g.settings = s
	return provider.ProviderInfo{ID: "minimal/" + g.Dir, MaxSize: g.MaxSize, Version: "1.0.0"}, os.MkdirAll(g.Dir, 0o755)
}

func (g *Group) Update(_ context.Context, fn func(string, provider.State)) error {
	entries, err := os.ReadDir(g.Dir)
	for _, e := range entries {
		fn(e.Name(), provider.StateRunning)
	}
	return err
}

func (g *Group) Increase(_ context.Context, n int) (int, error) {
	entries, err := os.ReadDir(g.Dir)
	if err != nil {
		return 0, err
	}
	for i := range n {
		if g.MaxSize > 0 && len(entries)+i >= g.MaxSize {
			return i, fmt.Errorf("max_size %d reached: %w", g.MaxSize, provider.ErrCapacity)
		}
		if err := os.WriteFile(filepath.Join(g.Dir, "i-"+rand.Text()[:12]), nil, 0o644); err != nil {
			return i, err
		}
	}
	return n, nil
}

func (g *Group) Decrease(_ context.Context, ids []string) (done []string, errs error) {
	for _, id := range ids {
		if err := os.Remove(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
			errs = errors.Join(errs, fmt.Errorf("delete %s: %w", id, provider.ErrNotFound))
		} else {
			done = append(done, id)
		}
	}
	return done, errs
}

func (g *Group) ConnectInfo(_ context.Context, id string) (provider.ConnectInfo, error) {
	if _, err := os.Stat(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
		return provider.ConnectInfo{}, fmt.Errorf("instance %s: %w", id, provider.ErrNotFound)
	}
	return provider.ConnectInfo{ConnectorConfig: g.settings.ConnectorConfig, ID: id, InternalAddr: g.Address}, nil
}

func (g *Group) Heartbeat(ctx context.Context, id string) error {
	_, err := g.ConnectInfo(ctx, id)
	return err
}

func (g *Group) Shutdown(context.Context) error { return nil }

func main() { plugin.Main(&Group{}, plugin.VersionInfo{Name: "minimal-plugin", Version: "1.0.0"}) }
