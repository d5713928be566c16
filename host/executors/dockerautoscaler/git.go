package dockerautoscaler

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// cloneOnHost clones a SourceGit job's repository on the runner host into a temporary
// directory and returns it with a cleanup function. Job images need not contain git
// this way (GitLab Runner uses a helper image for this); the tree then travels into
// the builds volume like a local source. The job token goes in an HTTP header passed
// through git's environment, so it appears neither in the URL nor in argv.
func cloneOnHost(ctx context.Context, src jobs.Source, log io.Writer) (string, func(), error) {
	dir, err := os.MkdirTemp("", "flotilla-clone-")
	if err != nil {
		return "", nil, fmt.Errorf("clone repository: %w", err)
	}
	cleanup := func() { os.RemoveAll(dir) }
	git := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1")
		if src.Token != "" {
			auth := base64.StdEncoding.EncodeToString([]byte("gitlab-ci-token:" + src.Token))
			cmd.Env = append(cmd.Env, "GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http.extraHeader",
				"GIT_CONFIG_VALUE_0=Authorization: Basic "+auth)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if src.Token != "" {
				msg = strings.ReplaceAll(msg, src.Token, executors.Masked)
			}
			return fmt.Errorf("git %s: %v: %s", args[0], err, msg)
		}
		return nil
	}
	fmt.Fprintf(log, "Fetching changes of %s on the runner host\n", src.RepoURL)
	args := []string{"clone", "-q"}
	if src.Depth > 0 {
		args = append(args, "--depth", strconv.Itoa(src.Depth))
	}
	if src.Ref != "" {
		args = append(args, "--branch", src.Ref)
	}
	args = append(args, "--", src.RepoURL, ".")
	if err := git(args...); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("clone repository: %w", err)
	}
	if src.SHA != "" {
		if err := git("checkout", "-q", src.SHA); err != nil {
			cleanup()
			return "", nil, fmt.Errorf("clone repository: %w", err)
		}
		fmt.Fprintf(log, "Checking out %s\n", src.SHA[:min(8, len(src.SHA))])
	}
	return dir, cleanup, nil
}
