// Command gen3-suspend-resume is a fleeting plugin of the third generation of GitLab's
// interface (Heartbeat, Suspend and Resume), written as one was for GitLab's fleeting;
// porting it to Flotilla changed only the import paths of plugin and provider. Its
// instances are files in a directory, all reached at one address; a suspended
// instance's file says "suspended".
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

var _ provider.InstanceGroup = (*InstanceGroup)(nil)

type InstanceGroup struct {
	Dir     string `json:"dir"`
	Address string `json:"address"`

	settings provider.Settings
}

func (g *InstanceGroup) Init(ctx context.Context, log hclog.Logger, settings provider.Settings) (provider.ProviderInfo, error) {
	if g.Dir == "" || g.Address == "" {
		return provider.ProviderInfo{}, fmt.Errorf("dir and address are required")
	}
	g.settings = settings
	return provider.ProviderInfo{ID: "gen3/" + g.Dir, Version: "1.0.0"}, os.MkdirAll(g.Dir, 0o755)
}

func (g *InstanceGroup) Update(ctx context.Context, update func(id string, state provider.State)) error {
	entries, err := os.ReadDir(g.Dir)
	for _, e := range entries {
		state := provider.StateRunning
		if b, _ := os.ReadFile(filepath.Join(g.Dir, e.Name())); string(b) == "suspended" {
			state = provider.StateSuspended
		}
		update(e.Name(), state)
	}
	return err
}

func (g *InstanceGroup) Increase(ctx context.Context, delta int) (int, error) {
	for i := range delta {
		if err := os.WriteFile(filepath.Join(g.Dir, "i-"+rand.Text()[:12]), nil, 0o644); err != nil {
			return i, err
		}
	}
	return delta, nil
}

func (g *InstanceGroup) Decrease(ctx context.Context, instances []string) (done []string, errs error) {
	for _, id := range instances {
		if err := os.Remove(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
			errs = errors.Join(errs, fmt.Errorf("delete %s: %w", id, provider.ErrNotFound))
		} else {
			done = append(done, id)
		}
	}
	return done, errs
}

func (g *InstanceGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if _, err := os.Stat(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
		return provider.ConnectInfo{}, fmt.Errorf("instance %s: %w", id, provider.ErrNotFound)
	}
	return provider.ConnectInfo{ConnectorConfig: g.settings.ConnectorConfig, ID: id, InternalAddr: g.Address}, nil
}

// Heartbeat returns an error if there has been an issue detected with a given instance.
func (g *InstanceGroup) Heartbeat(ctx context.Context, id string) error {
	if _, err := os.Stat(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
		return fmt.Errorf("instance %s: %w", id, provider.ErrNotFound)
	}
	return nil
}

func (g *InstanceGroup) Suspend(ctx context.Context, instances []string) ([]string, error) {
	return g.mark(instances, "suspended")
}

func (g *InstanceGroup) Resume(ctx context.Context, instances []string) ([]string, error) {
	return g.mark(instances, "")
}

func (g *InstanceGroup) mark(instances []string, content string) (done []string, errs error) {
	for _, id := range instances {
		path := filepath.Join(g.Dir, filepath.Base(id))
		if _, err := os.Stat(path); err != nil {
			errs = errors.Join(errs, fmt.Errorf("instance %s: %w", id, provider.ErrNotFound))
		} else if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			errs = errors.Join(errs, err)
		} else {
			done = append(done, id)
		}
	}
	return done, errs
}

func (g *InstanceGroup) Shutdown(ctx context.Context) error { return nil }

func main() {
	plugin.Main(&InstanceGroup{}, plugin.VersionInfo{
		Name:      "fleeting-plugin-gen3",
		Version:   "dev",
		Revision:  "HEAD",
		Reference: "HEAD",
		BuiltAt:   "now",
	})
}
