package pipeline

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// Env is what Evaluate decides against: the run's variables and its checkout.
type Env struct {
	// Predefined are the run's predefined variables (CI_COMMIT_BRANCH, …); they have
	// the lowest precedence.
	Predefined jobs.Variables
	// Overrides are the variables given for the run (runner exec --var); like
	// GitLab's pipeline variables they override the file's.
	Overrides jobs.Variables
	// Dir is the checkout where rules:exists looks for files.
	Dir string
	// Changed lists the files (slash-separated, relative to Dir) that changed against
	// compareTo, "" meaning the default base. known is false when that cannot be told
	// (no Git checkout, no base commit): then every changes: condition holds, as in
	// GitLab for a new branch. A nil Changed never knows.
	Changed func(compareTo string) (files []string, known bool, err error)
	// LastCommit returns the last commit that changed path (slash-separated, relative
	// to Dir), for cache:key:files_commits; "" when none did or that cannot be told.
	// A nil LastCommit never knows.
	LastCommit func(path string) string
}

// Evaluation is a pipeline with its workflow, rules, only and except applied.
type Evaluation struct {
	// Pipeline holds the jobs that were added, each with the effect of the rule that
	// added it (when, allow_failure, variables, needs); optional needs of jobs that
	// were not added are dropped.
	Pipeline *Pipeline
	// Name is workflow:name with its variables expanded ("" without one).
	Name string
	// WorkflowRule is the index of the workflow rule that matched, or -1.
	WorkflowRule int
	// Decisions has one entry per job of the file, in file order.
	Decisions []Decision
}

// Decision says whether a job was added to the pipeline and what decided it.
type Decision struct {
	Job   string
	Added bool
	// When is the job's when once its rule applied (for an added job).
	When string
	// By is what decided: "rules", "only", "except", or "" (the job has none of them).
	By string
	// Rule is the index of the rule that matched, -1 when none did or the job has no
	// rules; If is that rule's if in canonical form ("" without one).
	Rule int
	If   string
	// Reason says why, in words.
	Reason string
}

// NoPipelineError is returned when workflow:rules create no pipeline.
type NoPipelineError struct {
	File   string
	Line   int
	Reason string
}

func (e *NoPipelineError) Error() string {
	return fmt.Sprintf("%s:%d: workflow: no pipeline is created: %s", e.File, e.Line, e.Reason)
}

// Decision returns the decision for the named job, or nil.
func (ev *Evaluation) Decision(name string) *Decision {
	for i := range ev.Decisions {
		if ev.Decisions[i].Job == name {
			return &ev.Decisions[i]
		}
	}
	return nil
}

// evaluator holds what the rules of one run share: the checkout's file list and the
// diffs, each computed once.
type evaluator struct {
	env     Env
	file    string
	files   []string // the checkout's files, when listed
	listed  bool
	changed map[string]changeSet
	blobs   map[string]string // Git blob IDs of the checkout's files, by name
	commits map[string]string // the last commits that changed paths, by path
}

type changeSet struct {
	files []string
	known bool
}

