// Package pool owns a job on a slot, for one [[runners]] entry: it resolves and launches
// the entry's provider plugin, starts its taskscaler over a durable inventory, keeps one
// SSH connection per instance, and runs each job through its whole stay on the pool:
// reserve, acquire, the executor's environment for the slot, the run, release. Both
// `runner exec` and `runner run` reach instances only through it, so a job runs the
// same way whatever its source.
//
// Executors plug in through the executors.Kind registry: this package imports each
// executor package once (executors.go) and looks the runner entry's executor up.
package pool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/coord"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/metrics"
	"github.com/flotilla-ci/flotilla/host/plugins"
	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/plugins/local"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Options tune a pool beyond its configuration.
type Options struct {
	// Logger receives the pool's and taskscaler's logs; nil means slog.Default().
	Logger *slog.Logger
	// PluginLog receives the plugin's own log lines; nil discards them.
	PluginLog io.Writer
	// StateDir overrides where the inventory is kept.
	StateDir string
	// DeleteOnShutdown deletes every instance at Shutdown even if the configuration
	// does not ask for it (`runner exec` pools live only as long as the command).
	DeleteOnShutdown bool
	// Resolve overrides plugin discovery options (tests).
	Resolve plugins.Options
	// PluginHangTimeout is how long the plugin may leave health checks unanswered
	// before it is killed and relaunched; 0 means pluginclient.DefaultHangTimeout.
	PluginHangTimeout time.Duration
	// Coordination, if set, shares the pool with the other runner managers of the
	// same [[runners]] entry through etcd (docs/ha.md): the inventory lives there,
	// the elected leader runs the taskscaler, and every slot is asked of it.
	Coordination *coord.Node
	// Metrics, if set, gets the pool's fleeting_taskscaler_* and fleeting_provisioner_*
	// collectors, labelled with the runner's name and short token; Shutdown removes them.
	Metrics prometheus.Registerer
}

