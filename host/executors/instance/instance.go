// Package instance is the `instance` executor: the job's script runs in a shell on the
// instance itself, over the instance's shared SSH connection. The project source is put
// in place first: for `runner exec` the local working tree is streamed as a tar archive
// (with --git, the local repository's Git directory, fetched from on the instance), for
// GitLab jobs the repository is cloned with the job token.
package instance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/gitsource"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// Conn is the part of an instance connection the executor uses.
type Conn interface {
	Run(ctx context.Context, opts connector.RunOptions) error
}

// Options configure the executor for one job.
type Options struct {
	// Shell is bash (default) or sh.
	Shell string
	// BuildsDir is where projects are checked out; default "$HOME/builds".
	BuildsDir string
	// Slot is the job's slot on the instance; concurrent jobs use different slots and
	// therefore different directories.
	Slot int
	// PreGetSourcesScript and PostGetSourcesScript are config.toml's shell text run
	// before and after Git puts the sources of a GitLab job in place.
	PreGetSourcesScript  string
	PostGetSourcesScript string
	// DebugTraceDisabled ignores CI_DEBUG_TRACE (config.toml debug_trace_disabled).
	DebugTraceDisabled bool
}

// Env runs one job on one instance. It implements executors.Env.
type Env struct {
	conn  Conn
	job   *jobs.Job
	opts  Options
	paths executors.Paths
}

// New returns the environment for job on the instance reached through conn.
func New(conn Conn, job *jobs.Job, opts Options) (*Env, error) {
	if opts.Shell == "" {
		opts.Shell = executors.ShellBash
	}
	if err := executors.ValidShell(opts.Shell); err != nil {
		return nil, err
	}
	return &Env{conn: conn, job: job, opts: opts}, nil
}

func q(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// run runs a command and returns its combined output, for the executor's own steps.
func (e *Env) run(ctx context.Context, cmd string, stdin io.Reader) (string, error) {
	var out strings.Builder
	err := e.conn.Run(ctx, connector.RunOptions{Command: cmd, Stdin: stdin, Stdout: &out, Stderr: &out})
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Fields(cmd)[0], err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// projectName is the project's directory under the slot's: the repository's path
// (namespace/project, as GitLab Runner lays builds out) for Git sources, whose
// checkouts stay for later jobs, so that two projects of the same name never share one.
func projectName(job *jobs.Job) string {
	switch {
	case job.Source.HostGitDir != "" && job.Source.Dir != "":
		// `runner exec --git`: named like the copied working tree would be.
		return path.Base(strings.TrimRight(job.Source.Dir, "/"))
	case job.Source.RepoURL != "":
		p := job.Source.RepoURL
		if u, err := url.Parse(p); err == nil && u.Path != "" {
			p = u.Path
		}
		// Clean from the root first: no ".." leads out of the builds directory.
		p = strings.TrimPrefix(path.Clean("/"+strings.TrimSuffix(p, ".git")), "/")
		if p == "" {
			return "project"
		}
		return p
	case job.Source.Dir != "":
		return path.Base(strings.TrimRight(job.Source.Dir, "/"))
	}
	return "project"
}

// Prepare finds the builds directory and puts the source in place.
func (e *Env) Prepare(ctx context.Context, log io.Writer) error {
	if e.debugTrace() {
		fmt.Fprintln(log, gitsource.DebugTraceWarning)
	}
	if len(e.job.Services) > 0 {
		fmt.Fprintf(log, "WARNING: the instance executor does not start services (%d declared); use docker-autoscaler for jobs that need them\n", len(e.job.Services))
	}
	builds := e.opts.BuildsDir
	if builds == "" {
		home, err := e.run(ctx, `printf '%s' "$HOME"`, nil)
		if err != nil {
			return fmt.Errorf("find home directory: %w", err)
		}
		builds = strings.TrimRight(home, "/") + "/builds"
	}
	slotDir := path.Join(builds, strconv.Itoa(e.opts.Slot))
	e.paths = executors.Paths{
		BuildsDir:  builds,
		ProjectDir: path.Join(slotDir, projectName(e.job)),
		TmpDir:     path.Join(slotDir, projectName(e.job)+".tmp"),
	}
	reset := fmt.Sprintf("rm -rf %s %s && mkdir -p %s %s", q(e.paths.ProjectDir), q(e.paths.TmpDir), q(e.paths.ProjectDir), q(e.paths.TmpDir))
	switch e.job.Source.Kind {
	case jobs.SourceLocal:
		return e.copyTree(ctx, reset, log)
	case jobs.SourceGit:
		return e.getSources(ctx, log)
	default:
		if _, err := e.run(ctx, reset, nil); err != nil {
			return fmt.Errorf("create project directory: %w", err)
		}
	}
	return nil
}

// copyTree puts a local working tree in place (`runner exec` without --git). Of the
// Git variables only GIT_STRATEGY none (the project directory as the previous job on
// this slot left it) and empty (an empty one) apply to a copy.
func (e *Env) copyTree(ctx context.Context, reset string, log io.Writer) error {
	plan, err := gitsource.PlanFor(e.job)
	if err != nil {
		return executors.SourcesError(err)
	}
	switch plan.Strategy {
	case gitsource.StrategyNone:
		fmt.Fprintf(log, "Skipping the copy of the working tree (GIT_STRATEGY=none): %s is used as it is\n", e.paths.ProjectDir)
		_, err := e.run(ctx, fmt.Sprintf("rm -rf %[2]s && mkdir -p %[1]s %[2]s", q(e.paths.ProjectDir), q(e.paths.TmpDir)), nil)
		if err != nil {
			return fmt.Errorf("create project directory: %w", err)
		}
		return nil
	case gitsource.StrategyEmpty:
		fmt.Fprintf(log, "Skipping the copy of the working tree and creating an empty build directory (GIT_STRATEGY=empty)\n")
		if _, err := e.run(ctx, reset, nil); err != nil {
			return fmt.Errorf("create project directory: %w", err)
		}
		return nil
	}
	fmt.Fprintf(log, "Copying the working tree %s to %s\n", e.job.Source.Dir, e.paths.ProjectDir)
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(executors.TarDir(pw, e.job.Source.Dir, "")) }()
	_, err = e.run(ctx, reset+" && tar -x -f - -C "+q(e.paths.ProjectDir), pr)
	pr.Close()
	if err != nil {
		return fmt.Errorf("copy working tree: %w", err)
	}
	return nil
}

// getSources runs the job's get-sources script (Git and the config's
// pre/post_get_sources_script) on the instance. A repository on the runner host
// (`runner exec --git`) is shipped first, as a copy of its Git directory in the job's
// temporary directory, and fetched from there over file://: a path on the host means
// nothing on a remote instance.
func (e *Env) getSources(ctx context.Context, log io.Writer) error {
	plan, err := gitsource.PlanFor(e.job)
	if err != nil {
		return executors.SourcesError(err)
	}
	src := e.job.Source
	prefix := fmt.Sprintf("rm -rf %[1]s && mkdir -p %[1]s\n", q(e.paths.TmpDir))
	if src.HostGitDir != "" && plan.Strategy != gitsource.StrategyNone && plan.Strategy != gitsource.StrategyEmpty {
		shipped := path.Join(e.paths.TmpDir, "source.git")
		fmt.Fprintf(log, "Shipping the Git repository %s to %s\n", src.HostGitDir, shipped)
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(executors.TarDir(pw, src.HostGitDir, "")) }()
		// The copy answers requests for any commit, whatever Git protocol the
		// instance's Git speaks: the job fetches its commit by name.
		_, err := e.run(ctx, fmt.Sprintf("rm -rf %[1]s && mkdir -p %[2]s && tar -x -f - -C %[2]s && git --git-dir=%[2]s config uploadpack.allowAnySHA1InWant true",
			q(e.paths.TmpDir), q(shipped)), pr)
		pr.Close()
		if err != nil {
			return fmt.Errorf("ship the Git repository: %w", err)
		}
		src.RepoURL, prefix = "file://"+shipped, ""
	} else if u, err := url.Parse(src.RepoURL); err == nil {
		fmt.Fprintf(log, "Getting sources of %s (%s) into %s with GIT_STRATEGY=%s\n", u.Redacted(), src.Ref, e.paths.ProjectDir, plan.Strategy)
	}
	script := prefix + plan.Script(src, gitsource.Options{Dir: e.paths.ProjectDir, Variables: e.job.Variables.Expanded(),
		PreGetSources: e.opts.PreGetSourcesScript, PostGetSources: e.opts.PostGetSourcesScript})
	// Git's output goes to the job log, as GitLab shows it; it names the URL, which
	// carries no credentials, but a script could echo the token: mask it.
	out := executors.NewMaskWriter(log, []string{src.Token})
	err = e.conn.Run(ctx, connector.RunOptions{Command: "sh -s", Stdin: strings.NewReader(script), Stdout: out, Stderr: out})
	out.Close()
	var exit *connector.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &exit) && exit.Signal == "":
		// The step ran and failed: a ref or repository that is not there, a
		// pre/post_get_sources_script that failed. A new slot would fail the same way.
		return executors.SourcesError(fmt.Errorf("get sources: %w", err))
	}
	return fmt.Errorf("get sources: %w", err)
}

