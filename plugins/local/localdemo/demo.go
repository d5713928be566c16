// Package localdemo drives the local plugin end to end from the host side, the way the
// runner will: launch it out of process, create instances, wait for them to run, run a
// command on each over SSH with the connector, delete them and check that no process or
// directory is left behind. `runner local demo` is its command line.
package localdemo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/plugins/local"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Options configure a demo run.
type Options struct {
	// Instances is how many instances to create (at least 1).
	Instances int
	// Command is run on every instance.
	Command string
	// RootDir is the plugin's root_dir. Empty means a new temporary directory, removed
	// at the end.
	RootDir string
	// BootDelay and Isolation are passed to the plugin as boot_delay and isolation.
	BootDelay time.Duration
	Isolation string
	// Timeout bounds the whole run. Default 2 minutes.
	Timeout time.Duration
	// Launch starts the plugin with its plugin_config JSON. Default:
	// local.LaunchEmbedded (the running program re-executed as the plugin).
	Launch func(ctx context.Context, configJSON []byte) (*pluginclient.Plugin, error)
	// Out receives the progress and the commands' output.
	Out io.Writer
}

// Result is what a demo run observed.
type Result struct {
	// Outputs maps each instance ID to its command's combined output.
	Outputs map[string]string
	// ExitCodes maps each instance ID to its command's exit code.
	ExitCodes map[string]int
}

// Run performs the demo. An error says which step failed; instances created before a
// failure are still deleted.
func Run(ctx context.Context, opts Options) (res Result, err error) {
	if opts.Instances < 1 {
		return res, fmt.Errorf("instances: %d: need at least 1", opts.Instances)
	}
	if opts.Command == "" {
		return res, errors.New("command: empty: give the command to run on each instance")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.Launch == nil {
		opts.Launch = func(ctx context.Context, cfg []byte) (*pluginclient.Plugin, error) {
			return local.LaunchEmbedded(ctx, cfg, pluginclient.Options{})
		}
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	say := func(format string, args ...any) { fmt.Fprintf(opts.Out, format+"\n", args...) }

	root := opts.RootDir
	if root == "" {
		tmp, err := os.MkdirTemp("", "flotilla-local-demo-")
		if err != nil {
			return res, fmt.Errorf("create a temporary root_dir: %w", err)
		}
		root = tmp
		defer func() {
			_ = os.Remove(filepath.Join(tmp, local.LockFileName))
			if rerr := os.Remove(tmp); rerr != nil && err == nil {
				err = fmt.Errorf("remove temporary root_dir %s (something was left in it): %w", tmp, rerr)
			}
		}()
	}
	cfg := map[string]any{"root_dir": root, "max_instances": opts.Instances}
	if opts.BootDelay > 0 {
		cfg["boot_delay"] = opts.BootDelay.String()
	}
	if opts.Isolation != "" {
		cfg["isolation"] = opts.Isolation
	}
	cfgJSON, _ := json.Marshal(cfg)

	say("launching the local plugin (root_dir %s)", root)
	p, err := opts.Launch(ctx, cfgJSON)
	if err != nil {
		return res, err
	}
	defer p.Kill()
	info, err := p.Init(ctx, nil, provider.Settings{ConnectorConfig: provider.ConnectorConfig{Timeout: 30 * time.Second}})
	if err != nil {
		return res, fmt.Errorf("init: %w", err)
	}
	say("plugin %s %s ready", info.ID, info.Version)

	existing, err := list(ctx, p)
	if err != nil {
		return res, err
	}
	n, err := p.Increase(ctx, opts.Instances)
	if err != nil {
		return res, fmt.Errorf("increase by %d (%d accepted): %w", opts.Instances, n, err)
	}
	say("requested %d instances", n)

	// Whatever happens next, the instances are deleted and checked for leftovers.
	var created []string
	pids := map[string]int{}
	defer func() {
		if derr := cleanup(context.WithoutCancel(ctx), p, root, created, pids, say); derr != nil {
			err = errors.Join(err, derr)
		}
	}()

	for {
		states, err := list(ctx, p)
		if err != nil {
			return res, err
		}
		created = created[:0]
		running := 0
		for id, st := range states {
			if _, old := existing[id]; old {
				continue
			}
			created = append(created, id)
			if st == provider.StateRunning {
				running++
			}
		}
		slices.Sort(created)
		if running == opts.Instances {
			break
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("waiting for %d instances to run (%d running): %w", opts.Instances, running, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, id := range created {
		pids[id] = local.ServerPID(root, id)
	}
	say("%d instances running: %s", len(created), strings.Join(created, ", "))

	res.Outputs, res.ExitCodes = map[string]string{}, map[string]int{}
	pool := connector.NewMemoryHostKeyStore()
	for _, id := range created {
		ci, err := p.ConnectInfo(ctx, id)
		if err != nil {
			return res, err
		}
		c, err := connector.Dial(ctx, ci, connector.DialOptions{HostKeys: pool})
		if err != nil {
			return res, err
		}
		var out bytes.Buffer
		runErr := c.Run(ctx, connector.RunOptions{Command: opts.Command, Stdout: &out, Stderr: &out})
		c.Close()
		code := 0
		var ee *connector.ExitError
		switch {
		case errors.As(runErr, &ee):
			code = ee.Code
		case runErr != nil:
			return res, runErr
		}
		res.Outputs[id], res.ExitCodes[id] = out.String(), code
		addr, _ := ci.Addr(false)
		say("== %s (%s@%s) exit %d", id, ci.Username, addr, code)
		fmt.Fprint(opts.Out, out.String())
		if out.Len() > 0 && !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
			say("")
		}
	}
	return res, nil
}

func list(ctx context.Context, p provider.InstanceGroup) (map[string]provider.State, error) {
	states := map[string]provider.State{}
	if err := p.Update(ctx, func(id string, s provider.State) { states[id] = s }); err != nil {
		return nil, fmt.Errorf("update: %w", err)
	}
	return states, nil
}

// cleanup deletes the instances, waits until the plugin lists none of them and checks
// that their directories and processes are gone.
func cleanup(ctx context.Context, p provider.InstanceGroup, root string, ids []string, pids map[string]int, say func(string, ...any)) error {
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	done, err := p.Decrease(ctx, ids)
	if err != nil {
		return fmt.Errorf("decrease %v (%d accepted): %w", ids, len(done), err)
	}
	say("deleting %d instances", len(done))
	for {
		states, err := list(ctx, p)
		if err != nil {
			return err
		}
		left := 0
		for _, id := range ids {
			if _, ok := states[id]; ok {
				left++
			}
		}
		if left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d instances to be deleted: %w", left, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	var errs []error
	for _, id := range ids {
		if err := local.CheckGone(root, id, pids[id]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	say("all %d instances deleted: no instance directory under %s and no instance process left", len(ids), filepath.Clean(root))
	return nil
}
