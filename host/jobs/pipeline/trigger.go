package pipeline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// GitLab's limits on child pipelines.
const (
	// MaxChildDepth is how deeply child pipelines nest: a pipeline's children may
	// have children, which may not (GitLab's reached_max_descendant_pipelines_depth).
	MaxChildDepth = 2
	// MaxTriggerIncludes bounds the entries of trigger:include.
	MaxTriggerIncludes = 3
)

// Trigger is a job's trigger: a child pipeline made of files of this project (or of
// an earlier job's artifacts), or a pipeline of another project.
type Trigger struct {
	// Include are the child pipeline's files, as written; nil for a multi-project
	// trigger.
	Include []TriggerInclude
	// Project is the downstream project of a multi-project trigger ("" for a child
	// pipeline); Branch its branch.
	Project, Branch string
	// Depend is strategy: depend: the trigger job takes the child pipeline's status
	// instead of passing once the child is created.
	Depend bool
	// ForwardYAML (forward:yaml_variables, default true) passes the trigger job's
	// variables to the child; ForwardPipeline (forward:pipeline_variables, default
	// false) passes the run's pipeline variables (runner exec --var).
	ForwardYAML, ForwardPipeline bool
	// Variables are the trigger job's variables, expanded, as the child gets them
	// with ForwardYAML; Evaluate sets them.
	Variables jobs.Variables

	// include is trigger:include as written and file the file it is written in, to
	// load the child with positions in messages.
	include node
	file    string
}

// TriggerInclude is one entry of trigger:include: a file of this project (Local), a
// file of an earlier job's artifacts (Artifact of Job), or one GitLab serves
// (Project, Template, Component, Remote: read as include: reads them).
type TriggerInclude struct {
	Local, Artifact, Job, Project, File, Template, Component, Remote string
}

// String names the entry as its include: would.
func (ti TriggerInclude) String() string {
	switch {
	case ti.Local != "":
		return ti.Local
	case ti.Artifact != "":
		return ti.Artifact + " (artifact of " + ti.Job + ")"
	case ti.Project != "":
		return ti.Project + ":" + ti.File
	case ti.Template != "":
		return "template " + ti.Template
	case ti.Component != "":
		return "component " + ti.Component
	}
	return ti.Remote
}

// triggerJobKeys are the keywords a trigger job takes, as GitLab's bridge jobs.
var triggerJobKeys = []string{"trigger", "stage", "extends", "variables", "needs", "rules", "only", "except",
	"when", "allow_failure", "inherit", "resource_group", "environment", "parallel"}

// parseTrigger reads trigger: a project path, or a mapping of include, project,
// branch, strategy and forward.
func parseTrigger(d *diags, n node, path string) *Trigger {
	n = resolve(n)
	t := &Trigger{ForwardYAML: true, file: d.fileOf(n)}
	if n.Kind == yaml.ScalarNode {
		t.Project = scalar(d, n, path)
		return t
	}
	m := mapping(d, n, path)
	if m == nil {
		return nil
	}
	errs := len(d.errs)
	for _, kv := range d.pairs(m) {
		p := path + "." + kv.key.Value
		switch kv.key.Value {
		case "include":
			t.include = kv.value
			t.Include = parseTriggerInclude(d, kv.value, p)
		case "project":
			t.Project = scalar(d, kv.value, p)
		case "branch":
			t.Branch = scalar(d, kv.value, p)
		case "strategy":
			if v := scalar(d, kv.value, p); v != "depend" {
				d.errorHint(kv.value, p, "the strategy is depend (or leave it out)", "unknown trigger strategy %q", v)
			}
			t.Depend = true
		case "forward":
			fm := mapping(d, kv.value, p)
			if fm == nil {
				continue
			}
			for _, f := range d.pairs(fm) {
				fp := p + "." + f.key.Value
				b, err := strconv.ParseBool(scalar(d, f.value, fp))
				if err != nil {
					d.errorf(f.value, fp, "expected true or false")
				}
				switch f.key.Value {
				case "yaml_variables":
					t.ForwardYAML = b
				case "pipeline_variables":
					t.ForwardPipeline = b
				default:
					d.errorHint(f.key, fp, "allowed: yaml_variables, pipeline_variables", "unknown trigger:forward keyword %q", f.key.Value)
				}
			}
		default:
			d.errorHint(kv.key, p, suggestOr(kv.key.Value, []string{"include", "project", "branch", "strategy", "forward"}), "unknown trigger keyword %q", kv.key.Value)
		}
	}
	switch {
	case t.include != nil && t.Project != "":
		d.errorHint(n, path, "a trigger runs a child pipeline (include) or another project's pipeline (project), not both", "trigger has both include and project")
	case t.include == nil && t.Project == "" && len(d.errs) == errs:
		d.errorHint(n, path, "add include: with the child pipeline's file, or project:", "trigger has neither include nor project")
	case t.Branch != "" && t.Project == "":
		d.errorHint(n, path+".branch", "branch goes with project:; a child pipeline runs on the parent's commit", "trigger:branch without project")
	}
	return t
}