// Exec runs the script with the job's shell; the script arrives on stdin.
func (e *Env) Exec(ctx context.Context, s executors.Script, out io.Writer) (int, error) {
	s.Shell = e.opts.Shell
	text := s.String()
	if e.debugTrace() {
		text = "set -x\n" + text
	}
	err := e.conn.Run(ctx, connector.RunOptions{Command: e.opts.Shell + " -s", Stdin: strings.NewReader(text), Stdout: out, Stderr: out})
	var exit *connector.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit) && exit.Signal == "":
		return exit.ExitCode(), nil
	}
	return -1, err
}

func (e *Env) debugTrace() bool { return !e.opts.DebugTraceDisabled && gitsource.DebugTrace(e.job) }

// Cleanup removes the temporary directory and keeps the project directory: as with
// GitLab Runner, the next job of the project on this slot may reuse it (GIT_STRATEGY
// fetch or none, also for a copied working tree).
func (e *Env) Cleanup(ctx context.Context) error {
	if e.paths.ProjectDir == "" {
		return nil
	}
	_, err := e.run(ctx, "rm -rf "+q(e.paths.TmpDir), nil)
	return err
}

// Pack writes a gzip tar of spec's files in the project directory to archive.
func (e *Env) Pack(ctx context.Context, spec executors.PackSpec, archive, messages io.Writer) error {
	script, err := executors.PackScript(e.paths.ProjectDir, spec)
	if err != nil {
		return err
	}
	if err := e.conn.Run(ctx, connector.RunOptions{Command: script, Stdout: archive, Stderr: messages}); err != nil {
		return fmt.Errorf("pack %s: %w", strings.Join(spec.Paths, " "), err)
	}
	return nil
}

// Unpack extracts a gzip tar into the project directory.
func (e *Env) Unpack(ctx context.Context, r io.Reader) error {
	_, err := e.run(ctx, executors.UnpackScript(e.paths.ProjectDir), r)
	return err
}

// Paths returns the job's directories on the instance.
func (e *Env) Paths() executors.Paths { return e.paths }
