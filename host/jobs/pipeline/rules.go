package pipeline

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline/expr"
)

// Rule is one entry of a job's or the workflow's rules:. A rule matches when all of
// its conditions (if, changes, exists) hold; a rule without conditions always matches.
type Rule struct {
	// Index is the rule's position in the list, from 0.
	Index int
	// Line is where the rule is written, for messages.
	Line int
	// If is the parsed rules:if, nil when the rule has none.
	If *expr.Expr
	// Changes is rules:changes, nil when the rule has none.
	Changes *Changes
	// Exists are rules:exists globs, nil when the rule has none.
	Exists []string
	// When is the rule's when; "" means the job's own (on_success by default).
	When string
	// AllowFailure overrides the job's allow_failure when set.
	AllowFailure *bool
	// Variables are added to the job's (and override them) when the rule matches.
	Variables jobs.Variables
	// Needs and ParentNeeds replace the job's when NeedsSet.
	Needs       []string
	ParentNeeds []ParentNeed
	NeedsSet    bool
	needOpt     []bool
	needAt      []node
}

// Changes is a rules:changes or only/except:changes condition: true when a file of
// the diff matches one of Paths.
type Changes struct {
	Paths []string
	// CompareTo is the ref to diff against; "" means the default base (see
	// docs/gitlab-ci-yml.md, "rules:changes").
	CompareTo string
}

// RefFilter is a job's only: or except: in any of its forms. Each non-empty part is a
// condition; only: needs all of them, except: excludes on any.
type RefFilter struct {
	Line int
	// Refs are branch or tag names, /regex/ patterns, or keywords (branches, tags,
	// merge_requests, pushes, web, schedules, api, triggers, pipelines, external,
	// chat, external_pull_requests).
	Refs []string
	// Variables are expressions; one that is true satisfies the condition.
	Variables []*expr.Expr
	Changes   *Changes
	// Kubernetes is "active" when set; runner exec has no Kubernetes integration, so it
	// never holds.
	Kubernetes string
}

// Workflow is the top-level workflow: keyword.
type Workflow struct {
	Line int
	// Name is workflow:name, variables not yet expanded.
	Name  string
	Rules []Rule
}

// ruleKind says whose rules are read: GitLab allows each its own keywords.
type ruleKind int

const (
	jobRules      ruleKind = iota
	workflowRules          // if, changes, exists, when (always or never), variables
	includeRules           // if, changes, exists, when (always or never)
)

// parseRules reads a rules: list: a job's, the workflow's or an include's, each with
// the keywords GitLab allows there.
func parseRules(d *diags, n node, path string, kind ruleKind) []Rule {
	workflow := kind != jobRules
	items := flattenRules(d, n, path, 0)
	out := make([]Rule, 0, len(items))
	for i, it := range items {
		p := fmt.Sprintf("%s[%d]", path, i)
		m := mapping(d, it, p)
		if m == nil {
			continue
		}
		r := Rule{Index: i, Line: m.Line}
		for _, f := range d.pairs(m) {
			fp := p + "." + f.key.Value
			switch f.key.Value {
			case "if":
				r.If = parseIf(d, f.value, fp)
			case "changes":
				r.Changes = parseChanges(d, f.value, fp)
			case "exists":
				r.Exists = parseExists(d, f.value, fp)
			case "when":
				w := scalar(d, f.value, fp)
				allowed := []string{WhenOnSuccess, WhenOnFailure, WhenAlways, WhenManual, WhenNever, "delayed"}
				hint := "use on_success, on_failure, always, manual, delayed or never"
				if workflow {
					allowed, hint = []string{WhenAlways, WhenNever}, kind.String()+" rules take always or never"
				}
				switch {
				case !slices.Contains(allowed, w):
					d.errorHint(f.value, fp, hint, "unknown when %q", w)
				case w == "delayed":
					d.warnf(f.value, fp, "when: delayed runs at once under runner exec (as on_success)")
					r.When = WhenOnSuccess
				default:
					r.When = w
				}
			case "allow_failure":
				if workflow {
					d.errorf(f.key, fp, "allow_failure is not a %s rule keyword (allowed: %s)", kind, kind.allowed())
					continue
				}
				v := resolve(f.value)
				if v.Kind == yaml.MappingNode {
					b := true // allow_failure: {exit_codes: …} in a rule allows failure
					r.AllowFailure = &b
					continue
				}
				b, err := strconv.ParseBool(scalar(d, v, fp))
				if err != nil {
					d.errorf(v, fp, "expected true or false")
				}
				r.AllowFailure = &b
			case "variables":
				if kind == includeRules {
					d.errorf(f.key, fp, "variables is not an include rule keyword (allowed: if, changes, exists, when)")
					continue
				}
				r.Variables = variables(d, f.value, fp)
			case "needs":
				if workflow {
					d.errorf(f.key, fp, "needs is not a %s rule keyword (allowed: %s)", kind, kind.allowed())
					continue
				}
				r.NeedsSet = true
				nl := parseNeeds(d, f.value, fp)
				r.Needs, r.needOpt, r.needAt, r.ParentNeeds = nl.names, nl.opt, nl.at, nl.parent
			case "start_in", "interruptible", "auto_cancel":
				d.warnf(f.key, fp, "not supported by runner exec; ignored")
			default:
				allowed := []string{"if", "changes", "exists", "when", "allow_failure", "variables", "needs", "start_in", "interruptible"}
				d.errorHint(f.key, fp, suggestOr(f.key.Value, allowed), "unknown rules keyword %q", f.key.Value)
			}
		}
		out = append(out, r)
	}
	return out
}