// parseTriggerInclude checks trigger:include: a file name, or a list of at most
// MaxTriggerIncludes files and mappings. The files themselves are read when the child
// pipeline is made.
func parseTriggerInclude(d *diags, n node, path string) []TriggerInclude {
	n = resolve(n)
	items := []node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
		if len(items) > MaxTriggerIncludes {
			d.errorHint(n, path, "merge the files, or include them from one file", "trigger:include has %d entries; GitLab allows %d", len(items), MaxTriggerIncludes)
			return nil
		}
		if len(items) == 0 {
			d.errorf(n, path, "trigger:include is empty")
			return nil
		}
	}
	var out []TriggerInclude
	for i, it := range items {
		p := path
		if n.Kind == yaml.SequenceNode {
			p = fmt.Sprintf("%s[%d]", path, i)
		}
		it = resolve(it)
		if it.Kind == yaml.ScalarNode {
			out = append(out, TriggerInclude{Local: scalar(d, it, p)})
			continue
		}
		m := mapping(d, it, p)
		if m == nil {
			continue
		}
		var ti TriggerInclude
		for _, f := range d.pairs(m) {
			fp := p + "." + f.key.Value
			switch f.key.Value {
			case "local":
				ti.Local = scalar(d, f.value, fp)
			case "artifact":
				ti.Artifact = scalar(d, f.value, fp)
			case "job":
				ti.Job = scalar(d, f.value, fp)
			case "project":
				ti.Project = scalar(d, f.value, fp)
			case "file":
				if fs := script(d, f.value, fp); len(fs) > 0 {
					ti.File = strings.Join(fs, ", ")
				}
			case "template":
				ti.Template = scalar(d, f.value, fp)
			case "component":
				ti.Component = scalar(d, f.value, fp)
			case "remote":
				ti.Remote = scalar(d, f.value, fp)
			case "ref", "inputs":
			default:
				d.errorHint(f.key, fp, "allowed: local, artifact (with job), project (with file, ref), template, component, remote, inputs", "unknown trigger:include keyword %q", f.key.Value)
			}
		}
		if (ti.Artifact == "") != (ti.Job == "") {
			d.errorHint(it, p, "a dynamic child pipeline names the file (artifact:) and the job that made it (job:)", "trigger:include needs artifact and job together")
		}
		out = append(out, ti)
	}
	return out
}

// checkTriggerJob checks what a trigger job may have: GitLab's bridge jobs take
// only triggerJobKeys (no script: the child pipeline does the work).
func checkTriggerJob(d *diags, name string, m *mappingNode) {
	for _, e := range m.entries {
		k := e.key.Value
		if slices.Contains(triggerJobKeys, k) {
			continue
		}
		if k == "script" || k == "before_script" || k == "after_script" || k == "run" {
			d.errorHint(e.key, name+"."+k, "move the commands into a job of the child pipeline, or drop trigger:",
				"a trigger job cannot have %s (GitLab: config contains unknown keys: %s)", k, k)
			continue
		}
		d.errorHint(e.key, name+"."+k, "allowed: "+strings.Join(triggerJobKeys, ", "), "a trigger job cannot have %s", k)
	}
}

