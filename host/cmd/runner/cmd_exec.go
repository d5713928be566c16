package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/execcmd"
	"github.com/flotilla-ci/flotilla/host/version"
)

func init() {
	var o execcmd.Options
	cmd := &cobra.Command{
		Use:   "exec [JOB...]",
		Short: "Run the .gitlab-ci.yml pipeline of a directory on autoscaled instances",
		Long: `exec reads .gitlab-ci.yml in the project directory and runs its pipeline on an
autoscaled pool: jobs run as soon as what they need is done, concurrently, each on a
slot of an instance that the pool creates on demand and deletes at the end.

With no --config it uses the built-in pool: the local plugin (each instance is a
sandbox on this machine with its own SSH server) and the instance executor: jobs run
as you on this machine, without isolation. With --isolation vm, each job runs in its
own QEMU VM on this machine instead (a small Debian guest, built once; the jobs' image:
keys are ignored). Every run says in one line where its jobs run and as whom. Name jobs
to run only them and what they need; a manual job runs only when named.

Rules, only/except and workflow:rules are evaluated with predefined variables taken
from the Git checkout (CI_COMMIT_BRANCH, CI_COMMIT_TAG, CI_DEFAULT_BRANCH, …), with
CI_PIPELINE_SOURCE from --source and variables from --var. --dry-run prints the plan
(--json as JSON) without starting a pool.

Each job gets a copy of the working tree (of the Git variables only GIT_STRATEGY none
and empty apply); with --git it fetches HEAD's commit from the local repository with
Git instead, and GIT_DEPTH, GIT_SUBMODULE_STRATEGY and the others apply.

Every job's full log is kept in a file (see the summary); the exit code is 1 when the
pipeline failed or the pool's instances could not all be deleted, 2 when the pipeline
file or a flag is invalid.

Signals: SIGTERM, SIGINT and SIGHUP cancel the running jobs (their after_script runs)
and delete the instances; a second one stops waiting for the jobs but still deletes
the instances; a third exits at once. SIGQUIT lets the running jobs finish and
starts no new ones. After a signal N the exit code is 128+N.`,
		RunE: func(c *cobra.Command, args []string) error {
			if o.JSON && !o.DryRun {
				fmt.Fprintln(c.ErrOrStderr(), "runner: --json goes with --dry-run")
				return exitError{execcmd.ExitInvalid}
			}
			o.Jobs, o.Stdout, o.Stderr, o.Version = args, c.OutOrStdout(), c.ErrOrStderr(), version.Version
			code, err := execcmd.RunWithSignals(c.Context(), o)
			if err != nil && code <= execcmd.ExitPipelineFailed {
				return err
			}
			if err != nil {
				fmt.Fprintln(c.ErrOrStderr(), "runner:", err)
			}
			if code != 0 {
				return exitError{code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Dir, "dir", "C", ".", "project directory: its working tree is copied to the instances")
	f.StringVarP(&o.File, "file", "f", ".gitlab-ci.yml", "pipeline file, relative to --dir")
	f.StringVarP(&o.ConfigPath, "config", "c", "", "config.toml whose runner entry to use (default: the built-in local pool)")
	f.StringVar(&o.RunnerName, "runner", "", "name of the [[runners]] entry to use (default: the first with an autoscaler)")
	f.StringVar(&o.Executor, "executor", "", "executor: instance or docker-autoscaler (default: the runner's, or instance)")
	f.StringVar(&o.Image, "image", "", "default image for docker-autoscaler jobs that name none")
	f.IntVar(&o.MaxInstances, "max-instances", 2, "built-in pool: most instances at once")
	f.IntVar(&o.Capacity, "capacity", 2, "built-in pool: jobs per instance (capacity_per_instance)")
	f.StringVar(&o.LogDir, "log-dir", "", "where job logs go (default: under ~/.local/state/flotilla/exec-logs)")
	f.StringArrayVar(&o.Inputs, "input", nil, "a spec:inputs value of the pipeline file, name=value (repeatable)")
	f.StringArrayVar(&o.IncludeProjects, "include-project", nil, "a local checkout for include:project, group/name=PATH (repeatable)")
	f.StringVar(&o.Isolation, "isolation", execcmd.IsolationNone, "built-in pool: none (jobs run on this machine as you) or vm (each job in its own QEMU VM)")
	f.StringArrayVar(&o.Vars, "var", nil, "a variable for the run, NAME=VALUE, overriding the file's in rules and jobs (repeatable)")
	f.StringVar(&o.Source, "source", "push", "CI_PIPELINE_SOURCE of the run, for rules (push, web, schedule, merge_request_event, …)")
	f.BoolVar(&o.DryRun, "dry-run", false, "print the pipeline as it would run (stages, jobs, the rules that decided them, variables) without starting a pool")
	f.BoolVar(&o.JSON, "json", false, "with --dry-run: print the plan as JSON (schema in docs/gitlab-ci-yml.md)")
	f.BoolVar(&o.Git, "git", false, "get each job's sources with Git from the local repository (HEAD's commit; GIT_DEPTH, GIT_SUBMODULE_* apply) instead of a copy of the working tree")
	f.StringArrayVar(&o.LoadImages, "load-image", nil, "a docker save archive to load into each instance's Docker Engine before its jobs, for images no registry serves (repeatable)")
	f.BoolVarP(&o.Verbose, "verbose", "v", false, "show the pool's and the plugin's logs on stderr")
	f.BoolVarP(&o.Follow, "follow", "F", false, "stream every job's log as it runs, each line prefixed with the job's name")
	// A bad flag is exit status 2 (exitUsage, as for every command), as an invalid
	// pipeline is; 1 means the pipeline failed.
	root.AddCommand(cmd)
}
