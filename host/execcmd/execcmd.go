// Package execcmd is `runner exec`: run the pipeline of a local .gitlab-ci.yml on an
// autoscaled pool. With no config.toml it uses the built-in default: the `local`
// plugin (instances are sandboxes on this machine) and the instance executor, so it
// works on a fresh machine with nothing installed.
package execcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
	"github.com/flotilla-ci/flotilla/host/pipelinerun"
	"github.com/flotilla-ci/flotilla/host/pool"
)

// Options are the command's flags.
type Options struct {
	// Dir is the project directory (its working tree is the jobs' source).
	Dir string
	// File is the pipeline file, relative to Dir unless absolute.
	File string
	// ConfigPath, if set, is a config.toml whose runner entry to use.
	ConfigPath string
	// RunnerName picks the [[runners]] entry (default: the first with an autoscaler).
	RunnerName string
	// Executor overrides the runner's executor.
	Executor string
	// Image is the default image for docker-autoscaler jobs without one.
	Image string
	// LoadImages are `docker save` archives loaded into each instance's Docker Engine
	// before its jobs (--load-image), added to [runners.docker] load_images.
	LoadImages []string
	// MaxInstances and Capacity size the built-in default pool.
	MaxInstances, Capacity int
	// LogDir receives the jobs' logs; default under the user's state directory.
	LogDir string
	// Jobs restricts the run to these jobs and what they need.
	Jobs []string
	// Verbose streams plugin and host logs to Stderr.
	Verbose bool
	// Follow streams every job's log to Stdout as it runs, prefixed with the job's name.
	Follow bool
	// StateDir overrides where the pool keeps its state (default config or user state).
	StateDir string
	// Inputs are the main file's spec:inputs, each "name=value" (--input).
	Inputs []string
	// IncludeProjects are local checkouts for include:project, each
	// "group/name=PATH" (--include-project); a relative PATH is relative to the
	// current directory.
	IncludeProjects []string
	// Isolation is IsolationNone (the default, also for "") or IsolationVM: each job of
	// the built-in pool in its own QEMU VM on this machine.
	Isolation string
	// Vars are variables for the run, each "NAME=VALUE" (--var): like GitLab's
	// pipeline variables they override the file's, in rules and in the jobs.
	Vars []string
	// Source is CI_PIPELINE_SOURCE (--source); "" means push.
	Source string
	// DryRun prints the pipeline as it would run, without starting a pool; JSON
	// prints it as JSON (docs/gitlab-ci-yml.md, "Dry run").
	DryRun, JSON bool
	// Git gets every job's sources with Git from the local repository (HEAD's
	// commit, so GIT_DEPTH, GIT_SUBMODULE_* and the other Git variables apply) instead
	// of a copy of the working tree (--git).
	Git bool

	Stdout, Stderr io.Writer
	// Version is the runner's version, for the job logs.
	Version string
}

// Exit codes of `runner exec` (docs/reliability.md, "Signal contract").
const (
	// ExitPipelineFailed: the pipeline failed, the pool's instances could not all be
	// deleted at the end, or an error kept the pipeline from running.
	ExitPipelineFailed = 1
	// ExitInvalid: the pipeline file is invalid, or a flag is.
	ExitInvalid = 2
	// ExitSignal plus a signal's number: a stop signal ended the run (after the
	// cleanup it allowed): 143 for SIGTERM, 130 for SIGINT, 129 for SIGHUP.
	ExitSignal = 128
)

// shutdownBound is how long the instances' deletion may take at the end of a run,
// also after a second stop signal.
const shutdownBound = 2 * time.Minute

func stateHome() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "flotilla")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "flotilla")
	}
	return filepath.Join(os.TempDir(), "flotilla")
}