// ChildOptions say how to make the child pipelines of a pipeline's trigger jobs.
type ChildOptions struct {
	// Load are the options the parent pipeline was loaded with: its directory, the
	// checkouts of include:project, the HTTP client of include:remote.
	Load Options
	// Env is the parent pipeline's Env.
	Env Env
	// Parent is the parent pipeline as evaluated: the jobs that needs:pipeline:job
	// of the child's jobs may name.
	Parent *Pipeline
	// Depth is the parent's depth: 0 for the pipeline runner exec was given, 1 for a
	// child pipeline.
	Depth int
	// Artifact returns a file of the artifacts an earlier job of the parent made, for
	// trigger:include:artifact; nil when there are none (a dry run).
	Artifact func(ctx context.Context, job, path string) ([]byte, error)
	// PipelineIDs, if set, numbers each child pipeline (CI_PIPELINE_ID and
	// CI_PIPELINE_IID), as GitLab gives a child its own; nil keeps the parent's (a
	// dry run takes no numbers).
	PipelineIDs func() (id, iid int)
}

// Child is the child pipeline of a trigger job, evaluated and planned.
type Child struct {
	// Pipeline is the child as parsed; Evaluation and Plan what runs.
	Pipeline   *Pipeline
	Evaluation *Evaluation
	Plan       *Plan
	// Env is what the child was evaluated with: the parent's checkout,
	// CI_PIPELINE_SOURCE=parent_pipeline and the variables the trigger passes.
	Env Env
	// Options make the child's own children.
	Options ChildOptions
}

// ErrChildDepth is the error for a trigger job of a pipeline that is nested as deeply
// as GitLab allows.
var ErrChildDepth = fmt.Errorf("child pipelines nest at most %d levels deep (GitLab's reached_max_descendant_pipelines_depth)", MaxChildDepth)

// NewChild makes the child pipeline of trigger job j as GitLab does when the job
// runs: its files are loaded as include: would load them, then its workflow and rules
// are evaluated with CI_PIPELINE_SOURCE=parent_pipeline and the variables the trigger
// passes (forward: yaml_variables, pipeline_variables) as pipeline variables, and it
// is planned. A child whose workflow creates no pipeline gives a *NoPipelineError;
// one with no job to run is an error too, as GitLab fails the trigger job then.
func NewChild(ctx context.Context, j *Job, o ChildOptions) (*Child, error) {
	t := j.Trigger
	switch {
	case t == nil:
		return nil, fmt.Errorf("job %q has no trigger", j.Name)
	case t.Project != "":
		return nil, fmt.Errorf("job %q triggers a pipeline of project %s, which runner exec does not run", j.Name, t.Project)
	case o.Depth+1 > MaxChildDepth:
		return nil, ErrChildDepth
	}
	env := o.Env
	env.Predefined = slices.Clone(o.Env.Predefined)
	setVar(&env.Predefined, "CI_PIPELINE_SOURCE", "parent_pipeline")
	if o.PipelineIDs != nil {
		id, iid := o.PipelineIDs()
		setVar(&env.Predefined, "CI_PIPELINE_ID", strconv.Itoa(id))
		setVar(&env.Predefined, "CI_PIPELINE_IID", strconv.Itoa(iid))
	}
	env.Overrides = nil
	if t.ForwardYAML {
		env.Overrides = append(env.Overrides, t.Variables...)
	}
	if t.ForwardPipeline {
		env.Overrides = append(env.Overrides, o.Env.Overrides...)
	}
	p, err := loadChild(ctx, j, o, env)
	if err != nil {
		return nil, err
	}
	ev, err := p.Evaluate(env)
	if err != nil {
		return &Child{Pipeline: p, Env: env}, err
	}
	if err := checkParentNeeds(ev.Pipeline, o, env); err != nil {
		return &Child{Pipeline: p, Evaluation: ev, Env: env}, err
	}
	plan, err := ev.Pipeline.Plan()
	if err != nil {
		return &Child{Pipeline: p, Evaluation: ev, Env: env}, err
	}
	c := &Child{Pipeline: p, Evaluation: ev, Plan: plan, Env: env, Options: ChildOptions{Load: o.Load, Env: env, Parent: ev.Pipeline, Depth: o.Depth + 1, Artifact: o.Artifact, PipelineIDs: o.PipelineIDs}}
	if len(ev.Pipeline.Jobs) == 0 {
		return c, fmt.Errorf("%s: the child pipeline has no jobs: its rules add none (GitLab fails the trigger job: downstream pipeline can not be created)", p.File)
	}
	return c, nil
}

