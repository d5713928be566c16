package instance

import (
	"context"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

func init() {
	executors.Register(executors.Kind{
		Name: config.ExecutorInstance,
		// A shell the executor cannot run would fail every job of the entry.
		Check: func(r *config.Runner) error { return executors.ValidShell(r.ShellOrDefault()) },
		New: func(_ context.Context, on executors.Target, job *jobs.Job) (executors.Env, error) {
			env, err := New(on.Conn, job, Options{Shell: on.Runner.ShellOrDefault(), BuildsDir: on.Runner.BuildsDir, Slot: on.Slot,
				PreGetSourcesScript: on.Runner.PreGetSourcesScript, PostGetSourcesScript: on.Runner.PostGetSourcesScript,
				DebugTraceDisabled: on.Runner.DebugTraceDisabled})
			if err != nil {
				return nil, err
			}
			return env, nil
		},
	})
}