// defaultConfig is the built-in pool of `runner exec` with no config.toml: local
// instances, quick polling (they boot in milliseconds), deleted when the command ends.
// With --isolation vm, one instance holds every slot: the instances would share the
// one nesting daemon on this machine, whose slots are the instance's job slots, so two
// instances would take each other's VMs.
func defaultConfig(o Options, state string) string {
	executor := o.Executor
	if executor == "" {
		executor = config.ExecutorInstance
	}
	pluginCfg := fmt.Sprintf("root_dir = %q\n", filepath.Join(state, "exec-instances"))
	if executor == config.ExecutorDockerAutoscaler {
		pluginCfg += fmt.Sprintf("docker_socket = %q\n", "/var/run/docker.sock")
	}
	instances, capacity, vm := o.MaxInstances, o.Capacity, ""
	if o.Isolation == IsolationVM {
		instances, capacity, vm = 1, o.MaxInstances*o.Capacity, vmIsolationTable(newVMPaths(state))
	}
	return fmt.Sprintf(`concurrent = %d
[[runners]]
  name = "runner-exec"
  executor = %q
  shell = "bash"
  [runners.docker]
    image = %q
    pull_policy = ["if-not-present"]
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = %d
    max_instances = %d
    update_interval = "5s"
    update_interval_when_expecting = "100ms"
    shutdown_deletion_interval = "200ms"
    [runners.autoscaler.plugin_config]
%s%s    [[runners.autoscaler.policy]]
      idle_count = 0
      idle_time = "5m"
`, o.MaxInstances*o.Capacity, executor, o.Image, capacity, instances, indent(pluginCfg, "      "), vm)
}

func indent(s, pre string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString(pre + l)
		}
	}
	return b.String()
}

// Run runs the pipeline and returns the process exit code. Cancelling ctx cancels the
// running jobs (their after_script still runs); the pool's instances are deleted in
// any case before Run returns.
func Run(ctx context.Context, o Options) (int, error) {
	return runPipeline(ctx, o, pool.Stops{})
}

