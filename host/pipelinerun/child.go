package pipelinerun

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	pathpkg "path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
)

// ChildSeparator joins a trigger job's name and the name of a job of its child
// pipeline in progress lines and the summary: "deploy › migrate".
const ChildSeparator = " › "

// Children lets a Runner run the child pipelines of trigger jobs.
type Children struct {
	// Options make the child pipelines of the pipeline being run.
	Options pipeline.ChildOptions
	// Prepare readies each job of a child pipeline before it runs, as the caller
	// readied the parent's jobs: its source, and the predefined variables of its
	// pipeline (CI_PIPELINE_SOURCE=parent_pipeline). Nil leaves the jobs as they are.
	Prepare func(j *pipeline.Job, predefined jobs.Variables)
}

// runTrigger runs a trigger job: it makes the child pipeline and runs it on the same
// pool. Without strategy: depend the job passes once the child is made and the child
// runs on while the parent goes on (wg waits for it); with it, the job takes the
// child's status. Either way the child's jobs are in the summary, under the job.
// deps are the artifacts the job gets, where a dynamic child's configuration comes
// from, and dotenv their dotenv variables, which the child gets with the job's own;
// parent is the run the job is in, whose jobs' artifacts the child's jobs may take
// (needs:pipeline:job).
func (r *Runner) runTrigger(ctx context.Context, j *pipeline.Job, res *JobResult, wg *sync.WaitGroup, deps []jobs.Dependency, dotenv jobs.Variables, parent *parentRun) {
	end := func(s State, reason string) {
		if s == StateFailed && j.AllowFailure {
			s = StateAllowed
		}
		res.State, res.Reason = s, reason
		r.report(j.Name, s, reason)
	}
	if r.Children == nil {
		end(StateFailed, "downstream_pipeline_creation_failed: child pipelines are not set up for this run")
		return
	}
	r.report(j.Name, StateRunning, "creating the child pipeline")
	if len(dotenv) > 0 && j.Trigger.ForwardYAML {
		jj, t := *j, *j.Trigger
		t.Variables = slices.Concat(t.Variables, dotenv)
		jj.Trigger = &t
		j = &jj
	}
	o := r.Children.Options
	o.Parent = parent.pipeline
	o.Artifact = func(ctx context.Context, job, path string) ([]byte, error) { return artifactFile(ctx, deps, job, path) }
	ch, err := pipeline.NewChild(ctx, j, o)
	if err != nil {
		end(StateFailed, "downstream_pipeline_creation_failed: "+err.Error())
		return
	}
	if prepare := r.Children.Prepare; prepare != nil {
		for _, cj := range ch.Plan.Jobs {
			prepare(cj, ch.Env.Predefined)
		}
	}
	sub := &Runner{
		Pool: r.Pool, Concurrent: r.Concurrent, Progress: r.Progress, Options: r.Options, Follow: r.Follow, Stops: r.Stops,
		LogDir:   filepath.Join(r.LogDir, strings.TrimSuffix(logName(j.Name), ".log")),
		Children: &Children{Options: ch.Options, Prepare: r.Children.Prepare},
		root:     r.rootRunner(), prefix: r.prefix + j.Name + ChildSeparator, parent: parent,
	}
	run := func() *Summary {
		sum, err := sub.Run(ctx, ch.Plan)
		if err != nil {
			sum = Summary{Jobs: []JobResult{{Name: "(child pipeline)", State: StateFailed, Reason: err.Error()}}}
		}
		for i := range sum.Jobs {
			c := &sum.Jobs[i]
			c.Name = j.Name + ChildSeparator + c.Name
			if c.Parent == "" {
				c.Parent = j.Name
			} else {
				c.Parent = j.Name + ChildSeparator + c.Parent
			}
		}
		return &sum
	}
	if !j.Trigger.Depend {
		// GitLab: the trigger job passes once the child pipeline is created.
		end(StatePassed, fmt.Sprintf("child pipeline %s created (%d jobs)", ch.Pipeline.File, len(ch.Plan.Jobs)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			res.child = run()
		}()
		return
	}
	res.child = run()
	switch {
	case res.child.Passed:
		end(StatePassed, "child pipeline passed")
	case ctx.Err() != nil:
		end(StateCanceled, "pipeline cancelled")
	default:
		end(StateFailed, "child pipeline failed: "+strings.Join(blamed(j.Name, res.child.Jobs), ", "))
	}
}

// parentRun is the run of a parent pipeline as its child pipelines see it.
type parentRun struct {
	pipeline *pipeline.Pipeline
	// results and done are the parent run's: a job's result may be read once its
	// done channel is closed.
	results map[string]*JobResult
	done    map[string]chan struct{}
}

// dependencies returns what a child pipeline's job gets from the parent pipeline's
// jobs its needs:pipeline:job names (those written with artifacts: true): each
// one's archive and dotenv variables, as for the jobs of its own pipeline. A parent
// job that has not ended yet (the trigger job does not wait for it) gives a
// dependency that fails the job with missing_dependency_failure, as the artifacts do
// not exist yet; one that does not run in this run gives nothing, as a skipped job
// of the child's own pipeline would.
func (p *parentRun) dependencies(needs []pipeline.ParentNeed) ([]jobs.Dependency, jobs.Variables) {
	var deps []jobs.Dependency
	var vars jobs.Variables
	for _, n := range needs {
		if !n.Artifacts {
			continue
		}
		name := n.Job
		var ch chan struct{}
		if p != nil {
			ch = p.done[name]
		}
		switch {
		case p != nil && ch == nil:
			continue
		case p == nil || !closed(ch):
			deps = append(deps, jobs.Dependency{Name: name, Open: func(context.Context) (io.ReadCloser, error) {
				return nil, fmt.Errorf("%w: job %s of the parent pipeline has not finished: add it to the needs of the trigger job", jobs.ErrMissingDependency, name)
			}})
			continue
		}
		d, v := dependencies([]string{name}, p.results)
		deps, vars = append(deps, d...), append(vars, v...)
	}
	return deps, vars
}

// blamed names the jobs of trigger job's child pipeline that made it fail (not those
// of its own children: their trigger jobs stand for them).
func blamed(trigger string, js []JobResult) []string {
	var out []string
	for _, c := range js {
		if c.Parent == trigger && (c.State == StateFailed || c.State == StateCanceled) {
			out = append(out, c.Name)
		}
	}
	if len(out) == 0 {
		return []string{"(no job)"}
	}
	return out
}

// artifactFile reads the file path (slash-separated, relative to the project) of
// the artifacts archive of job, one of deps.
func artifactFile(ctx context.Context, deps []jobs.Dependency, job, path string) ([]byte, error) {
	i := slices.IndexFunc(deps, func(d jobs.Dependency) bool { return d.Name == job })
	if i < 0 {
		return nil, fmt.Errorf("the trigger job does not get the artifacts of %s: it must be an earlier job, in needs: if the trigger job has needs:, and keep artifacts", job)
	}
	rc, err := deps[i].Open(ctx)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	want := pathpkg.Clean("/" + path)
	var data []byte
	found := false
	err = jobs.EachArchiveFile(rc, func(h *tar.Header, content io.Reader) error {
		if pathpkg.Clean("/"+h.Name) != want {
			return nil
		}
		found = true
		b, err := io.ReadAll(io.LimitReader(content, pipeline.MaxFileSize+1))
		if err != nil {
			return err
		}
		data = b
		return fs.SkipAll
	})
	switch {
	case err != nil:
		return nil, fmt.Errorf("read the artifacts of %s: %w", job, err)
	case !found:
		return nil, fmt.Errorf("%s is not in the artifacts of %s: %w", path, job, os.ErrNotExist)
	}
	return data, nil
}

// rootRunner is the Runner of the pipeline runner exec was given, whose bounds and
// log stream child pipelines share.
func (r *Runner) rootRunner() *Runner {
	if r.root != nil {
		return r.root
	}
	return r
}
