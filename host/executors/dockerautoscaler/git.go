package dockerautoscaler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/gitsource"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// sourcesOnHost gets a SourceGit job's sources on the runner host, into a temporary
// directory, following the job's Git variables, and returns the project directory
// ("" when the strategy wants an empty one) with a cleanup function. Job images need
// not contain git this way (GitLab Runner uses a helper image for this); the tree then
// travels into the builds volume like a local source. The builds volume is the job's
// own, so fetch starts from an empty directory like clone, and none gives an empty
// project directory. The script runs with the host's environment, never the job's
// variables, so that a job cannot steer programs on the host.
func sourcesOnHost(ctx context.Context, job *jobs.Job, log io.Writer) (string, func(), error) {
	plan, err := gitsource.PlanFor(job)
	if err != nil {
		return "", nil, executors.SourcesError(err)
	}
	if plan.Strategy == gitsource.StrategyNone || plan.Strategy == gitsource.StrategyEmpty {
		fmt.Fprintf(log, "Skipping Git repository setup (GIT_STRATEGY=%s): the project directory starts empty\n", plan.Strategy)
		return "", func() {}, nil
	}
	tmp, err := os.MkdirTemp("", "flotilla-clone-")
	if err != nil {
		return "", nil, fmt.Errorf("get sources: %w", err)
	}
	cleanup := func() { os.RemoveAll(tmp) }
	dir := filepath.Join(tmp, "project")
	fmt.Fprintf(log, "Fetching changes of %s on the runner host\n", job.Source.RepoURL)
	cmd := exec.CommandContext(ctx, "sh", "-s")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1")
	cmd.Stdin = strings.NewReader(plan.Script(job.Source, gitsource.Options{Dir: dir}))
	out := executors.NewMaskWriter(log, []string{job.Source.Token})
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	out.Close()
	if err != nil {
		cleanup()
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.Exited() {
			// Git ran and failed (a ref or repository that is not there, a network
			// error): another slot would fetch from the same host the same way.
			return "", nil, executors.SourcesError(fmt.Errorf("get sources: %w", err))
		}
		return "", nil, fmt.Errorf("get sources: %w", err)
	}
	return dir, cleanup, nil
}