func runPipeline(ctx context.Context, o Options, stops pool.Stops) (code int, _ error) {
	if o.Dir == "" {
		o.Dir = "."
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return 1, err
	}
	if o.File == "" {
		o.File = ".gitlab-ci.yml"
	}
	file := o.File
	if !filepath.IsAbs(file) {
		file = filepath.Join(dir, file)
	}
	if err := checkPoolSize(&o); err != nil {
		return ExitInvalid, err
	}
	if err := checkIsolation(&o); err != nil {
		return ExitInvalid, err
	}
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		return ExitInvalid, fmt.Errorf("no pipeline file %s: run runner exec in a project with a .gitlab-ci.yml, or name one with -C DIR or -f FILE", file)
	}
	popts, err := pipelineOptions(o, dir)
	if err != nil {
		return ExitInvalid, err
	}
	overrides, err := parseVars(o.Vars)
	if err != nil {
		return ExitInvalid, err
	}
	if err := checkSource(o.Source); err != nil {
		return ExitInvalid, err
	}
	state := stateHome()
	ids := pipelineIDs{path: filepath.Join(state, "exec-pipeline-ids.json"), project: dir}
	id, iid := ids.next()
	env, warnings := pipeline.LocalEnv(ctx, pipeline.Local{Dir: dir, Source: o.Source, PipelineID: id, PipelineIID: iid})
	for _, w := range warnings {
		fmt.Fprintln(o.Stderr, "warning:", w)
	}
	env.Overrides = overrides
	popts.Env = &env // include:rules decide with the predefined and --var variables
	p, err := pipeline.LoadWith(ctx, file, popts)
	if err != nil {
		return ExitInvalid, err
	}
	for _, w := range p.Warnings {
		fmt.Fprintln(o.Stderr, "warning:", w.Error())
	}
	children := pipeline.ChildOptions{Load: popts, Env: env}
	if !o.DryRun {
		children.PipelineIDs = ids.take
	}
	ev, plan, code, err := evaluate(p, env, o)
	if ev == nil || o.DryRun {
		if o.DryRun && code != ExitInvalid {
			return code, dryRun(ctx, o, p, ev, plan, env, children, warnings, err)
		}
		return code, err
	}
	ids.commit()
	addPredefined(plan.Jobs, env.Predefined)
	cfg, r, err := loadRunner(o, state)
	if err != nil {
		return 1, err
	}
	if o.Executor != "" {
		r.Executor = o.Executor
	}
	if o.Image != "" {
		r.Docker.Image = o.Image
	}
	r.Docker.LoadImages = append(r.Docker.LoadImages, o.LoadImages...)
	logDir := o.LogDir
	if logDir == "" {
		logDir = filepath.Join(state, "exec-logs", filepath.Base(dir)+"-"+time.Now().Format("20060102-150405"))
	}
	srcWarnings, err := setSources(ctx, o, dir, id, plan.Jobs)
	if err != nil {
		return ExitInvalid, err
	}
	for _, w := range srcWarnings {
		fmt.Fprintln(o.Stderr, "warning:", w)
	}
	var source jobs.Source // child pipelines' jobs get the parent's
	if len(plan.Jobs) > 0 {
		source = plan.Jobs[0].Source
	}

	logOut := io.Discard
	if o.Verbose {
		logOut = o.Stderr
	}
	logger := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug}))
	stateDir := o.StateDir
	if stateDir == "" && o.ConfigPath == "" {
		stateDir = filepath.Join(state, "exec-state")
	}
	uid, name := currentUser()
	w := where{uid: uid, name: name, builtIn: o.ConfigPath == ""}
	if o.Isolation == IsolationVM {
		slots := r.Autoscaler.MaxInstances * r.Autoscaler.CapacityPerInstanceOrDefault()
		vms, err := startVMHost(ctx, o, newVMPaths(state), slots, logger)
		if err != nil {
			return 1, err
		}
		// Deferred before the pool's shutdown, so it runs after it: the pool deletes
		// its jobs' VMs through this daemon, then the daemon deletes what is left.
		defer func() {
			if err := vms.stop(ctx, o.Stderr); err != nil && code == 0 {
				code = ExitPipelineFailed
			}
		}()
		w.vm = &vms.info
		w.ignoredImages = clearImages(plan.Jobs)
	}
	fmt.Fprintln(o.Stderr, jobsRunLine(r, w))
	fmt.Fprintf(o.Stderr, "Starting a pool for runner %q: plugin %s, executor %s, up to %d instances × %d slots\n",
		r.Name, r.Autoscaler.Plugin, r.Executor, r.Autoscaler.MaxInstances, r.Autoscaler.CapacityPerInstanceOrDefault())
	m, err := pool.Start(ctx, cfg, r, pool.Options{Logger: logger, PluginLog: pluginLog(o), StateDir: stateDir, DeleteOnShutdown: true})
	if err != nil {
		return 1, err
	}
	// Whatever happens from here on, the pool's instances are deleted before Run
	// returns; if they cannot all be, the run fails, whatever the pipeline's verdict,
	// and says what is left and why.
	defer func() {
		if err := shutdown(ctx, o, m); err != nil && code == 0 {
			code = ExitPipelineFailed
		}
	}()

	width := 0
	for _, j := range plan.Jobs {
		width = max(width, len(j.Name))
	}
	runner := &pipelinerun.Runner{
		Pool: m, Concurrent: cfg.ConcurrentOrDefault(), LogDir: logDir,
		Progress: pipelinerun.NewTextProgress(o.Stdout, width),
		Options: executors.RunOptions{RunnerName: r.Name, RunnerVersion: o.Version, Executor: r.Executor,
			// Caches outlive the pool: they are kept per project on this machine.
			CacheDir: filepath.Join(state, "exec-cache", filepath.Base(dir))},
	}
	if r.HostCacheDisabled() {
		runner.Options.CacheDir = ""
	}
	if o.Follow {
		runner.Follow = o.Stdout
	}
	runner.Children = &pipelinerun.Children{Options: children, Prepare: func(j *pipeline.Job, predefined jobs.Variables) {
		addPredefined([]*pipeline.Job{j}, predefined)
		j.Source = source
	}}
	runner.Stops = stops
	sum, err := runner.Run(ctx, plan)
	if err != nil {
		return 1, err
	}
	fmt.Fprintln(o.Stdout)
	pipelinerun.PrintSummary(o.Stdout, sum)
	if !sum.Passed {
		return ExitPipelineFailed, nil
	}
	return 0, nil
}