// Pool is the running pool of one runner entry.
type Pool struct {
	Jobs // runs jobs on the scaler's slots with the entry's executor

	runner *config.Runner
	kind   executors.Kind
	// isolation runs each job in a VM of the instance's nesting daemon
	// ([runners.autoscaler.vm_isolation]); nil when it is off.
	isolation *isolation
	scaler    *taskscaler.Scaler
	// shared is the pool's part in a pool shared with other managers (nil: not
	// shared); scaler is then nil, and the taskscaler runs while this manager leads.
	shared  *coord.Group
	conns   *connector.Pool
	plugin  *pluginclient.Supervised
	store   state.Store
	cfgDir  string
	log     *slog.Logger
	useExt  bool
	closers []func()

	sharedMu   sync.Mutex
	sharedOpts taskscaler.Options
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// Start checks the runner entry against its executor, then launches the entry's plugin
// and taskscaler. On error nothing is left running.
func Start(ctx context.Context, cfg *config.Config, r *config.Runner, opts Options) (_ *Pool, err error) {
	if r.Autoscaler == nil {
		return nil, fmt.Errorf("runner %q: executor requires autoscaler config", r.Name)
	}
	name := cmp.Or(r.Executor, config.ExecutorInstance)
	kind, ok := executors.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("runner %q: executor %q is not supported (use %s)", r.Name, name, config.ExecutorChoice(false))
	}
	if kind.Check != nil {
		if err := kind.Check(r); err != nil {
			return nil, fmt.Errorf("runner %q: executor %s: %w", r.Name, name, err)
		}
	}
	a := r.Autoscaler
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	// GitLab Runner's field names: runner is the token's short form, runner_name the name.
	if r.Token != "" {
		log = log.With("runner", gitlab.ShortToken(r.Token), "runner_name", r.Name)
	} else {
		log = log.With("runner_name", r.Name)
	}
	m := &Pool{runner: r, kind: kind, cfgDir: cfg.Dir(), log: log, useExt: a.ConnectorConfig.UseExternalAddr}
	m.Jobs = Jobs{NewEnv: m.newEnv}
	if a.VMIsolation.Enabled {
		if m.isolation, err = newIsolation(r, m.cfgDir); err != nil {
			return nil, fmt.Errorf("runner %q: %w", r.Name, err)
		}
	}
	defer func() {
		if err != nil {
			m.close() // whatever was started so far: nothing is left running
		}
	}()

	settings, err := a.ConnectorConfig.Provider(m.cfgDir)
	if err != nil {
		return nil, err
	}
	pluginJSON, err := a.PluginConfigJSON()
	if err != nil {
		return nil, err
	}
	ropts := opts.Resolve
	if ropts.Defaults == (plugins.Defaults{}) {
		ropts.Defaults = plugins.Defaults{Registry: cfg.Fleeting.Registry, Repository: cfg.Fleeting.Repository}
	}
	resolved, err := plugins.Resolve(a.Plugin, ropts)
	if err != nil {
		return nil, fmt.Errorf("initializing taskscaler: running autoscaler plugin: loading fleeting plugin: %w", err)
	}
	plog := hclog.NewNullLogger()
	if opts.PluginLog != nil {
		plog = hclog.New(&hclog.LoggerOptions{Name: "fleeting-plugin", Output: opts.PluginLog, Level: hclog.Info})
	}
	popts := pluginclient.Options{Logger: plog}
	launch := func(ctx context.Context) (*pluginclient.Plugin, error) {
		if resolved.Embedded {
			return local.LaunchEmbedded(ctx, pluginJSON, popts)
		}
		return pluginclient.Launch(ctx, resolved.Path, pluginJSON, popts)
	}
	// A plugin process that dies, or stops answering, is relaunched (with backoff) and
	// initialised again with the same settings; meanwhile calls fail fast saying so.
	m.plugin, err = pluginclient.Supervise(ctx, launch, pluginclient.SuperviseOptions{Logger: log, HangTimeout: opts.PluginHangTimeout})
	if err != nil {
		return nil, fmt.Errorf("initializing taskscaler: running autoscaler plugin: %w", err)
	}
	m.closers = append(m.closers, m.plugin.Kill)

	dir := opts.StateDir
	if dir == "" {
		dir = a.StateStorageDir(m.cfgDir)
	}
	owner := r.Name
	if owner == "" {
		owner = "runner"
	}
	if r.URL != "" {
		owner = r.URL + "|" + owner
	}
	if opts.Coordination == nil {
		bolt, err := state.OpenBolt(filepath.Join(dir, unsafeName.ReplaceAllString(owner, "_")+".db"), 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("creating state storage: %w", err)
		}
		m.store = bolt
		m.closers = append(m.closers, func() { bolt.Close() })
	}

	// Host keys first seen (for plugins that report none) are pinned next to the
	// inventory, so a restarted host still refuses a changed key.
	var pins connector.HostKeyStore
	if opts.Coordination != nil {
		pins = opts.Coordination.Pins(owner) // every manager expects the key one pinned
	} else if pins, err = connector.OpenFileHostKeyStore(filepath.Join(dir, unsafeName.ReplaceAllString(owner, "_")+".known_hosts")); err != nil {
		return nil, fmt.Errorf("creating state storage: %w", err)
	}
	m.conns = connector.NewPool(connector.DialOptions{UseExternalAddr: a.ConnectorConfig.UseExternalAddr, Logger: log, HostKeys: pins})
	m.closers = append(m.closers, m.conns.Shutdown)

	topts := a.ScalerOptions()
	topts.Owner, topts.Settings, topts.PluginLogger = owner, provider.Settings{ConnectorConfig: settings}, plog
	topts.DeleteInstancesOnShutdown = a.DeleteInstancesOnShutdown || opts.DeleteOnShutdown
	topts.Store, topts.Logger = m.store, log
	// A forgotten instance's connection and host-key pin go with it.
	topts.OnGone = func(id string) {
		_ = m.conns.Close(id)
		if m.isolation != nil {
			m.isolation.forget(id)
		}
	}
	if opts.Metrics != nil {
		col := metrics.New(prometheus.Labels{"runner": gitlab.ShortToken(r.Token), "runner_name": r.Name}, metrics.Buckets{
			Operation: a.InstanceOperationTimeBuckets, Creation: a.InstanceCreationTimeBuckets,
			IsRunning: a.InstanceIsRunningTimeBuckets, Deletion: a.InstanceDeletionTimeBuckets,
			Readiness: a.InstanceReadinessTimeBuckets, Life: a.InstanceLifeDurationBuckets,
		})
		if err := opts.Metrics.Register(col); err != nil {
			return nil, fmt.Errorf("register metrics of runner %q: %w", r.Name, err)
		}
		m.closers = append(m.closers, func() { opts.Metrics.Unregister(col) })
		topts.Metrics = col
	}
	// Before a slot is handed out, its instance must answer over SSH: a job is never
	// given to an instance that cannot be reached (GitLab has this behind
	// FF_USE_FLEETING_ACQUIRE_HEARTBEATS, off by default; here it is on unless that flag
	// is set to false). It costs one channel on the pooled connection.
	if on, set := r.FeatureFlags["FF_USE_FLEETING_ACQUIRE_HEARTBEATS"]; on || !set {
		topts.Probe = func(ctx context.Context, inst taskscaler.InstanceInfo) error {
			if err := m.conns.Run(ctx, inst.ConnectInfo, connector.RunOptions{Command: "exit 0"}); err != nil {
				return fmt.Errorf("acquire heartbeat: %w", err)
			}
			return nil
		}
	}
	if cmd := a.InstanceReadyCommand; cmd != "" {
		topts.Ready = func(ctx context.Context, inst taskscaler.InstanceInfo) error {
			var out limitedBuffer
			if err := m.conns.Run(ctx, inst.ConnectInfo, connector.RunOptions{Command: cmd, Stdout: &out, Stderr: &out}); err != nil {
				return fmt.Errorf("ready command: %w: %s", err, out.String())
			}
			return nil
		}
	}
	if m.isolation != nil {
		// An adopted instance may hold VMs of jobs a runner that died left: they go
		// before the instance takes jobs again.
		readyCommand := topts.Ready
		topts.Ready = func(ctx context.Context, inst taskscaler.InstanceInfo) error {
			if inst.Restored {
				if err := m.cleanAdopted(ctx, inst); err != nil {
					return err
				}
			}
			if readyCommand != nil {
				return readyCommand(ctx, inst)
			}
			return nil
		}
	}
	if opts.Coordination != nil {
		return m, m.share(ctx, opts.Coordination, topts)
	}
	m.scaler, err = taskscaler.New(ctx, m.plugin, topts)
	if err != nil {
		return nil, fmt.Errorf("creating taskscaler: %w", err)
	}
	m.Slots = ScalerSlots(m.scaler)
	return m, nil
}

