package pipeline

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ParentNeed is a needs:pipeline:job entry of a child pipeline's job: the job gets the
// artifacts (archive and dotenv report) of job Job of the parent pipeline, whose ID
// Pipeline gives. GitLab takes the ID from a variable the trigger job passes
// (variables: {PARENT_PIPELINE_ID: $CI_PIPELINE_ID}); NewChild checks that it is the
// parent's and that the parent has the job.
type ParentNeed struct {
	// Pipeline is the pipeline ID as written, variables not expanded.
	Pipeline string
	Job      string
	// Artifacts is the entry's artifacts: (true unless written false).
	Artifacts bool

	// path, file and the positions of pipeline: and job: are for messages.
	path              string
	file              string
	pipelineAt, jobAt pos
}

// pos is a position in a file, for a message given after the file is parsed.
type pos struct{ line, col int }

// parseUpstream reads needs: {pipeline: group/project}, GitLab's job that mirrors the
// status of another project's pipeline. A local run cannot wait for that pipeline:
// the job is skipped (see Plan), with a warning.
func parseUpstream(d *diags, name string, m node, path string) string {
	project, errs := "", len(d.errs)
	for _, f := range d.pairs(m) {
		fp := path + "." + f.key.Value
		if f.key.Value != "pipeline" {
			d.errorHint(f.key, fp, "needs: {pipeline: group/project} takes only pipeline; a child pipeline's job takes its parent's artifacts with a list: needs: [{pipeline: $PARENT_PIPELINE_ID, job: name}]", "unknown needs:pipeline keyword %q", f.key.Value)
			continue
		}
		if project = scalar(d, f.value, fp); project != "" {
			d.warnf(f.value, fp, "job %q mirrors the status of the pipeline of %s, which runner exec cannot wait for: it is skipped", name, project)
		}
	}
	if project == "" && len(d.errs) == errs {
		d.errorHint(m, path, "write a list of jobs, or {pipeline: group/project}", "needs as a mapping takes pipeline:")
	}
	return project
}

// checkParentNeeds checks the needs:pipeline:job entries of the jobs of child, made
// with env from a parent that o describes: each names the parent pipeline (its ID,
// through a variable: GitLab refuses the child's own $CI_PIPELINE_ID) and one of its
// jobs.
func checkParentNeeds(child *Pipeline, o ChildOptions, env Env) error {
	parentID, _ := o.Env.Predefined.Get("CI_PIPELINE_ID")
	var parentJobs []string
	if o.Parent != nil {
		for _, j := range o.Parent.Jobs {
			parentJobs = append(parentJobs, j.Name)
		}
	}
	var errs []error
	for _, j := range child.Jobs {
		vs := slices.Concat(env.Predefined, j.Variables)
		lookup := func(name string) (string, bool) { return vs.Get(name) }
		for _, n := range j.ParentNeeds {
			at := func(p pos, key, hint, format string, args ...any) {
				errs = append(errs, Diagnostic{File: n.file, Line: p.line, Col: p.col, Path: n.path + "." + key, Msg: fmt.Sprintf(format, args...), Hint: hint})
			}
			written := strings.TrimSpace(n.Pipeline)
			id := expandVars(written, lookup)
			passID := "pass the parent's ID from the trigger job: variables: {PARENT_PIPELINE_ID: $CI_PIPELINE_ID}, and write $PARENT_PIPELINE_ID"
			switch {
			case written == "$CI_PIPELINE_ID" || written == "${CI_PIPELINE_ID}":
				at(n.pipelineAt, "pipeline", passID, "needs:pipeline is %s, the child pipeline's own ID", written)
			case id == "":
				at(n.pipelineAt, "pipeline", passID, "needs:pipeline %s is empty", written)
			case id != parentID:
				is := "is " + id
				if id != written {
					is = written + " is " + id
				}
				at(n.pipelineAt, "pipeline", "a child pipeline's job can take the artifacts of its parent pipeline's jobs: "+passID,
					"needs:pipeline %s, not the parent pipeline (%s): runner exec gets artifacts from the parent pipeline only", is, parentID)
			}
			if !slices.Contains(parentJobs, n.Job) {
				at(n.jobAt, "job", suggestOr(n.Job, parentJobs), "job %q needs job %q of the parent pipeline, which has no such job", j.Name, n.Job)
			}
		}
	}
	return errors.Join(errs...)
}
