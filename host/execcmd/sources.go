package execcmd

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/flotilla-ci/flotilla/host/executors/gitsource"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
)

// setSources says where every job gets its files: a copy of the working tree in dir
// (uncommitted edits included), or with --git the commit at HEAD, fetched with Git
// from the local repository as `runner run` fetches from GitLab, so that the jobs'
// Git variables apply. It returns the warnings to print; an error is a bad --git.
func setSources(ctx context.Context, o Options, dir string, pipelineID int, js []*pipeline.Job) ([]string, error) {
	if !o.Git {
		for _, j := range js {
			j.Source = jobs.Source{Kind: jobs.SourceLocal, Dir: dir}
		}
		return gitOnlyWarning(js), nil
	}
	src, dirty, err := localGitSource(ctx, dir, pipelineID)
	if err != nil {
		return nil, err
	}
	for _, j := range js {
		j.Source = src
	}
	if dirty > 0 {
		return []string{fmt.Sprintf("--git: the working tree has uncommitted changes (%d paths): the jobs do not get them, they fetch commit %s", dirty, src.SHA[:min(8, len(src.SHA))])}, nil
	}
	return nil, nil
}

// gitOnlyWarning is one warning for the whole run naming the Git variables its jobs
// set that a copy of the working tree ignores.
func gitOnlyWarning(js []*pipeline.Job) []string {
	var names, vars []string
	seen := map[string]bool{}
	for _, j := range js {
		set := gitsource.GitOnlyVariables(&j.Job)
		if len(set) == 0 {
			continue
		}
		names = append(names, j.Name)
		for _, v := range set {
			if !seen[v] {
				seen[v] = true
				vars = append(vars, v)
			}
		}
	}
	if len(vars) == 0 {
		return nil
	}
	return []string{fmt.Sprintf("%s set by %s: ignored, the jobs get a copy of the working tree; run with --git to get the sources with Git from the local repository (committed changes only), where these variables apply",
		strings.Join(vars, ", "), strings.Join(names, ", "))}
}

// localGitSource is the Git source of `runner exec --git`: HEAD's commit of the
// repository of dir, fetched over file:// (executors whose Git does not run on this
// machine ship the repository first). It also returns how many paths have
// uncommitted changes.
func localGitSource(ctx context.Context, dir string, pipelineID int) (jobs.Source, int, error) {
	git := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...).Output()
		if err != nil {
			var stderr string
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = strings.TrimSpace(string(ee.Stderr))
			}
			return "", fmt.Errorf("git %s: %v %s", strings.Join(args, " "), err, stderr)
		}
		return strings.TrimSpace(string(out)), nil
	}
	gitDir, err := git("rev-parse", "--path-format=absolute", "--git-common-dir")
	if err != nil {
		return jobs.Source{}, 0, fmt.Errorf("--git: %s is not in a Git repository (%v): run without --git to copy the working tree", dir, err)
	}
	sha, err := git("rev-parse", "--verify", "-q", "HEAD^{commit}")
	if err != nil || sha == "" {
		return jobs.Source{}, 0, fmt.Errorf("--git: the repository of %s has no commit: commit first, or run without --git to copy the working tree", dir)
	}
	branch, _ := git("symbolic-ref", "-q", "--short", "HEAD")
	// The commit is fetched by name, so that the jobs get HEAD as it was when the
	// run started even if the branch moves on; the branch is fetched too, as GitLab's
	// refspecs do.
	src := jobs.Source{Kind: jobs.SourceGit, Dir: dir, RepoURL: "file://" + gitDir, HostGitDir: gitDir, SHA: sha,
		Ref: branch, AllowFetch: true, Refspecs: []string{fmt.Sprintf("+%s:refs/pipelines/%d", sha, pipelineID)}}
	if branch != "" {
		src.Refspecs = append(src.Refspecs, "+refs/heads/"+branch+":refs/remotes/origin/"+branch)
	} else {
		src.Ref = "HEAD"
	}
	status, err := git("status", "--porcelain")
	if err != nil {
		return jobs.Source{}, 0, fmt.Errorf("--git: %w", err)
	}
	dirty := 0
	if status != "" {
		dirty = len(strings.Split(status, "\n"))
	}
	return src, dirty, nil
}