// share joins the pool shared with the other managers: this manager's plugin is
// initialised for its own connections, and the taskscaler starts (with topts, over
// the inventory in etcd) whenever this manager is elected to lead.
func (m *Pool) share(ctx context.Context, node *coord.Node, topts taskscaler.Options) error {
	info, err := m.plugin.Init(ctx, topts.PluginLogger, topts.Settings)
	if err != nil {
		return fmt.Errorf("creating taskscaler: initialise instance group: %w", err)
	}
	// The pool outlives each manager: a leader that stops hands its instances to the
	// next one instead of deleting them.
	topts.DeleteInstancesOnShutdown = false
	topts.Info = &info
	// A new leader finds jobs recorded in flight whose manager died with the old one;
	// a manager that is only cut off stops them about one lease TTL after the cut.
	topts.LostJobsGrace = node.TTL()
	m.sharedOpts = topts
	m.shared = node.Join(topts.Owner, coord.GroupOptions{
		Logger: m.log, AcquireTimeout: topts.InstanceAcquireTimeout, ConnectInfo: m.plugin.ConnectInfo,
		Lead: func(ctx context.Context, store *coord.Store, held []taskscaler.Held) (coord.Scaler, error) {
			o := m.leaderOptions()
			o.Store, o.Held = store, held
			return taskscaler.New(ctx, store.Fenced(m.plugin), o)
		},
	})
	m.closers = append(m.closers, m.shared.Close)
	m.Slots = slotsOf[*coord.Acquisition]{m.shared}
	return nil
}