// Evaluate applies workflow:rules, then each job's rules, only and except, as GitLab
// does when it creates a pipeline. Jobs that are not added are left out of the
// returned pipeline; a job that needs one of them is an error unless the need is
// optional. When workflow:rules create no pipeline the error is a *NoPipelineError.
// The added jobs' caches are resolved for the run: key:files from env.Dir, a policy
// written as a variable from the job's variables.
func (p *Pipeline) Evaluate(env Env) (*Evaluation, error) {
	e := &evaluator{env: env, file: p.File, changed: map[string]changeSet{}}
	ev := &Evaluation{WorkflowRule: -1}
	var wfVars jobs.Variables
	if w := p.Workflow; w != nil {
		if w.Rules != nil {
			lookup := e.lookup(p.Variables)
			r, err := e.firstMatch(w.Rules, lookup)
			if err != nil {
				return nil, fmt.Errorf("%s: workflow: %w", p.File, err)
			}
			switch {
			case r == nil:
				return nil, &NoPipelineError{File: p.File, Line: w.Line, Reason: fmt.Sprintf("none of the %d workflow rules matched", len(w.Rules))}
			case r.When == WhenNever:
				return nil, &NoPipelineError{File: p.File, Line: r.Line, Reason: fmt.Sprintf("workflow:rules[%d]%s has when: never", r.Index, ifText(r))}
			}
			ev.WorkflowRule, wfVars = r.Index, r.Variables
		}
		if w.Name != "" {
			ev.Name = expandVars(w.Name, e.lookup(slices.Concat(p.Variables, wfVars)))
		}
	}
	out := &Pipeline{File: p.File, Stages: p.Stages, Variables: slices.Concat(p.Variables, wfVars), Workflow: p.Workflow, Warnings: p.Warnings}
	added := map[string]*Job{}
	for _, j := range p.Jobs {
		vars := slices.Concat(j.Variables[:j.nGlobal], j.inherit.variables.inherited(wfVars), j.Variables[j.nGlobal:])
		dec, c, err := e.decide(j, vars)
		if err != nil {
			return nil, err
		}
		ev.Decisions = append(ev.Decisions, dec)
		if c != nil {
			out.Jobs = append(out.Jobs, c)
			added[c.Name] = c
		}
	}
	// A need of a job that was not added is an error, as in GitLab, unless optional.
	var errs []error
	for _, j := range out.Jobs {
		if j.Needs == nil {
			continue
		}
		var needs []string
		var opt []bool
		var at []node
		for i, n := range j.Needs {
			if added[n] != nil {
				needs, opt, at = append(needs, n), append(opt, optionalAt(j.needOpt, i)), append(at, nodeAt(j.needAt, i))
				continue
			}
			if optionalAt(j.needOpt, i) {
				continue
			}
			why := "it has no rules that add it"
			if d := ev.Decision(n); d != nil {
				why = d.Reason
			}
			line := j.Line
			if a := nodeAt(j.needAt, i); a != nil {
				line = a.Line
			}
			errs = append(errs, Diagnostic{File: p.File, Line: line, Path: j.Name + ".needs",
				Msg:  fmt.Sprintf("job %q needs %q, which is not added to the pipeline (%s)", j.Name, n, why),
				Hint: "add optional: true to the need, or give both jobs rules that agree"})
		}
		j.Needs, j.needOpt, j.needAt = append([]string{}, needs...), opt, at
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	ev.Pipeline = out
	return ev, nil
}

func optionalAt(opt []bool, i int) bool { return i < len(opt) && opt[i] }

func nodeAt(ns []node, i int) node {
	if i < len(ns) {
		return ns[i]
	}
	return nil
}

// ifText is " (if: …)" for a rule with an if, for messages.
func ifText(r *Rule) string {
	if r.If == nil {
		return ""
	}
	return " (if: " + r.If.String() + ")"
}

// lookup resolves a variable for the rules of a job whose variables are vars: the
// run's overrides, then vars (later entries winning), then the predefined ones.
func (e *evaluator) lookup(vars jobs.Variables) func(string) (string, bool) {
	return func(name string) (string, bool) {
		for _, vs := range []jobs.Variables{e.env.Overrides, vars, e.env.Predefined} {
			if v, ok := vs.Get(name); ok {
				return v, true
			}
		}
		return "", false
	}
}

// decide evaluates one job; c is the job as added, nil when it is not.
func (e *evaluator) decide(j *Job, vars jobs.Variables) (Decision, *Job, error) {
	dec := Decision{Job: j.Name, Rule: -1, When: j.When}
	var envVars jobs.Variables
	if j.Environment != nil {
		// GitLab's CI_ENVIRONMENT_* come before the job's own variables (they are
		// predefined), and its rules can use them.
		envVars = environmentVariables(j.Environment, e.lookup(vars))
		vars = slices.Concat(envVars, vars)
	}
	lookup := e.lookup(vars)
	c := *j
	c.Variables = vars
	switch {
	case j.Rules != nil:
		dec.By = "rules"
		r, err := e.firstMatch(j.Rules, lookup)
		if err != nil {
			return dec, nil, fmt.Errorf("%s: %s.rules: %w", e.file, j.Name, err)
		}
		if r == nil {
			dec.Reason = fmt.Sprintf("none of its %d rules matched", len(j.Rules))
			return dec, nil, nil
		}
		dec.Rule = r.Index
		if r.If != nil {
			dec.If = r.If.String()
		}
		if r.When != "" {
			c.When = r.When
		}
		dec.When = c.When
		if c.When == WhenNever {
			dec.Reason = fmt.Sprintf("rules[%d]%s has when: never", r.Index, ifText(r))
			return dec, nil, nil
		}
		dec.Added = true
		dec.Reason = fmt.Sprintf("rules[%d]%s matched", r.Index, ifText(r))
		if r.AllowFailure != nil {
			c.AllowFailure = *r.AllowFailure
		}
		c.Variables = slices.Concat(vars, r.Variables)
		if r.NeedsSet {
			c.Needs, c.needOpt, c.needAt, c.ParentNeeds = r.Needs, r.needOpt, r.needAt, r.ParentNeeds
		}
	case j.Only != nil || j.Except != nil:
		if j.Only != nil {
			ok, why, err := e.refFilter(j.Only, lookup, true)
			if err != nil {
				return dec, nil, fmt.Errorf("%s: %s.only: %w", e.file, j.Name, err)
			}
			if !ok {
				dec.By, dec.Reason = "only", "only: "+why
				return dec, nil, nil
			}
		}
		if j.Except != nil {
			ok, why, err := e.refFilter(j.Except, lookup, false)
			if err != nil {
				return dec, nil, fmt.Errorf("%s: %s.except: %w", e.file, j.Name, err)
			}
			if ok {
				dec.By, dec.Reason = "except", "except: "+why
				return dec, nil, nil
			}
		}
		dec.By, dec.Added, dec.Reason = "only", true, "only/except allow it"
		if j.Only == nil {
			dec.By = "except"
		}
	default:
		dec.Added, dec.Reason = true, "no rules"
	}
	if c.When == WhenNever {
		dec.Added, dec.Reason = false, "when: never"
		return dec, nil, nil
	}
	if j.Trigger != nil {
		t := *j.Trigger
		t.Variables = e.triggerVariables(c.Variables[len(envVars):])
		c.Trigger = &t
	}
	c.Variables = append(c.Variables, e.env.Overrides...)
	caches, err := e.resolveCaches(j, e.lookup(c.Variables))
	if err != nil {
		return dec, nil, err
	}
	c.Caches = caches
	return dec, &c, nil
}

// triggerVariables are a trigger job's variables as its child pipeline gets them
// (forward:yaml_variables): expanded, as GitLab expands them, with the predefined
// variables, the run's and the earlier ones.
func (e *evaluator) triggerVariables(yaml jobs.Variables) jobs.Variables {
	all := slices.Concat(e.env.Predefined, e.env.Overrides, yaml).Expanded()
	return all[len(all)-len(yaml):].Effective()
}

// firstMatch returns the first rule whose conditions all hold, or nil.
func (e *evaluator) firstMatch(rules []Rule, lookup func(string) (string, bool)) (*Rule, error) {
	for i := range rules {
		r := &rules[i]
		ok, err := e.matches(r, lookup)
		if err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", r.Index, err)
		}
		if ok {
			return r, nil
		}
	}
	return nil, nil
}

