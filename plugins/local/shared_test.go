package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// These tests cover shared = true: the plugins of several runner managers on one
// machine using one root_dir. root_dir's lock is a POSIX record lock, owned by the
// process, so every "other manager's plugin" here is a separate plugin process (this
// test binary re-executed, as the runner re-executes itself).

// launchLogged launches and initialises the plugin out of process with settings,
// collecting its log lines (debug and up) in log.
func launchLogged(t *testing.T, cfg map[string]any, settings provider.ConnectorConfig, log *syncbuf.Buffer) *pluginclient.Plugin {
	t.Helper()
	data, _ := json.Marshal(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	exe := selfCommand(t)
	p, err := pluginclient.Launch(ctx, exe[0], data, pluginclient.Options{Args: exe[1:], Name: "local",
		Env:    []string{plugin.LogLevelEnv + "=debug"},
		Logger: hclog.New(&hclog.LoggerOptions{Output: log, Level: hclog.Debug})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	if _, err := p.Init(ctx, nil, provider.Settings{ConnectorConfig: settings}); err != nil {
		t.Fatal(err)
	}
	return p
}

// initInProcess initialises a group in this process on cfg, with ctx bounding Init's
// wait for root_dir's lock, and logging to log.
// sharedPair is two groups of this process on one shared root_dir, and an instance
// the first created.
type sharedPair struct {
	root       string
	g1, g2     *InstanceGroup
	log1, log2 syncbuf.Buffer
	id         string
}

func newSharedPair(t *testing.T) *sharedPair {
	t.Helper()
	p := &sharedPair{root: newRoot(t)}
	cfg := map[string]any{"root_dir": p.root, "shared": true}
	ctx := context.Background()
	var err error
	if p.g1, err = initInProcess(t, ctx, cfg, &p.log1); err != nil {
		t.Fatal(err)
	}
	if p.g2, err = initInProcess(t, ctx, cfg, &p.log2); err != nil {
		t.Fatal(err)
	}
	if _, err := p.g1.Increase(ctx, 1); err != nil {
		t.Fatal(err)
	}
	p.id = ids(waitStates(t, p.g1, "1 running instance", allRunning(1)))[0]
	return p
}

func initInProcess(t *testing.T, ctx context.Context, cfg map[string]any, log *syncbuf.Buffer) (*InstanceGroup, error) {
	t.Helper()
	g := New(selfCommand(t))
	data, _ := json.Marshal(cfg)
	if err := plugin.DecodeConfig(data, g); err != nil {
		t.Fatal(err)
	}
	logger := hclog.NewNullLogger()
	if log != nil {
		logger = hclog.New(&hclog.LoggerOptions{Output: log, Level: hclog.Debug})
	}
	_, err := g.Init(ctx, logger, provider.Settings{})
	if err == nil {
		t.Cleanup(func() { _ = g.Shutdown(context.Background()) })
	}
	return g, err
}

// TestSharedRootDirLock: plugins with shared = true use one root_dir together; a
// plugin with shared = false and one with shared = true refuse each other, saying
// what the other uses and what to set.
func TestSharedRootDirLock(t *testing.T) {
	const hint = "set shared = true on every manager's plugin config"
	tests := []struct {
		name          string
		first, second bool // shared
		wantErr       []string
	}{
		{name: "shared beside shared", first: true, second: true},
		{name: "exclusive beside shared", first: true, second: false,
			wantErr: []string{"is shared by other local plugins", "this plugin has shared = false", hint}},
		{name: "shared beside exclusive", first: false, second: true,
			wantErr: []string{"in use by another local plugin", "that has shared = false and owns it alone", hint}},
		{name: "exclusive beside exclusive", first: false, second: false,
			wantErr: []string{"in use by another local plugin", "its own root_dir"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot(t)
			var log syncbuf.Buffer
			launchLogged(t, map[string]any{"root_dir": root, "shared": tt.first}, provider.ConnectorConfig{}, &log)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			_, err := initInProcess(t, ctx, map[string]any{"root_dir": root, "shared": tt.second}, nil)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("init beside a shared plugin: %v", err)
				}
				return
			}
			if !errors.Is(err, provider.ErrInvalidConfig) {
				t.Fatalf("init = %v, want ErrInvalidConfig", err)
			}
			for _, want := range append(tt.wantErr, root) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

// TestSharedPluginsServeEachOthersInstances: what one manager's plugin creates, another's
// lists, reports connection details for (it logs in with them), checks, and deletes,
// after which neither lists it.
func TestSharedPluginsServeEachOthersInstances(t *testing.T) {
	_, keyPEM, err := GenerateKey("configured")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		settings provider.ConnectorConfig
	}{
		{name: "generated keys"},
		{name: "configured key and user", settings: provider.ConnectorConfig{Key: keyPEM, Username: "builder", UseStaticCredentials: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot(t)
			cfg := map[string]any{"root_dir": root, "shared": true}
			var logA, logB syncbuf.Buffer
			a := launchLogged(t, cfg, tt.settings, &logA)
			b := launchLogged(t, cfg, tt.settings, &logB)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("plugin A's log:\n%s\nplugin B's log:\n%s", logA.String(), logB.String())
				}
			})
			ctx := context.Background()
			if n, err := a.Increase(ctx, 2); n != 2 || err != nil {
				t.Fatalf("increase on A = %d, %v", n, err)
			}
			created := ids(waitStates(t, a, "2 running instances on A", allRunning(2)))
			if seen := ids(waitStates(t, b, "2 running instances on B", allRunning(2))); !slices.Equal(seen, created) {
				t.Fatalf("B lists %v, A created %v", seen, created)
			}
			for _, id := range created {
				infoA, err := a.ConnectInfo(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				infoB, err := b.ConnectInfo(ctx, id)
				if err != nil {
					t.Fatalf("connect info from B of A's %s: %v", id, err)
				}
				if infoB.InternalAddr != infoA.InternalAddr || infoB.Username != infoA.Username ||
					!bytes.Equal(infoB.Key, infoA.Key) || !bytes.Equal(infoB.HostKey, infoA.HostKey) {
					t.Errorf("B reports %s at %s as %q (key %d bytes); A at %s as %q (key %d bytes), or their host keys differ",
						id, infoB.InternalAddr, infoB.Username, len(infoB.Key), infoA.InternalAddr, infoA.Username, len(infoA.Key))
				}
				if tt.settings.Username != "" && infoB.Username != tt.settings.Username {
					t.Errorf("user %q, want %q", infoB.Username, tt.settings.Username)
				}
				if out := runOn(t, b, id, "echo via-b"); out != "via-b\n" {
					t.Errorf("output on %s through B's connect info: %q", id, out)
				}
				if err := b.Heartbeat(ctx, id); err != nil {
					t.Errorf("heartbeat from B of A's %s: %v", id, err)
				}
			}

			gone, kept := created[0], created[1]
			dir := filepath.Join(root, gone)
			if done, err := b.Decrease(ctx, []string{gone}); err != nil || !slices.Equal(done, []string{gone}) {
				t.Fatalf("decrease on B of A's %s = %v, %v", gone, done, err)
			}
			onlyKept := func(st map[string]provider.State) bool {
				return len(st) == 1 && st[kept] == provider.StateRunning
			}
			waitStates(t, b, "only "+kept+" on B", onlyKept)
			waitStates(t, a, "only "+kept+" on A", onlyKept)
			waitCount(t, "servers of the deleted "+gone, 0, func() []int { return serversOf(dir) })
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("directory of the deleted %s: %v", gone, err)
			}
			for name, p := range map[string]*pluginclient.Plugin{"A": a, "B": b} {
				if _, err := p.ConnectInfo(ctx, gone); !errors.Is(err, provider.ErrNotFound) {
					t.Errorf("connect info from %s of the deleted %s: %v, want ErrNotFound", name, gone, err)
				}
			}
			// Both plugins finish the deletion they see (A from its Update): the one
			// that comes second must find it done, not fail.
			for name, log := range map[string]*syncbuf.Buffer{"A": &logA, "B": &logB} {
				if strings.Contains(log.String(), "[ERROR]") {
					t.Errorf("plugin %s logged an error", name)
				}
			}
		})
	}
}

// restarts counts the restarts of dead instance servers in a plugin's log.
func restarts(log *syncbuf.Buffer) int {
	return strings.Count(log.String(), "instance server is not running; restarting it")
}

// TestSharedRestartOnce: when two plugins find an instance's server dead at once, one
// restarts it; the other leaves the new server alone rather than ending it and
// starting its own. Here both act on what they saw while it was dead, one right
// after the other (two groups in this process: the claim on server.lock is an OFD
// lock, owned by the open file, so they exclude each other as two processes do).
func TestSharedRestartOnce(t *testing.T) {
	tests := []struct {
		name string
		// serving: the first restart's server is serving before the second plugin acts;
		// else the second acts while it starts.
		serving bool
	}{
		{name: "second acts while the new server starts"},
		{name: "second acts once the new server serves", serving: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			p := newSharedPair(t)
			root, g1, g2, log1, log2, id := p.root, p.g1, p.g2, &p.log1, &p.log2, p.id
			dir := filepath.Join(root, id)
			dead := killServer(t, dir)
			seen1, err := g1.lookup(id)
			if err != nil {
				t.Fatal(err)
			}
			seen2, err := g2.lookup(id)
			if err != nil {
				t.Fatal(err)
			}

			if err := g1.restart(ctx, seen1); err != nil {
				t.Fatal(err)
			}
			var restarted []int
			if tt.serving {
				eventually.True(t, "the restarted server to listen", 10*time.Second, func() bool { return g1.listening(dir) })
				restarted = serversOf(dir)
			}
			if err := g2.restart(ctx, seen2); err != nil {
				t.Fatal(err)
			}
			waitStates(t, g2, "the instance running on the second group", allRunning(1))
			waitCount(t, "servers of the instance", 1, func() []int { return serversOf(dir) })
			if got := serversOf(dir); slices.Contains(got, dead) || (restarted != nil && !slices.Equal(got, restarted)) {
				t.Errorf("servers %v: want the first restart's %v (the killed one was %d)", got, restarted, dead)
			}
			if n1, n2 := restarts(log1), restarts(log2); n1 != 1 || n2 != 0 {
				t.Errorf("restarts: %d by the first group, %d by the second; want 1 and 0\nfirst's log:\n%s\nsecond's log:\n%s",
					n1, n2, log1.String(), log2.String())
			}
			if out := runOn(t, g2, id, "echo back"); out != "back\n" {
				t.Fatalf("output %q", out)
			}
		})
	}
}