// leaderOptions are the taskscaler options a new leader starts with (the policies of
// the last configuration reload).
func (m *Pool) leaderOptions() taskscaler.Options {
	m.sharedMu.Lock()
	defer m.sharedMu.Unlock()
	return m.sharedOpts
}

// limitedBuffer keeps the first 4 KiB of a command's output, for error messages.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 4096 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }

// Reserve holds a slot for key ahead of its job (`runner run` reserves before it asks
// GitLab for a job, so it never takes a job it has no room for); the job's Run with the
// same key acquires it.
func (m *Pool) Reserve(ctx context.Context, key string) error {
	if m.shared != nil {
		return m.shared.Reserve(ctx, key)
	}
	return m.scaler.Reserve(ctx, key)
}

// Unreserve gives back a reservation no job will use.
func (m *Pool) Unreserve(key string) {
	if m.shared != nil {
		m.shared.Unreserve(key)
		return
	}
	m.scaler.Unreserve(key)
}

// ConfigureSchedule replaces the scaling policies (on a configuration reload). In a
// shared pool they apply while this manager leads, and from its next election on.
func (m *Pool) ConfigureSchedule(policies []taskscaler.Policy) error {
	if m.shared == nil {
		return m.scaler.ConfigureSchedule(policies)
	}
	m.sharedMu.Lock()
	m.sharedOpts.Policies = policies
	m.sharedMu.Unlock()
	if sc, ok := m.shared.Scaler(); ok {
		if s, ok := sc.(*taskscaler.Scaler); ok {
			return s.ConfigureSchedule(policies)
		}
	}
	return nil
}

// Status is the pool's state and its last scaling decisions; in a shared pool also
// the managers, the leader and the slots they hold.
func (m *Pool) Status() taskscaler.Status {
	if m.shared != nil {
		return m.shared.Status()
	}
	return m.scaler.Status()
}

// Explain explains one instance of the pool (false if the pool does not know it).
func (m *Pool) Explain(id string) (taskscaler.InstanceStatus, bool) {
	if m.shared != nil {
		return m.shared.Explain(id)
	}
	return m.scaler.Explain(id)
}

// newEnv makes the environment of job on slot with the runner entry's executor, over
// the pool's connection to the slot's instance.
func (m *Pool) newEnv(ctx context.Context, job *jobs.Job, slot Slot) (executors.Env, error) {
	info, err := slot.ConnectInfo(ctx)
	if err != nil {
		return nil, err
	}
	m.log.Debug("dialing instance", "instance", slot.InstanceID(), "internal", info.InternalAddr, "external", info.ExternalAddr)
	conn, err := m.conns.Client(ctx, info)
	if err != nil {
		return nil, fmt.Errorf("dialing host: %w", err)
	}
	if m.isolation != nil {
		return m.isolatedEnv(ctx, job, slot, conn)
	}
	return m.kind.New(ctx, executors.Target{Conn: conn, Slot: slot.Slot(), Runner: m.runner}, job)
}

// Shutdown stops the taskscaler (deleting instances when configured), then the plugin,
// and closes the connections and the inventory. A plugin that dies or hangs while the
// instances are deleted is relaunched, and the deletion waits for it; only the plugin's
// own Shutdown, once the instances are gone, ends relaunching.
func (m *Pool) Shutdown(ctx context.Context) error {
	var err error
	if m.plugin != nil {
		// The deletion's calls are the last: each one waits for a relaunch rather
		// than failing at once, which would end the deletion.
		m.plugin.Drain()
	}
	if m.scaler != nil {
		err = m.scaler.Shutdown(ctx)
	}
	if m.shared != nil {
		m.shared.Close() // a leader resigns: another manager takes over at once
	}
	if m.plugin != nil {
		if serr := m.plugin.Shutdown(ctx); serr != nil && !errors.Is(serr, pluginclient.ErrPluginExited) {
			err = errors.Join(err, serr)
		}
	}
	m.close()
	return err
}

func (m *Pool) close() {
	for i := len(m.closers) - 1; i >= 0; i-- {
		m.closers[i]()
	}
	m.closers = nil
}