func (e *evaluator) matches(r *Rule, lookup func(string) (string, bool)) (bool, error) {
	if r.If != nil {
		if ok, err := r.If.Eval(lookup); err != nil || !ok {
			return false, err
		}
	}
	if r.Changes != nil {
		if ok, err := e.changes(r.Changes, lookup); err != nil || !ok {
			return false, err
		}
	}
	if r.Exists != nil && !e.exists(r.Exists, lookup) {
		return false, nil
	}
	return true, nil
}

// changes reports whether a file of the diff matches one of c's paths.
func (e *evaluator) changes(c *Changes, lookup func(string) (string, bool)) (bool, error) {
	base := expandVars(c.CompareTo, lookup)
	cs, ok := e.changed[base]
	if !ok {
		if e.env.Changed != nil {
			files, known, err := e.env.Changed(base)
			if err != nil {
				return false, fmt.Errorf("changes: %w", err)
			}
			cs = changeSet{files, known}
		}
		e.changed[base] = cs
	}
	if !cs.known {
		return true, nil
	}
	return anyMatch(c.Paths, cs.files, lookup), nil
}

// exists reports whether a file of the checkout matches one of the globs.
func (e *evaluator) exists(globs []string, lookup func(string) (string, bool)) bool {
	return anyMatch(globs, e.checkoutFiles(), lookup)
}

// checkoutFiles lists the checkout's files once per evaluation.
func (e *evaluator) checkoutFiles() []string {
	if !e.listed {
		e.listed = true
		if e.env.Dir != "" {
			e.files = listFiles(e.env.Dir)
		}
	}
	return e.files
}

func anyMatch(globs, files []string, lookup func(string) (string, bool)) bool {
	for _, g := range globs {
		g = strings.TrimPrefix(expandVars(g, lookup), "/")
		for _, f := range files {
			if globMatch(g, f) {
				return true
			}
		}
	}
	return false
}

// listFiles lists the files under dir, slash-separated and relative to it, without
// .git directories.
func listFiles(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable parts of the checkout exist for no one
		}
		if de.IsDir() {
			if de.Name() == ".git" {
				return filepath.SkipDir
			}
			return nil
		}
		if rel, err := filepath.Rel(dir, p); err == nil {
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	return out
}