// TestSharedRestartOutOfProcess: two plugin processes that update at the same moment
// after an instance's server died restart it once between them.
func TestSharedRestartOutOfProcess(t *testing.T) {
	root := newRoot(t)
	cfg := map[string]any{"root_dir": root, "shared": true}
	var logA, logB syncbuf.Buffer
	a := launchLogged(t, cfg, provider.ConnectorConfig{}, &logA)
	b := launchLogged(t, cfg, provider.ConnectorConfig{}, &logB)
	ctx := context.Background()
	if _, err := a.Increase(ctx, 1); err != nil {
		t.Fatal(err)
	}
	id := ids(waitStates(t, a, "1 running instance", allRunning(1)))[0]
	dir := filepath.Join(root, id)
	const rounds = 3
	for round := 1; round <= rounds; round++ {
		killServer(t, dir)
		start := make(chan struct{})
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, p := range []*pluginclient.Plugin{a, b} {
			wg.Go(func() {
				<-start
				errs[i] = p.Update(ctx, func(string, provider.State) {})
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		waitStates(t, a, "the instance running on A", allRunning(1))
		waitStates(t, b, "the instance running on B", allRunning(1))
		waitCount(t, "servers of the instance", 1, func() []int { return serversOf(dir) })
		if n := restarts(&logA) + restarts(&logB); n != round {
			t.Fatalf("after %d kills the plugins restarted the server %d times\nA's log:\n%s\nB's log:\n%s", round, n, logA.String(), logB.String())
		}
	}
	if out := runOn(t, b, id, "echo ok"); out != "ok\n" {
		t.Fatalf("output %q", out)
	}
}

// TestSharedInitLeavesOthersWorkInProgress: Init removes half-built instance
// directories and the cgroups of vanished instances only when no other plugin uses
// root_dir: with shared = true they may be another live plugin's creation under way.
func TestSharedInitLeavesOthersWorkInProgress(t *testing.T) {
	tests := []struct {
		name        string
		shared      bool
		otherShared bool // another shared plugin process is running
		wantRemoved bool
	}{
		{name: "exclusive, alone", wantRemoved: true},
		{name: "shared, alone", shared: true, wantRemoved: true},
		{name: "shared, beside another", shared: true, otherShared: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot(t)
			if tt.otherShared {
				launchLogged(t, map[string]any{"root_dir": root, "shared": true}, provider.ConnectorConfig{}, &syncbuf.Buffer{})
			}
			// What the other plugin's Increase would have in progress: a directory being
			// built and, with cgroups, a cgroup of an instance not in place yet (this
			// process and the plugins it launches share a cgroup, hence a parent group).
			const id = "local-abcdefghijkl"
			building := filepath.Join(root, newPrefix+id)
			if err := os.Mkdir(building, 0o700); err != nil {
				t.Fatal(err)
			}
			leftovers := []string{building}
			if parent, err := cgroupParentFor(root); err == nil {
				cg := filepath.Join(parent, id)
				if err := os.Mkdir(cg, 0o755); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = removeCgroup(cg); _ = removeCgroup(parent) })
				leftovers = append(leftovers, cg)
			} else {
				t.Logf("cgroups unusable, checking the directory only: %v", err)
			}

			var log syncbuf.Buffer
			if _, err := initInProcess(t, context.Background(), map[string]any{"root_dir": root, "shared": tt.shared}, &log); err != nil {
				t.Fatal(err)
			}
			for _, path := range leftovers {
				_, err := os.Stat(path)
				if removed := errors.Is(err, os.ErrNotExist); removed != tt.wantRemoved {
					t.Errorf("%s: removed %v, want %v (stat: %v)", path, removed, tt.wantRemoved, err)
				}
			}
			if said := strings.Contains(log.String(), "root_dir is shared with other live local plugins"); said == tt.wantRemoved {
				t.Errorf("logged that it left them: %v, want %v; log:\n%s", said, !tt.wantRemoved, log.String())
			}
		})
	}
}