func (k ruleKind) String() string {
	switch k {
	case workflowRules:
		return "workflow"
	case includeRules:
		return "include"
	}
	return "job"
}

// allowed lists the keywords of k's rules, for messages.
func (k ruleKind) allowed() string {
	switch k {
	case workflowRules:
		return "if, changes, exists, when, variables"
	case includeRules:
		return "if, changes, exists, when"
	}
	return "if, changes, exists, when, allow_failure, variables, needs"
}

// flattenRules returns the entries of a rules: list with nested lists (as !reference
// makes them) flattened, as GitLab does.
func flattenRules(d *diags, n node, path string, depth int) []node {
	var out []node
	for _, it := range seq(d, n, path) {
		if it = resolve(it); it.Kind == yaml.SequenceNode {
			if depth >= maxScriptNesting {
				d.errorHint(it, path, "flatten the lists", "rules lists nest deeper than %d levels", maxScriptNesting)
				continue
			}
			out = append(out, flattenRules(d, it, path, depth+1)...)
			continue
		}
		out = append(out, it)
	}
	return out
}

// parseIf parses an expression, reporting a syntax error at its column in the file.
func parseIf(d *diags, n node, path string) *expr.Expr {
	src := scalar(d, n, path)
	if src == "" {
		return nil
	}
	if col := bracedVariable(src); col > 0 {
		x := d.at(n, path, "column %d of the expression: ${…} is not part of GitLab's expression language", col)
		x.Hint = "write $NAME instead of ${NAME}"
		d.errs = append(d.errs, x)
		return nil
	}
	e, err := expr.Parse(src)
	if err != nil {
		x := d.at(n, path, "invalid expression %q: %v", src, err)
		d.errs = append(d.errs, x)
		return nil
	}
	return e
}

// bracedVariable returns the 1-based column of a `${` outside quotes in src, or 0.
// GitLab's lexer accepts only $NAME; the expr package also takes ${NAME}, which would
// make a file that works here fail on GitLab.
func bracedVariable(src string) int {
	var quote rune
	prev := rune(0)
	col := 0
	for i, c := range src {
		col++
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '$' && prev != '\\' && strings.HasPrefix(src[i:], "${"):
			return col
		}
		prev = c
	}
	return 0
}

// needList is a needs: list as read: the jobs of this pipeline (with whether each is
// optional, where it is written, and which are written with artifacts: false) and
// the jobs of the parent pipeline (needs:pipeline:job).
type needList struct {
	names       []string
	opt         []bool
	at          []node
	noArtifacts []string
	parent      []ParentNeed
}

// needFields are the keys of a needs entry.
const needFields = "job, artifacts, optional, parallel, pipeline, project, ref"

