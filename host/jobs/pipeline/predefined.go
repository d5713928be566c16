package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// Local describes a local run for LocalEnv.
type Local struct {
	// Dir is the project directory.
	Dir string
	// Source is CI_PIPELINE_SOURCE; "" means push.
	Source string
	// PipelineID and PipelineIID are CI_PIPELINE_ID and CI_PIPELINE_IID.
	PipelineID, PipelineIID int
}

// LocalEnv returns the Env of a local run: the predefined variables from the Git
// checkout of l.Dir (read with the git CLI), and its diffs for changes:. Without a
// checkout (or a commit) the variables that cannot be known are unset and a warning
// says so; changes: conditions then always hold.
func LocalEnv(ctx context.Context, l Local) (Env, []string) {
	if l.Source == "" {
		l.Source = "push"
	}
	g := gitCLI{ctx: ctx, dir: l.Dir}
	vars := jobs.Variables{
		{Key: "CI", Value: "true"}, {Key: "GITLAB_CI", Value: "true"},
		{Key: "CI_PIPELINE_SOURCE", Value: l.Source},
		{Key: "CI_PROJECT_DIR", Value: l.Dir}, {Key: "CI_PROJECT_NAME", Value: filepath.Base(l.Dir)},
		{Key: "CI_PIPELINE_ID", Value: strconv.Itoa(l.PipelineID)}, {Key: "CI_PIPELINE_IID", Value: strconv.Itoa(l.PipelineIID)},
	}
	env := Env{Dir: l.Dir}
	var warnings []string
	if _, err := g.run("rev-parse", "--is-inside-work-tree"); err != nil {
		warnings = append(warnings, fmt.Sprintf("%s is not a Git checkout (%v): CI_COMMIT_* and CI_DEFAULT_BRANCH are unset and every changes: condition holds", l.Dir, err))
		env.Predefined = vars
		return env, warnings
	}
	def := g.defaultBranch()
	if def != "" {
		vars = append(vars, jobs.Variable{Key: "CI_DEFAULT_BRANCH", Value: def})
	} else {
		warnings = append(warnings, "no default branch (neither origin/HEAD nor a main or master branch): CI_DEFAULT_BRANCH is unset")
	}
	sha, err := g.run("rev-parse", "--verify", "-q", "HEAD")
	if err != nil {
		warnings = append(warnings, fmt.Sprintf("%s has no commit: CI_COMMIT_* are unset and every changes: condition holds", l.Dir))
		env.Predefined = vars
		return env, warnings
	}
	vars = append(vars, jobs.Variable{Key: "CI_COMMIT_SHA", Value: sha}, jobs.Variable{Key: "CI_COMMIT_SHORT_SHA", Value: sha[:min(8, len(sha))]})
	if msg, err := g.run("log", "-1", "--format=%B"); err == nil {
		title, _, _ := strings.Cut(msg, "\n")
		vars = append(vars, jobs.Variable{Key: "CI_COMMIT_MESSAGE", Value: msg}, jobs.Variable{Key: "CI_COMMIT_TITLE", Value: title})
	}
	ref := ""
	branch, _ := g.run("symbolic-ref", "-q", "--short", "HEAD")
	switch {
	case branch != "":
		ref = branch
		vars = append(vars, jobs.Variable{Key: "CI_COMMIT_BRANCH", Value: branch})
	default:
		// A detached HEAD: a tag pipeline if a tag points at it.
		if tag, err := g.run("describe", "--tags", "--exact-match", "HEAD"); err == nil && tag != "" {
			ref = tag
			vars = append(vars, jobs.Variable{Key: "CI_COMMIT_TAG", Value: tag})
		} else {
			warnings = append(warnings, "HEAD is detached and no tag points at it: CI_COMMIT_BRANCH, CI_COMMIT_TAG, CI_COMMIT_REF_NAME and CI_COMMIT_REF_SLUG are unset")
		}
	}
	if ref != "" {
		vars = append(vars, jobs.Variable{Key: "CI_COMMIT_REF_NAME", Value: ref}, jobs.Variable{Key: "CI_COMMIT_REF_SLUG", Value: RefSlug(ref)})
	}
	env.Predefined = vars
	env.Changed = func(compareTo string) ([]string, bool, error) {
		return g.changed(compareTo, branch, def)
	}
	env.LastCommit = func(path string) string {
		// From the top of the checkout, as GitLab looks a path up in the repository;
		// a pattern is Git's pathspec glob, as in GitLab.
		id, err := g.run("log", "-1", "--format=%H", "HEAD", "--", ":(top)"+path)
		if err != nil {
			return ""
		}
		return id
	}
	return env, warnings
}

var slugInvalid = regexp.MustCompile(`[^a-z0-9]`)

// RefSlug is GitLab's CI_COMMIT_REF_SLUG of a ref: lowercased, every character but
// a-z and 0-9 replaced with "-", at most 63 bytes, no "-" at either end.
func RefSlug(ref string) string {
	s := slugInvalid.ReplaceAllString(strings.ToLower(ref), "-")
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.Trim(s, "-")
}

// gitCLI runs git in a checkout.
type gitCLI struct {
	ctx context.Context
	dir string
}

// run returns git's trimmed output; the error carries its stderr.
func (g gitCLI) run(args ...string) (string, error) {
	cmd := exec.CommandContext(g.ctx, "git", append([]string{"-C", g.dir}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return "", fmt.Errorf("git %s: %s", args[0], msg)
		}
		return "", fmt.Errorf("git %s: %w", args[0], err)
	}
	return strings.TrimRight(string(out), "\n"), nil
}

// defaultBranch is origin/HEAD's branch, else main or master if there is one.
func (g gitCLI) defaultBranch() string {
	if ref, err := g.run("symbolic-ref", "-q", "--short", "refs/remotes/origin/HEAD"); err == nil && ref != "" {
		return strings.TrimPrefix(ref, "origin/")
	}
	for _, b := range []string{"main", "master"} {
		if _, err := g.run("rev-parse", "--verify", "-q", "refs/heads/"+b); err == nil {
			return b
		}
	}
	return ""
}

// changed lists the files that differ between the base commit and the working tree
// (committed, staged or not, and untracked files). The base is compareTo when
// given; else, on a branch other than the default one, where it forks from the
// default branch; else the previous commit. Without a base (a first commit, no
// default branch to fork from) known is false.
func (g gitCLI) changed(compareTo, branch, def string) ([]string, bool, error) {
	var base string
	switch {
	case compareTo != "":
		sha, err := g.run("rev-parse", "--verify", "-q", compareTo+"^{commit}")
		if err != nil {
			return nil, false, fmt.Errorf("compare_to %q is not a commit of the checkout %s", compareTo, g.dir)
		}
		base = sha
	case branch != "" && def != "" && branch != def:
		for _, ref := range []string{"refs/heads/" + def, "refs/remotes/origin/" + def} {
			if sha, err := g.run("merge-base", "HEAD", ref); err == nil {
				base = sha
				break
			}
		}
	default:
		if sha, err := g.run("rev-parse", "--verify", "-q", "HEAD~1"); err == nil {
			base = sha
		}
	}
	if base == "" {
		return nil, false, nil
	}
	diff, err := g.run("diff", "--name-only", "--no-renames", "--relative", "-z", base)
	if err != nil {
		return nil, false, err
	}
	untracked, err := g.run("ls-files", "--others", "--exclude-standard", "-z")
	if err != nil {
		return nil, false, err
	}
	var files []string
	for _, f := range strings.Split(diff+"\x00"+untracked, "\x00") {
		if f != "" {
			files = append(files, f)
		}
	}
	return files, true, nil
}