// TestRestartLeavesAnInstanceBeingDeleted: a plugin that found an instance's server
// dead restarts it only if no deletion began since it looked: on a shared root_dir
// another plugin process may have accepted a Decrease meanwhile, and be removing the
// directory (which keeps the deleting marker, then instance.json, until last).
func TestRestartLeavesAnInstanceBeingDeleted(t *testing.T) {
	tests := []struct {
		name   string
		remove []string // files of the instance the deletion removed already
	}{
		{name: "marked deleting"},
		{name: "being removed", remove: []string{serverLockFile, serverPIDFile, serverFile, cgroupFile, hostKeyFile}},
		{name: "marker and record removed", remove: []string{serverLockFile, serverPIDFile, serverFile, cgroupFile, hostKeyFile, metaFile, deletingFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := newRoot(t)
			var log syncbuf.Buffer
			ctx := context.Background()
			g, err := initInProcess(t, ctx, map[string]any{"root_dir": root, "shared": true}, &log)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := g.Increase(ctx, 1); err != nil {
				t.Fatal(err)
			}
			id := ids(waitStates(t, g, "1 running instance", allRunning(1)))[0]
			dir := filepath.Join(root, id)
			cg := instanceCgroup(dir)
			if cg == "" {
				t.Log("cgroups unusable: not checking that none is made again")
			}
			killServer(t, dir)
			seen, err := g.lookup(id)
			if err != nil {
				t.Fatal(err)
			}
			// What another plugin's deletion did since: mark it, end its processes and
			// cgroup, remove files.
			if err := os.WriteFile(filepath.Join(dir, deletingFile), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if cg != "" {
				if err := removeCgroup(cg); err != nil {
					t.Fatal(err)
				}
			}
			for _, name := range tt.remove {
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}

			if err := g.restart(ctx, seen); !errors.Is(err, errGoing) {
				t.Errorf("restart = %v, want errGoing", err)
			}
			if n := restarts(&log); n != 0 {
				t.Errorf("restarted the server of an instance being deleted %d times", n)
			}
			if cg != "" {
				if _, err := os.Stat(cg); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the deleted instance's cgroup %s was made again (stat: %v)", cg, err)
				}
			}
		})
	}
}

// TestDeletionFinishedByAnother: on a shared root_dir every plugin finishes the
// deletions it sees in Update; one that comes to an instance another plugin has
// removed meanwhile finds it done, and logs no error.
func TestDeletionFinishedByAnother(t *testing.T) {
	ctx := context.Background()
	p := newSharedPair(t)
	g1, g2, log2, id := p.g1, p.g2, &p.log2, p.id
	seen, err := g2.lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	seen.deleting = true // as g2's Update found it, once g1 had marked it
	if _, err := g1.Decrease(ctx, []string{id}); err != nil {
		t.Fatal(err)
	}
	g1.wg.Wait()
	if _, err := os.Stat(seen.dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the first plugin's deletion left %s (stat: %v)", seen.dir, err)
	}
	g2.mu.Lock()
	g2.startDelete(seen)
	g2.mu.Unlock()
	g2.wg.Wait()
	if strings.Contains(log2.String(), "[ERROR]") || !strings.Contains(log2.String(), "instance deleted by another plugin process") {
		t.Errorf("the second plugin's log, want no error and the deletion found done:\n%s", log2.String())
	}
}
