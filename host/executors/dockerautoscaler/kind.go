package dockerautoscaler

import (
	"context"
	"errors"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

func init() {
	executors.Register(executors.Kind{
		Name: config.ExecutorDockerAutoscaler,
		// A Docker host the executor cannot reach would fail every job of the entry.
		Check: func(r *config.Runner) error {
			_, err := socketPath(r.Docker.Host)
			_, _, cerr := optionsFromConfig(&r.Docker)
			return errors.Join(err, cerr)
		},
		New: func(_ context.Context, on executors.Target, job *jobs.Job) (executors.Env, error) {
			d := on.Runner.Docker
			cli, err := NewClient(on.Conn, d.Host)
			if err != nil {
				return nil, err
			}
			containerOpts, serviceOpts, err := optionsFromConfig(&d)
			if err != nil {
				return nil, err
			}
			env, err := New(cli, job, Options{Image: d.Image, Host: d.Host, Volumes: d.Volumes,
				Privileged: d.Privileged, PullPolicy: d.PullPolicy, AllowedImages: d.AllowedImages,
				AllowedPullPolicies: d.AllowedPullPolicies, AllowedServices: d.AllowedServices,
				DebugTraceDisabled:  on.Runner.DebugTraceDisabled,
				PreGetSourcesScript: on.Runner.PreGetSourcesScript, PostGetSourcesScript: on.Runner.PostGetSourcesScript,
				LoadImages: d.LoadImages, RegistryMirrors: d.RegistryMirrors,
				Container: containerOpts, Service: serviceOpts, NetworkMode: d.NetworkMode,
				User: d.User, AllowedUsers: d.AllowedUsers, WaitForServices: d.WaitForServices(), Dial: on.Conn.Dial})
			if err != nil {
				return nil, err
			}
			return env, nil
		},
	})
}