// globMatch reports whether path, slash-separated and relative to the project,
// matches a changes/exists glob. GitLab matches them with Ruby's File.fnmatch
// (FNM_PATHNAME, FNM_DOTMATCH, FNM_EXTGLOB): "**/" is any run of directories or none,
// "*" any characters but "/", "?" one such character, "[…]" a class, "{a,b}"
// alternatives, and dot files are matched. The doublestar library reads globs the
// same way; a malformed glob matches nothing.
func globMatch(pattern, path string) bool {
	ok, err := doublestar.Match(pattern, path)
	return ok && err == nil
}

// expandVars expands $NAME and ${NAME} with lookup; unknown variables become "".
func expandVars(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	return os.Expand(s, func(name string) string {
		v, _ := lookup(name)
		return v
	})
}

// refFilter evaluates only: (all conditions must hold) or except: (any excludes).
// It returns whether the filter is satisfied in that sense and which condition
// decided.
func (e *evaluator) refFilter(f *RefFilter, lookup func(string) (string, bool), only bool) (bool, string, error) {
	type cond struct {
		name string
		ok   bool
	}
	var conds []cond
	if f.Refs != nil {
		conds = append(conds, cond{"refs", refsMatch(f.Refs, lookup)})
	}
	if f.Variables != nil {
		ok := false
		for _, x := range f.Variables {
			if v, _ := x.Eval(lookup); v {
				ok = true
				break
			}
		}
		conds = append(conds, cond{"variables", ok})
	}
	if f.Changes != nil {
		ok, err := e.changes(f.Changes, lookup)
		if err != nil {
			return false, "", err
		}
		conds = append(conds, cond{"changes", ok})
	}
	if f.Kubernetes != "" {
		conds = append(conds, cond{"kubernetes", false})
	}
	for _, c := range conds {
		if only && !c.ok {
			return false, c.name + " did not match", nil
		}
		if !only && c.ok {
			return true, c.name + " matched", nil
		}
	}
	if only {
		return true, "all matched", nil
	}
	return false, "nothing matched", nil
}

// refSources maps only/except keywords to the pipeline sources they stand for.
var refSources = map[string]string{
	"api": "api", "chat": "chat", "external": "external", "external_pull_requests": "external_pull_request_event",
	"merge_requests": "merge_request_event", "pipelines": "pipeline", "pushes": "push", "schedules": "schedule",
	"triggers": "trigger", "web": "web",
}

// refsMatch reports whether one of refs matches the run's ref or source.
func refsMatch(refs []string, lookup func(string) (string, bool)) bool {
	ref, _ := lookup("CI_COMMIT_REF_NAME")
	source, _ := lookup("CI_PIPELINE_SOURCE")
	for _, r := range refs {
		// name@project/path restricts to a project; a local run is that project.
		r, _ = splitRefProject(r)
		switch {
		case r == "branches":
			if _, ok := lookup("CI_COMMIT_BRANCH"); ok {
				return true
			}
		case r == "tags":
			if _, ok := lookup("CI_COMMIT_TAG"); ok {
				return true
			}
		case refSources[r] != "":
			if source == refSources[r] || (r == "pipelines" && source == "parent_pipeline") {
				return true
			}
		case strings.HasPrefix(r, "/"):
			if re, err := refPattern(r); err == nil && re.MatchString(ref) {
				return true
			}
		default:
			if r == ref {
				return true
			}
		}
	}
	return false
}

// splitRefProject splits an only/except ref into its pattern and the project path
// after the first @, as GitLab does (pattern.split('@', 2)), a /regex/flags pattern
// included: "/.*/@group/proj" is the regex /.*/ in the project group/proj. An @
// inside a regex thus ends the pattern in GitLab too. A ref starting with @ keeps it.
func splitRefProject(r string) (pattern, project string) {
	if i := strings.IndexByte(r, '@'); i > 0 {
		return r[:i], r[i+1:]
	}
	return r, ""
}

// parseWorkflow reads the top-level workflow: keyword.
func parseWorkflow(d *diags, n node) *Workflow {
	m := mapping(d, n, "workflow")
	if m == nil {
		return nil
	}
	w := &Workflow{Line: m.Line}
	for _, kv := range d.pairs(m) {
		p := "workflow." + kv.key.Value
		switch kv.key.Value {
		case "name":
			w.Name = scalar(d, kv.value, p)
		case "rules":
			w.Rules = parseRules(d, kv.value, p, workflowRules)
			if w.Rules == nil {
				w.Rules = []Rule{}
			}
		case "auto_cancel":
			d.warnf(kv.key, p, "not supported by runner exec; ignored")
		default:
			d.errorHint(kv.key, p, "allowed: name, rules, auto_cancel", "unknown workflow keyword %q", kv.key.Value)
		}
	}
	if resolve(n).Kind != yaml.MappingNode {
		return nil
	}
	return w
}
