// Command testplugin is a plugin for the SDK's own tests. Its instances are files in a
// directory (so they survive a relaunch, like the minimal example's), and it has hooks
// the tests need that a real plugin must never have:
//
//   - plugin_config "fault": "decrease-all" makes Decrease delete every instance, not
//     just the ones asked for: the broken plugin `runner plugin check` must catch;
//     "crash-init" makes Init crash the process with a panic no handler can recover
//     (the way a plugin bug in a goroutine it starts would);
//   - plugin_config "synthetic": N makes Update list N extra in-memory instances (for
//     the B5 benchmark's large listing);
//   - Heartbeat of the IDs "panic", "exit", "crash", "block", "hang" and "log" panics,
//     exits the process mid-call, crashes the process with an unrecovered panic, blocks
//     until cancelled, blocks ignoring cancellation, and logs one line at each level;
//   - the environment variable TESTPLUGIN_CRASH_AT_START makes the process crash with a
//     panic before the handshake;
//   - the environment variable TESTPLUGIN_MARKER names a file that gets one line per
//     Init ("init pid=N") and Shutdown ("shutdown").
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

type group struct {
	Dir       string `json:"dir"`
	Address   string `json:"address"`
	MaxSize   int    `json:"max_size"`
	Fault     string `json:"fault"`
	Synthetic int    `json:"synthetic"`

	settings provider.Settings
	logger   hclog.Logger
}

func (g *group) Validate() error {
	var errs []error
	if g.Dir == "" {
		errs = append(errs, errors.New("plugin_config.dir: required"))
	}
	if g.Fault != "" && g.Fault != "decrease-all" && g.Fault != "crash-init" {
		errs = append(errs, fmt.Errorf("plugin_config.fault: unknown fault %q (known: decrease-all, crash-init)", g.Fault))
	}
	return errors.Join(errs...)
}

func mark(line string) {
	if path := os.Getenv("TESTPLUGIN_MARKER"); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintln(f, line)
			f.Close()
		}
	}
}

func (g *group) Init(_ context.Context, logger hclog.Logger, s provider.Settings) (provider.ProviderInfo, error) {
	g.settings, g.logger = s, logger
	mark(fmt.Sprintf("init pid=%d", os.Getpid()))
	if g.Fault == "crash-init" {
		crash("crash in Init requested")
	}
	return provider.ProviderInfo{ID: "testplugin/" + g.Dir, MaxSize: g.MaxSize, Version: "0.0.1"}, os.MkdirAll(g.Dir, 0o755)
}

func (g *group) Update(_ context.Context, fn func(string, provider.State)) error {
	entries, err := os.ReadDir(g.Dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		fn(e.Name(), provider.StateRunning)
	}
	for i := range g.Synthetic {
		fn(fmt.Sprintf("synthetic-%05d", i), provider.StateRunning)
	}
	return nil
}

func (g *group) Increase(_ context.Context, n int) (int, error) {
	entries, err := os.ReadDir(g.Dir)
	if err != nil {
		return 0, err
	}
	for i := range n {
		if g.MaxSize > 0 && len(entries)+i >= g.MaxSize {
			return i, fmt.Errorf("max_size %d reached: %w", g.MaxSize, provider.ErrCapacity)
		}
		if err := os.WriteFile(filepath.Join(g.Dir, "t-"+rand.Text()[:10]), nil, 0o644); err != nil {
			return i, err
		}
	}
	return n, nil
}

func (g *group) Decrease(_ context.Context, ids []string) (done []string, errs error) {
	for _, id := range ids {
		if err := os.Remove(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
			errs = errors.Join(errs, fmt.Errorf("delete %s: %w", id, provider.ErrNotFound))
			continue
		}
		done = append(done, id)
	}
	if g.Fault == "decrease-all" && len(done) > 0 {
		// The bug under test: it also deletes every instance it was not given.
		entries, _ := os.ReadDir(g.Dir)
		for _, e := range entries {
			os.Remove(filepath.Join(g.Dir, e.Name()))
		}
	}
	return done, errs
}

func (g *group) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if _, err := os.Stat(filepath.Join(g.Dir, filepath.Base(id))); err != nil {
		return provider.ConnectInfo{}, fmt.Errorf("instance %s: %w", id, provider.ErrNotFound)
	}
	return provider.ConnectInfo{ConnectorConfig: g.settings.ConnectorConfig, ID: id, InternalAddr: g.Address}, nil
}

func (g *group) Heartbeat(ctx context.Context, id string) error {
	switch id {
	case "panic":
		panic("testplugin: panic requested")
	case "exit":
		os.Exit(3)
	case "crash":
		crash("crash requested")
	case "block":
		<-ctx.Done()
		return ctx.Err()
	case "hang":
		time.Sleep(time.Minute)
		return nil
	case "log":
		g.logger.Trace("testplugin log at trace")
		g.logger.Debug("testplugin log at debug")
		g.logger.Info("testplugin log at info", "key", "value")
		g.logger.Warn("testplugin log at warn")
		g.logger.Error("testplugin log at error")
		return nil
	}
	_, err := g.ConnectInfo(ctx, id)
	return err
}

func (g *group) Shutdown(context.Context) error {
	mark("shutdown")
	return nil
}

// crash panics in a goroutine of its own, where the SDK's recovery cannot reach: the
// process dies with "panic: testplugin: <why>" and a stack trace on stderr.
func crash(why string) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		panic("testplugin: " + why)
	}()
	<-done
}

func main() {
	if os.Getenv("TESTPLUGIN_CRASH_AT_START") != "" {
		crash("crash at start requested") // before the handshake
	}
	plugin.Main(&group{}, plugin.VersionInfo{Name: "testplugin", Version: "0.0.1"})
}