// setVar sets name in vs, replacing every entry of it.
func setVar(vs *jobs.Variables, name, value string) {
	*vs = slices.DeleteFunc(*vs, func(v jobs.Variable) bool { return v.Key == name })
	*vs = append(*vs, jobs.Variable{Key: name, Value: value})
}

// loadChild reads the child pipeline's files: trigger:include as include: reads it,
// with the entries' positions in messages, and artifact: entries read through
// o.Artifact. The includes' rules decide with the child's env.
func loadChild(ctx context.Context, j *Job, o ChildOptions, env Env) (p *Pipeline, err error) {
	t := j.Trigger
	d := &diags{file: t.file, files: map[node]string{}}
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(budgetExceeded); !ok {
				panic(r)
			}
			d.budgetError()
			p, err = nil, d.err()
		}
	}()
	lo := o.Load
	if lo.Dir == "" {
		lo.Dir = "."
	}
	lo.Inputs = nil
	lo.Env = &env
	l := &loader{ctx: ctx, d: d, o: lo, client: lo.HTTPClient, child: &childLoad{job: j.Name, artifact: o.Artifact}}
	src := source{name: t.file, key: "trigger:" + j.Name, dir: lo.Dir}
	var merged node
	ok := true
	var names []string
	for _, f := range l.includes(src, t.include, []source{src}) {
		if f == nil {
			ok = false
			continue
		}
		names = append(names, d.fileOf(resolve(f)))
		merged = d.deepMerge(merged, f)
	}
	if !ok || merged == nil {
		if len(d.errs) == 0 {
			d.errorf(t.include, j.Name+".trigger.include", "the child pipeline has no file: every include was left out by its rules")
		}
		return nil, d.err()
	}
	if !resolveReferences(d, merged) {
		return nil, d.err()
	}
	p, err = parse(d, childName(j.Name, names), merged)
	if err != nil {
		return nil, err
	}
	p.Depth = o.Depth + 1
	return p, nil
}

// childName is how messages and the dry run name a child pipeline: its files.
func childName(job string, files []string) string {
	files = slices.Compact(files)
	if len(files) == 0 {
		return job + " (child pipeline)"
	}
	return strings.Join(files, " + ")
}

// childLoad is what the loader of a child pipeline needs besides include:'s.
type childLoad struct {
	job      string
	artifact func(ctx context.Context, job, path string) ([]byte, error)
}

// errNoArtifacts is the error for a dynamic child pipeline made where no job's
// artifacts can be had.
var errNoArtifacts = errors.New("dynamic child pipelines need the artifacts of the job that generates the configuration, which exist only while runner exec runs the pipeline (not in --dry-run)")

// artifactFile reads a trigger:include:artifact file.
func (l *loader) artifactFile(src source, chain []source, p string, at node, fields map[string]node) node {
	d := l.d
	name := scalar(d, fields["artifact"], p+".artifact")
	if fields["job"] == nil {
		d.errorHint(at, p, "name the job that made the file with job:", "include:artifact needs job:")
		return nil
	}
	job := scalar(d, fields["job"], p+".job")
	if name == "" || job == "" {
		return nil
	}
	if l.child.artifact == nil {
		d.errorHint(resolve(fields["artifact"]), p+".artifact", "the job "+job+" must run first: use runner exec without --dry-run", "include:artifact %s: %v", name, errNoArtifacts)
		return nil
	}
	data, err := l.child.artifact(l.ctx, job, name)
	if err != nil {
		hint := "make " + job + " an earlier job (needs: or an earlier stage) that keeps " + name + " in its artifacts:paths"
		if errors.Is(err, os.ErrNotExist) {
			hint = "check that " + job + " writes " + name + " and lists it in artifacts:paths"
		}
		d.errorHint(resolve(fields["artifact"]), p+".artifact", hint, "include:artifact %s of job %s: %v", name, job, err)
		return nil
	}
	s := source{name: name + " (artifact of " + job + ")", key: "artifact:" + job + ":" + name, dir: src.dir, project: src.project, at: resolve(fields["artifact"])}
	return l.nested(s, data, nil, chain, p)
}