// parseNeeds reads a needs: list of job's: names, {job, artifacts, optional,
// parallel} mappings, needs:pipeline:job entries (the parent pipeline's jobs, see
// ParentNeed) and needs:project entries, which a local run cannot fetch: they are
// dropped with one warning for the list.
func parseNeeds(d *diags, n node, path string) needList {
	nl := needList{names: []string{}}
	var dropped []string
	var droppedAt node
	droppedPath := ""
	for i, it := range seq(d, n, path) {
		it = resolve(it)
		ip := fmt.Sprintf("%s[%d]", path, i)
		if it.Kind != yaml.MappingNode {
			nl.names = append(nl.names, scalar(d, it, ip))
			nl.opt, nl.at = append(nl.opt, false), append(nl.at, it)
			continue
		}
		name, opt, artifacts := "", false, true
		var nameAt, pipelineAt node
		var combos []jobs.Variables
		fields := map[string]node{} // the entry's values by key
		for _, f := range d.pairs(it) {
			fp := ip + "." + f.key.Value
			fields[f.key.Value] = resolve(f.value)
			switch f.key.Value {
			case "job":
				name, nameAt = scalar(d, f.value, fp), resolve(f.value)
			case "parallel":
				// needs:parallel:matrix names some of a matrix job's jobs.
				pm := mapping(d, f.value, fp)
				if pm == nil {
					continue
				}
				for _, pf := range d.pairs(pm) {
					if pf.key.Value != "matrix" {
						d.errorHint(pf.key, fp+"."+pf.key.Value, "allowed: matrix", "unknown needs:parallel keyword %q", pf.key.Value)
						continue
					}
					combos = matrixCombos(d, pf.value, fp+".matrix")
				}
			case "optional":
				opt = boolean(d, f.value, fp)
			case "artifacts":
				artifacts = boolean(d, f.value, fp)
			case "pipeline":
				pipelineAt = resolve(f.value)
				scalar(d, f.value, fp)
			case "project", "ref":
				scalar(d, f.value, fp)
			default:
				d.errorf(f.key, fp, "unsupported needs field (runner exec supports %s)", needFields)
			}
		}
		switch {
		case fields["project"] != nil:
			if nameAt == nil || fields["ref"] == nil || pipelineAt != nil {
				d.errorHint(it, ip, "write project:, job: and ref: (and artifacts:)", "needs:project needs job: and ref:")
				continue
			}
			if dropped == nil {
				droppedAt, droppedPath = it, ip
			}
			dropped = append(dropped, fmt.Sprintf("job %s of %s (ref %s)", name, fields["project"].Value, fields["ref"].Value))
			continue
		case fields["ref"] != nil:
			d.errorHint(fields["ref"], ip+".ref", "ref goes with project: (another project's job)", "needs:ref without project")
			continue
		case pipelineAt != nil:
			if nameAt == nil {
				d.errorHint(it, ip, "a job's needs:pipeline names the parent pipeline's job: add job:; to mirror another project's pipeline, write needs: {pipeline: group/project} instead of a list", "needs:pipeline in a list needs job:")
				continue
			}
			if fields["optional"] != nil || fields["parallel"] != nil {
				d.errorHint(it, ip, "needs:pipeline:job takes pipeline, job and artifacts", "needs:pipeline:job cannot have optional or parallel")
				continue
			}
			nl.parent = append(nl.parent, ParentNeed{Pipeline: pipelineAt.Value, Job: name, Artifacts: artifacts,
				path: ip, file: d.fileOf(pipelineAt), pipelineAt: pos{pipelineAt.Line, pipelineAt.Column}, jobAt: pos{nameAt.Line, nameAt.Column}})
			continue
		}
		if nameAt == nil {
			d.errorf(it, ip, "a needs entry needs job:")
			continue
		}
		made := []string{name}
		if combos != nil {
			made = made[:0]
			for _, c := range combos {
				made = append(made, matrixName(name, c))
			}
		}
		for _, m := range made {
			nl.names, nl.opt, nl.at = append(nl.names, m), append(nl.opt, opt), append(nl.at, nameAt)
			if !artifacts {
				nl.noArtifacts = append(nl.noArtifacts, m)
			}
		}
	}
	if dropped != nil {
		d.warnf(droppedAt, droppedPath, "needs:project is not fetched by runner exec: the job runs without the artifacts of %s", strings.Join(dropped, ", "))
	}
	return nl
}