// pipelineOptions reads --input and --include-project.
func pipelineOptions(o Options, dir string) (pipeline.Options, error) {
	po := pipeline.Options{Dir: dir}
	for _, kv := range o.Inputs {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return po, fmt.Errorf("--input %q: expected name=value", kv)
		}
		if po.Inputs == nil {
			po.Inputs = map[string]string{}
		}
		po.Inputs[name] = value
	}
	for _, kv := range o.IncludeProjects {
		project, path, ok := strings.Cut(kv, "=")
		if !ok || project == "" || path == "" {
			return po, fmt.Errorf("--include-project %q: expected group/name=PATH", kv)
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return po, fmt.Errorf("--include-project %q: %w", kv, err)
		}
		if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
			return po, fmt.Errorf("--include-project %q: %s is not a directory", kv, abs)
		}
		if po.Projects == nil {
			po.Projects = map[string]string{}
		}
		po.Projects[project] = abs
	}
	return po, nil
}

// checkPoolSize validates the built-in pool's flags: 0 means the default, a negative
// or huge value is a mistake to report, not to replace.
func checkPoolSize(o *Options) error {
	// The bounds are config.toml's for the same keys, so that their product (the
	// pool's `concurrent`) cannot overflow.
	for _, f := range []struct {
		flag  string
		v     *int
		limit int
	}{{"--max-instances", &o.MaxInstances, config.MaxInstancesBound}, {"--capacity", &o.Capacity, config.MaxCapacityPerInstance}} {
		switch {
		case *f.v == 0:
			*f.v = 2
		case *f.v < 0 || *f.v > f.limit:
			return fmt.Errorf("%s %d: must be between 1 and %d", f.flag, *f.v, f.limit)
		}
	}
	return nil
}

// shutdown deletes the pool's instances and stops its plugin, within shutdownBound.
// If instances are left, it says which, why and what happens to them, and returns an
// error; a failure that leaves none (the plugin did not stop cleanly) is a warning.
func shutdown(ctx context.Context, o Options, m *pool.Pool) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownBound)
	defer cancel()
	fmt.Fprintln(o.Stderr, "Deleting the pool's instances")
	err := m.Shutdown(sctx)
	if err == nil {
		return nil
	}
	var left []string
	for _, in := range m.Status().InstanceList {
		left = append(left, in.ID)
	}
	if len(left) == 0 {
		fmt.Fprintln(o.Stderr, "warning: stopping the pool:", err)
		return nil
	}
	fmt.Fprintf(o.Stderr, "runner exec: %d instance(s) could not be deleted: %s: %v\n"+
		"The next `runner exec` on this pool deletes what is left when it ends.\n", len(left), strings.Join(left, ", "), err)
	return err
}

func pluginLog(o Options) io.Writer {
	if o.Verbose {
		return o.Stderr
	}
	return nil
}

// loadRunner returns the config and the runner entry to use: from ConfigPath, or the
// built-in default.
func loadRunner(o Options, state string) (*config.Config, *config.Runner, error) {
	var cfg *config.Config
	var err error
	if o.ConfigPath != "" {
		var diags config.Diagnostics
		cfg, diags, err = config.Load(o.ConfigPath)
		for _, d := range diags {
			if d.Severity != config.Error {
				fmt.Fprintln(o.Stderr, d.String())
			}
		}
		if err != nil {
			return nil, nil, err
		}
	} else {
		cfg, _, err = config.Parse("(built-in default config)", []byte(defaultConfig(o, state)))
		if err != nil {
			return nil, nil, fmt.Errorf("built-in default configuration: %w", err)
		}
	}
	for i := range cfg.Runners {
		r := &cfg.Runners[i]
		if r.Autoscaler == nil {
			continue
		}
		if o.RunnerName == "" || r.Name == o.RunnerName {
			return cfg, r, nil
		}
	}
	if o.RunnerName != "" {
		return nil, nil, fmt.Errorf("%s: no [[runners]] entry named %q with [runners.autoscaler]", cfg.Path, o.RunnerName)
	}
	return nil, nil, errors.New(cfg.Path + ": no [[runners]] entry has [runners.autoscaler]; runner exec needs an autoscaled runner (or no config at all, for the built-in local pool)")
}