// parseChanges reads changes: a list of paths, or {paths, compare_to}.
func parseChanges(d *diags, n node, path string) *Changes {
	n = resolve(n)
	c := &Changes{}
	if n.Kind == yaml.MappingNode {
		for _, f := range d.pairs(n) {
			fp := path + "." + f.key.Value
			switch f.key.Value {
			case "paths":
				c.Paths = script(d, f.value, fp)
			case "compare_to":
				c.CompareTo = scalar(d, f.value, fp)
			default:
				d.errorHint(f.key, fp, "allowed: paths, compare_to", "unknown changes keyword %q", f.key.Value)
			}
		}
		if c.Paths == nil {
			d.errorf(n, path+".paths", "changes needs paths")
		}
		return c
	}
	c.Paths = script(d, n, path)
	return c
}

// parseExists reads exists: a list of globs, or {paths, project, ref}.
func parseExists(d *diags, n node, path string) []string {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		return script(d, n, path)
	}
	var out []string
	for _, f := range d.pairs(n) {
		fp := path + "." + f.key.Value
		switch f.key.Value {
		case "paths":
			out = script(d, f.value, fp)
		case "project", "ref":
			d.errorHint(f.key, fp, "runner exec checks files of this checkout only; drop project/ref or vendor the files", "exists:%s is not supported by runner exec", f.key.Value)
		default:
			d.errorHint(f.key, fp, "allowed: paths, project, ref", "unknown exists keyword %q", f.key.Value)
		}
	}
	if out == nil {
		out = []string{}
	}
	return out
}

// parseRefFilter reads only: or except:: a list of refs, or a mapping of refs,
// variables, changes and kubernetes.
func parseRefFilter(d *diags, n node, path string) *RefFilter {
	n = resolve(n)
	f := &RefFilter{Line: n.Line}
	if n.Kind != yaml.MappingNode {
		f.Refs = parseRefs(d, n, path)
		return f
	}
	for _, kv := range d.pairs(n) {
		fp := path + "." + kv.key.Value
		switch kv.key.Value {
		case "refs":
			f.Refs = parseRefs(d, kv.value, fp)
		case "variables":
			for i, v := range seq(d, kv.value, fp) {
				if e := parseIf(d, v, fmt.Sprintf("%s[%d]", fp, i)); e != nil {
					f.Variables = append(f.Variables, e)
				}
			}
		case "changes":
			f.Changes = parseChanges(d, kv.value, fp)
		case "kubernetes":
			f.Kubernetes = scalar(d, kv.value, fp)
			if f.Kubernetes != "active" {
				d.errorHint(kv.value, fp, "the only value is active", "unknown kubernetes value %q", f.Kubernetes)
			}
		default:
			d.errorHint(kv.key, fp, "allowed: refs, variables, changes, kubernetes", "unknown %s keyword %q", path[strings.LastIndex(path, ".")+1:], kv.key.Value)
		}
	}
	return f
}

func parseRefs(d *diags, n node, path string) []string {
	refs := script(d, n, path)
	for _, r := range refs {
		pat, _ := splitRefProject(r)
		if !strings.HasPrefix(pat, "/") {
			continue
		}
		if _, err := refPattern(pat); err != nil {
			if pat != r {
				d.errorf(n, path, "ref pattern %s: the pattern before the first @ (which starts the project) is %s: %v", r, pat, err)
			} else {
				d.errorf(n, path, "ref pattern %s: %v", r, err)
			}
		}
	}
	return refs
}

// refPattern compiles a /regex/flags ref pattern, as rules:if patterns are compiled.
func refPattern(s string) (*regexp.Regexp, error) {
	end := strings.LastIndex(s, "/")
	if end <= 0 {
		return nil, fmt.Errorf("expected /regex/ with a closing slash")
	}
	body, flags := s[1:end], s[end+1:]
	prefix := ""
	for _, f := range flags {
		switch f {
		case 'i', 'm', 's', 'U':
			prefix += string(f)
		default:
			return nil, fmt.Errorf("unknown flag %q (allowed: i, m, s, U)", f)
		}
	}
	return expr.CompileRegexp(body, prefix)
}
