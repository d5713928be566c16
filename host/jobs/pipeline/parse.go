// Package pipeline reads a .gitlab-ci.yml for `runner exec` as GitLab reads it:
// include (local, remote, project from a local checkout), spec:inputs headers and
// $[[ inputs.name ]], anchors, aliases, merge keys and !reference, then stages, needs,
// variables, image, before_script, script, after_script, timeout, allow_failure,
// when, rules, only, except, workflow, default:, hidden jobs and extends (Evaluate
// applies rules, only/except and workflow), parallel and parallel:matrix (expanded
// into GitLab's "job 1/3" and "job: [a, b]"), trigger (child pipelines: see NewChild),
// inherit, environment, release, pages and cache (key:files hashed from the
// checkout by Evaluate). Keywords that `runner exec` cannot honour
// get a clear message: an error when ignoring them would change what runs
// (include:template), a warning otherwise (tags, …). Every
// message names the file, line, column and key path.
package pipeline

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

type node = *yaml.Node

// DefaultStages are GitLab's stages when a file declares none.
var DefaultStages = []string{".pre", "build", "test", "deploy", ".post"}

// When values.
const (
	WhenOnSuccess = "on_success"
	WhenOnFailure = "on_failure"
	WhenAlways    = "always"
	WhenManual    = "manual"
	WhenNever     = "never"
)

// Job is a job of the pipeline file: the shared job model plus what only the pipeline
// needs to schedule it.
type Job struct {
	jobs.Job
	// Needs lists the jobs this one waits for. Nil means "every job of the earlier
	// stages"; an empty, non-nil list means "none" (needs: []).
	Needs []string
	When  string
	// Line is where the job is defined, for messages.
	Line int
	// Rules are the job's rules:, nil when it has none; Only and Except its only: and
	// except:, nil when absent. Evaluate applies them.
	Rules        []Rule
	Only, Except *RefFilter
	// ParentNeeds are the job's needs:pipeline:job entries: jobs of the parent
	// pipeline whose artifacts it gets (see NewChild).
	ParentNeeds []ParentNeed
	// Upstream is the project of needs: {pipeline: group/project}: the job mirrors
	// that project's pipeline, which runner exec cannot wait for (Plan skips it).
	Upstream string
	// needAt is where each of Needs is written, for messages; needOpt says which
	// needs are optional: true.
	needAt  []node
	needOpt []bool
	// nGlobal is how many of Variables, at the start, are the global ones.
	nGlobal int
	// Retry is the job's retry: (or default:retry).
	Retry Retry
	// ResourceGroup is the job's resource_group: jobs of one group run one at a time.
	ResourceGroup string
	// Coverage is the job's coverage: regex, matched against its log; nil without one.
	Coverage *regexp.Regexp
	// Origin is the job's name as written for a job that parallel: made ("test" for
	// "test 2/3" or "test: [a, b]"), "" otherwise.
	Origin string
	// Trigger is the job's trigger: (a child or multi-project pipeline), nil for a
	// job with a script.
	Trigger *Trigger
	// Environment is the job's environment:, nil without one.
	Environment *Environment
	// Release is the job's release:, nil without one; runner exec creates none.
	Release *Release
	// Pages is the directory a GitLab Pages job publishes (a job named pages, or with
	// pages:), "" for other jobs.
	Pages string
	// inherit is the job's inherit:.
	inherit inheritance
	// allowFailureSet says allow_failure: is written for the job.
	allowFailureSet bool
	// parallel is the job's parallel:, until parse expands it.
	parallel *parallelSpec
	// cacheSpecs says, per cache, what Evaluate resolves (key:files, a policy
	// variable).
	cacheSpecs []cacheSpec
	// ArtifactsFrom is the job's dependencies: (the jobs whose artifacts it gets),
	// nil when not given, empty for none; NoArtifactsFrom are its needs written with
	// artifacts: false. Plan.ArtifactSources applies them (see artifacts.go).
	ArtifactsFrom   []string
	NoArtifactsFrom []string
	depAt           []node
}

// Pipeline is a parsed .gitlab-ci.yml.
type Pipeline struct {
	File   string
	Stages []string
	Jobs   []*Job
	// Variables are the global variables:.
	Variables jobs.Variables
	// Workflow is the workflow: keyword, nil when the file has none.
	Workflow *Workflow
	Warnings []Diagnostic
	// Depth is 0 for a pipeline runner exec is given, 1 for its child pipelines, 2
	// for theirs.
	Depth int
}

// Job returns the named job, or nil.
func (p *Pipeline) Job(name string) *Job {
	for _, j := range p.Jobs {
		if j.Name == name {
			return j
		}
	}
	return nil
}

// Load reads and parses a pipeline file.
func Load(path string) (*Pipeline, error) {
	return LoadWith(context.Background(), path, Options{})
}

var globalKeys = []string{"stages", "variables", "default", "include", "workflow", "image", "services",
	"before_script", "after_script", "cache", "spec"}

var jobKeys = []string{"stage", "script", "before_script", "after_script", "image", "services", "variables",
	"needs", "timeout", "allow_failure", "when", "extends", "tags", "rules", "only", "except", "cache",
	"artifacts", "retry", "interruptible", "environment", "coverage", "dependencies", "parallel", "trigger",
	"resource_group", "release", "secrets", "id_tokens", "hooks", "pages", "inherit", "identity",
	"dast_configuration", "start_in", "manual_confirmation", "run"}

// ignoredJobKeys are valid GitLab keywords that runner exec does not act on; using them
// earns a warning, since the job still means the same thing locally.
var ignoredJobKeys = map[string]string{
	"tags":    "runner exec runs every job on the configured pool",
	"secrets": "", "id_tokens": "", "hooks": "",
	"identity": "", "dast_configuration": "", "start_in": "", "manual_confirmation": "",
}

// failingJobKeys change what runs; silently ignoring them would mislead.
var failingJobKeys = map[string]string{
	"run": "use script",
}

// Parse parses pipeline data; file names it in messages. The error, if any, joins a
// Diagnostic per problem; warnings are in the returned pipeline. Includes are read
// from the file's directory; see ParseWith.
func Parse(file string, data []byte) (*Pipeline, error) {
	return ParseWith(context.Background(), file, data, Options{})
}

// ParseWith parses pipeline data with its includes and spec inputs as GitLab reads
// them: the header document's inputs are interpolated, included files are merged
// under the file (mappings deeply, later files winning), then !reference tags are
// resolved, then extends:.
//
// ParseWith returns in bounded time and memory whatever the input: it refuses files
// larger than MaxFileSize, aliases that contain themselves, documents whose aliases
// expand beyond MaxExpandedSize or MaxDepth (GitLab's defaults), more than
// MaxIncludes included files, include cycles, and pipelines whose includes, extends:,
// default: and merge keys take more than MaxExpansionSteps to expand.
func ParseWith(ctx context.Context, file string, data []byte, o Options) (p *Pipeline, err error) {
	d := &diags{file: file, files: map[node]string{}}
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(budgetExceeded); !ok {
				panic(r)
			}
			d.budgetError()
			p, err = nil, d.err()
		}
	}()
	if o.Dir == "" {
		o.Dir = filepath.Dir(file)
	}
	args := make(map[string]inputArg, len(o.Inputs))
	for k, v := range o.Inputs {
		args[k] = inputArg{str: v}
	}
	l := &loader{ctx: ctx, d: d, o: o, client: o.HTTPClient}
	main := source{name: file, key: localKey(file), dir: o.Dir}
	root := l.load(main, data, args, []source{main})
	if root == nil || len(d.errs) > 0 {
		return nil, d.err()
	}
	if !resolveReferences(d, root) {
		return nil, d.err()
	}
	return parse(d, file, root)
}

// parse reads the merged document of a pipeline.
func parse(d *diags, file string, top node) (p *Pipeline, err error) {
	root := resolve(top)
	if root.Kind != yaml.MappingNode {
		d.errorf(root, "", "the top level must be a mapping of keywords and jobs, not a %s", kindName(root))
		return nil, d.err()
	}
	p = &Pipeline{File: file}
	d.refused = map[string]bool{}
	topPairs := d.pairs(root)
	defs := map[string]node{} // every job and hidden template, by name
	var names []string
	defaults := &mappingNode{}
	var globalVars jobs.Variables
	for _, kv := range topPairs {
		key, val := kv.key.Value, kv.value
		switch key {
		case "stages":
			for i, s := range seq(d, val, "stages") {
				if name := scalar(d, s, fmt.Sprintf("stages[%d]", i)); name != "" {
					p.Stages = append(p.Stages, name)
				}
			}
		case "variables":
			globalVars = variables(d, val, "variables")
		case "default":
			if m := mapping(d, val, "default"); m != nil {
				for _, dkv := range d.pairs(m) {
					switch dkv.key.Value {
					case "image", "before_script", "after_script", "timeout", "services", "tags", "cache",
						"artifacts", "retry", "interruptible", "hooks", "id_tokens":
						defaults.set(dkv.key, dkv.value)
					default:
						d.errorHint(dkv.key, "default."+dkv.key.Value, "allowed: image, before_script, after_script, timeout, services, tags, cache, artifacts, retry, interruptible, hooks, id_tokens", "unknown default keyword %q", dkv.key.Value)
					}
				}
			}
		case "image", "services", "before_script", "after_script", "cache":
			d.warnf(kv.key, key, "top-level %s is deprecated; it is used as default:%s", key, key)
			if defaults.get(key) == nil {
				defaults.set(kv.key, val)
			}
		case "workflow":
			p.Workflow = parseWorkflow(d, val)
		default:
			if strings.HasPrefix(key, ".") && resolve(val).Kind != yaml.MappingNode {
				// A hidden key that is not a job template: GitLab ignores it, and it is
				// where anchors and !reference targets for lists and values live
				// (.scripts: &scripts [...]), whatever their value.
				continue
			}
			if resolve(val).Kind != yaml.MappingNode {
				hint := "a job is a mapping with at least a script"
				if s := suggest(key, globalKeys); s != "" {
					hint = s
				}
				d.errorHint(kv.key, key, hint, "%q is neither a keyword nor a job", key)
				continue
			}
			if _, dup := defs[key]; dup {
				d.errorf(kv.key, key, "job %q is defined twice", key)
				continue
			}
			defs[key] = resolve(val)
			names = append(names, key)
		}
	}
	if p.Stages == nil {
		p.Stages = slices.Clone(DefaultStages)
	} else {
		// .pre and .post always exist, first and last.
		p.Stages = append(append([]string{".pre"}, slices.DeleteFunc(p.Stages, func(s string) bool { return s == ".pre" || s == ".post" })...), ".post")
	}
	x := &expander{d: d, defs: defs, done: map[string]expanded{}}
	for _, name := range names {
		if strings.HasPrefix(name, ".") {
			continue // hidden job: a template for extends
		}
		d.job, d.jobNode = name, defs[name]
		merged := x.expand(name, nil)
		var j *Job
		if merged != nil {
			j = decodeJob(d, p, name, merged, defaults, globalVars)
		}
		if j == nil {
			// Refused with its own error: the jobs that name it do not add more.
			d.refused[name] = true
			continue
		}
		p.Jobs = append(p.Jobs, j)
	}
	d.job, d.jobNode = "", nil
	p.Variables = globalVars
	if len(p.Jobs) == 0 && len(d.errs) == 0 {
		d.errorHint(root, "", "add a job: a top-level key whose value has a script", "the pipeline has no jobs")
	}
	expandParallel(d, p)
	checkNeeds(d, p)
	checkDependencies(d, p)
	checkEnvironments(d, p)
	p.Warnings = d.warnings
	if err := d.err(); err != nil {
		return nil, err
	}
	return p, nil
}

// parseCoverage reads coverage: /regex/, a regular expression between slashes (RE2
// syntax, as GitLab's).
func parseCoverage(d *diags, n node, path string) *regexp.Regexp {
	s := scalar(d, n, path)
	if len(s) < 2 || s[0] != '/' || s[len(s)-1] != '/' {
		d.errorHint(n, path, `write it between slashes, e.g. '/coverage: \d+\.\d+%/'`, "coverage %q is not a /regular expression/", s)
		return nil
	}
	re, err := regexp.Compile(s[1 : len(s)-1])
	if err != nil {
		d.errorf(n, path, "coverage: %v", err)
		return nil
	}
	return re
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

func yamlError(file string, err error) Diagnostic {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
	}
	return Diagnostic{File: file, Line: line, Col: 1, Msg: "invalid YAML: " + msg}
}

func kindName(n node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "mapping"
	case yaml.SequenceNode:
		return "list"
	case yaml.ScalarNode:
		return "scalar"
	}
	return "value"
}

// resolve follows aliases (*anchor) to the node they name.
func resolve(n node) node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		return resolve(n.Content[0])
	}
	return n
}

type pair struct{ key, value node }

// pairs returns a mapping's entries with YAML merge keys (<<: *anchor) applied:
// explicit keys win over merged ones, and of several merged mappings (<<: [*a, *b]) the
// first that has a key wins.
func (d *diags) pairs(m node) []pair {
	var out []pair
	var merged []pair
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if rk := resolve(k); rk.Kind != yaml.ScalarNode || rk.Value == "" {
			// GitLab names keywords, jobs and variables with non-empty strings; a list,
			// a mapping or an empty string as a key (`[]: …`, `"": …`) names nothing.
			d.errorHint(k, "", "write a name: a keyword, a job or a variable", "a key must be a non-empty string, not %s", keyKind(rk))
			continue
		} else {
			k = rk
		}
		if k.Value == "<<" && k.Tag == "!!merge" {
			v = resolve(v)
			srcs := []node{v}
			if v.Kind == yaml.SequenceNode {
				srcs = v.Content
			}
			for _, s := range srcs {
				if s = resolve(s); s.Kind == yaml.MappingNode {
					merged = append(merged, d.pairs(s)...)
				}
			}
			continue
		}
		out = append(out, pair{k, v})
	}
	d.step(len(out) + len(merged))
	if len(merged) == 0 {
		return out
	}
	seen := make(map[string]bool, len(out)+len(merged))
	for _, p := range out {
		seen[p.key.Value] = true
	}
	for _, mp := range merged {
		if !seen[mp.key.Value] {
			seen[mp.key.Value] = true
			out = append(out, mp)
		}
	}
	return out
}

// keyKind describes a key that cannot name anything, for an error.
func keyKind(k node) string {
	if k.Kind == yaml.ScalarNode {
		return "an empty string"
	}
	return "a " + kindName(k)
}

// mappingNode is an ordered key → node map built while merging extends.
type mappingNode struct {
	entries []pair
	index   map[string]int // key → position in entries
}

func (m *mappingNode) get(key string) node {
	if i, ok := m.index[key]; ok {
		return m.entries[i].value
	}
	return nil
}

func (m *mappingNode) set(k, v node) {
	if i, ok := m.index[k.Value]; ok {
		m.entries[i] = pair{k, v}
		return
	}
	if m.index == nil {
		m.index = map[string]int{}
	}
	m.index[k.Value] = len(m.entries)
	m.entries = append(m.entries, pair{k, v})
}

// maxExtendsDepth is GitLab's limit on extends chains.
const maxExtendsDepth = 11

// expander resolves extends, each job or template once: a template named by many jobs,
// or many times over at every level of a chain, costs one expansion.
type expander struct {
	d    *diags
	defs map[string]node // every job and hidden template, by name
	done map[string]expanded
}

// expanded is a finished expansion: m is nil when it failed (the error is reported
// once); height is the length of the longest extends chain above it.
type expanded struct {
	m      *mappingNode
	height int
}

// expand resolves extends for a job or template: parents are merged in order, then the
// job's own keys; mappings merge deeply, everything else (lists included) is replaced.
// chain is the jobs that extend this one, nearest last. The result is shared: callers
// must not modify it.
func (x *expander) expand(name string, chain []string) *mappingNode {
	d := x.d
	if slices.Contains(chain, name) {
		d.errorf(x.defs[name], name+".extends", "extends cycle: %s", strings.Join(append(chain, name), " -> "))
		return nil
	}
	if e, ok := x.done[name]; ok {
		if e.m != nil && len(chain)+e.height >= maxExtendsDepth {
			d.errorf(x.defs[name], name+".extends", "extends nests deeper than %d levels", maxExtendsDepth)
			return nil
		}
		return e.m
	}
	if len(chain) >= maxExtendsDepth {
		d.errorf(x.defs[name], name+".extends", "extends nests deeper than %d levels", maxExtendsDepth)
		return nil
	}
	m, height := x.build(name, chain)
	x.done[name] = expanded{m, height}
	return m
}

func (x *expander) build(name string, chain []string) (*mappingNode, int) {
	d := x.d
	out := &mappingNode{}
	own := d.pairs(x.defs[name])
	height := 0
	for _, kv := range own {
		if kv.key.Value != "extends" {
			continue
		}
		var parents []node
		if v := resolve(kv.value); v.Kind == yaml.SequenceNode {
			parents = v.Content
		} else {
			parents = []node{v}
		}
		for _, pn := range parents {
			pn = resolve(pn)
			if pn.Kind != yaml.ScalarNode {
				d.errorf(pn, name+".extends", "expected a job name or a list of job names")
				continue
			}
			if _, ok := x.defs[pn.Value]; !ok {
				known := make([]string, 0, len(x.defs))
				for k := range x.defs {
					known = append(known, k)
				}
				d.errorHint(pn, name+".extends", suggest(pn.Value, known), "extends unknown job %q", pn.Value)
				continue
			}
			parent := x.expand(pn.Value, append(chain, name))
			if parent == nil {
				return nil, 0
			}
			height = max(height, 1+x.done[pn.Value].height)
			for _, e := range parent.entries {
				d.mergeInto(out, e)
			}
		}
	}
	for _, kv := range own {
		if kv.key.Value != "extends" {
			d.mergeInto(out, kv)
		}
	}
	return out, height
}

func (d *diags) mergeInto(m *mappingNode, e pair) {
	d.step(1)
	old := m.get(e.key.Value)
	nv := resolve(e.value)
	if old != nil && resolve(old).Kind == yaml.MappingNode && nv.Kind == yaml.MappingNode {
		merged := &mappingNode{}
		for _, c := range d.pairs(resolve(old)) {
			merged.set(c.key, c.value)
		}
		for _, c := range d.pairs(nv) {
			d.mergeInto(merged, c)
		}
		out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: nv.Line, Column: nv.Column}
		for _, c := range merged.entries {
			out.Content = append(out.Content, c.key, c.value)
		}
		m.set(e.key, out)
		return
	}
	m.set(e.key, e.value)
}

func mapping(d *diags, n node, path string) node {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping, got a %s", kindName(n))
		return nil
	}
	return n
}

func seq(d *diags, n node, path string) []node {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		d.errorf(n, path, "expected a list, got a %s", kindName(n))
		return nil
	}
	d.step(len(n.Content))
	return n.Content
}

func scalar(d *diags, n node, path string) string {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		d.errorf(n, path, "expected a string, got a %s", kindName(n))
		return ""
	}
	return n.Value
}

// maxScriptNesting is how deeply GitLab flattens lists nested in a script (as
// !reference makes them).
const maxScriptNesting = 10

// script reads a string or a list of strings; nested lists are flattened, up to
// maxScriptNesting levels, as GitLab does.
func script(d *diags, n node, path string) []string {
	n = resolve(n)
	switch n.Kind {
	case yaml.ScalarNode:
		return []string{scalar(d, n, path)}
	case yaml.SequenceNode:
		return scriptLines(d, n, path, nil, 1)
	}
	d.errorf(n, path, "expected a string or a list of strings, got a %s", kindName(n))
	return nil
}

func scriptLines(d *diags, n node, path string, out []string, depth int) []string {
	d.step(len(n.Content))
	for i, c := range n.Content {
		c = resolve(c)
		if plainScalar(c) {
			out = append(out, c.Value) // the common case, without building a path
			continue
		}
		p := fmt.Sprintf("%s[%d]", path, i)
		if c.Kind == yaml.SequenceNode {
			if depth >= maxScriptNesting {
				d.errorHint(c, p, "flatten the lists", "script lists nest deeper than %d levels", maxScriptNesting)
				continue
			}
			out = scriptLines(d, c, p, out, depth+1)
			continue
		}
		out = append(out, scalar(d, c, p))
	}
	return out
}

// plainScalar reports whether scalar would accept n without a message.
func plainScalar(n node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag != "!!null"
}

var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func variables(d *diags, n node, path string) jobs.Variables {
	m := mapping(d, n, path)
	if m == nil {
		return nil
	}
	var out jobs.Variables
	for _, kv := range d.pairs(m) {
		p := path + "." + kv.key.Value
		if !varName.MatchString(kv.key.Value) {
			d.errorHint(kv.key, p, "use letters, digits and underscores, not starting with a digit", "invalid variable name %q", kv.key.Value)
			continue
		}
		v := resolve(kv.value)
		if v.Kind == yaml.MappingNode {
			val := ""
			for _, f := range d.pairs(v) {
				switch f.key.Value {
				case "value":
					val = scalar(d, f.value, p+".value")
				case "description", "expand", "options":
				default:
					d.errorf(f.key, p+"."+f.key.Value, "unknown variable field (allowed: value, description, expand, options)")
				}
			}
			out = append(out, jobs.Variable{Key: kv.key.Value, Value: val})
			continue
		}
		if v.Kind != yaml.ScalarNode {
			d.errorf(v, p, "expected a string, number or boolean, got a %s", kindName(v))
			continue
		}
		out = append(out, jobs.Variable{Key: kv.key.Value, Value: v.Value})
	}
	return out
}

func image(d *diags, n node, path string) jobs.Image {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode {
		return jobs.Image{Name: scalar(d, n, path)}
	}
	m := mapping(d, n, path)
	if m == nil {
		return jobs.Image{}
	}
	var img jobs.Image
	for _, kv := range d.pairs(m) {
		switch kv.key.Value {
		case "name":
			img.Name = scalar(d, kv.value, path+".name")
		case "entrypoint":
			img.Entrypoint = script(d, kv.value, path+".entrypoint")
		case "alias":
			img.Alias = scalar(d, kv.value, path+".alias")
		case "command":
			img.Command = script(d, kv.value, path+".command")
		case "pull_policy":
			for _, p := range script(d, kv.value, path+".pull_policy") {
				switch p {
				case "always", "if-not-present", "never":
					img.PullPolicy = append(img.PullPolicy, p)
				default:
					d.errorHint(kv.value, path+".pull_policy", "use always, if-not-present or never", "unknown pull policy %q", p)
				}
			}
		case "docker":
			if dm := mapping(d, kv.value, path+".docker"); dm != nil {
				for _, o := range d.pairs(dm) {
					switch o.key.Value {
					case "user":
						img.User = scalar(d, o.value, path+".docker.user")
					case "platform":
						d.warnf(o.key, path+".docker.platform", "ignored by runner exec: the image's platform is the instance's")
					default:
						d.errorHint(o.key, path+".docker."+o.key.Value, "allowed: user, platform", "unknown image:docker keyword %q", o.key.Value)
					}
				}
			}
		case "kubernetes", "variables":
			d.warnf(kv.key, path+"."+kv.key.Value, "ignored by runner exec")
		default:
			d.errorf(kv.key, path+"."+kv.key.Value, "unknown image keyword (allowed: name, entrypoint, pull_policy, docker, alias, command)")
		}
	}
	if img.Name == "" {
		d.errorf(n, path+".name", "an image needs a name")
	}
	return img
}

func decodeJob(d *diags, p *Pipeline, name string, m *mappingNode, defaults *mappingNode, globalVars jobs.Variables) *Job {
	errsBefore := len(d.errs)
	j := &Job{Job: jobs.Job{Name: name, Stage: "test"}, When: WhenOnSuccess, Line: 0}
	if v := m.get("inherit"); v != nil {
		j.inherit = parseInherit(d, v, name+".inherit")
	}
	if v := m.get("trigger"); v != nil {
		// A trigger job (GitLab's bridge) takes no script and none of default:.
		j.Trigger = parseTrigger(d, v, name+".trigger")
		checkTriggerJob(d, name, m)
		j.inherit.defaults = inheritSet{none: true}
	}
	inherited := j.inherit.variables.inherited(globalVars)
	d.step(len(inherited))
	j.Variables = slices.Clone(inherited)
	j.nGlobal = len(inherited)
	if len(m.entries) > 0 {
		j.Line = m.entries[0].key.Line
	}
	get := func(key string) node {
		if v := m.get(key); v != nil {
			return v
		}
		if !j.inherit.defaults.has(key) {
			return nil
		}
		return defaults.get(key)
	}
	var before, main []string
	hasScript := false
	for _, kv := range m.entries {
		key, path := kv.key.Value, name+"."+kv.key.Value
		switch key {
		case "stage":
			j.Stage = scalar(d, kv.value, path)
		case "script":
			main, hasScript = script(d, kv.value, path), true
		case "variables":
			j.Variables = append(j.Variables, variables(d, kv.value, path)...)
		case "needs":
			if v := resolve(kv.value); v.Kind == yaml.MappingNode {
				j.Upstream = parseUpstream(d, name, v, path)
				continue
			}
			nl := parseNeeds(d, kv.value, path)
			j.Needs, j.needOpt, j.needAt, j.NoArtifactsFrom, j.ParentNeeds = nl.names, nl.opt, nl.at, nl.noArtifacts, nl.parent
		case "dependencies":
			parseDependencies(d, j, kv.value, path)
		case "parallel":
			j.parallel = parseParallel(d, kv.value, path)
		case "resource_group":
			j.ResourceGroup = scalar(d, kv.value, path)
		case "coverage":
			j.Coverage = parseCoverage(d, kv.value, path)
		case "interruptible":
			// Only a newer pipeline interrupts a job; a local run has none. Checked,
			// then accepted.
			if _, err := strconv.ParseBool(scalar(d, kv.value, path)); err != nil {
				d.errorf(kv.value, path, "expected true or false")
			}
		case "rules":
			j.Rules = parseRules(d, kv.value, path, jobRules)
		case "only":
			j.Only = parseRefFilter(d, kv.value, path)
		case "except":
			j.Except = parseRefFilter(d, kv.value, path)
		case "allow_failure":
			j.allowFailureSet = true
			v := resolve(kv.value)
			if v.Kind == yaml.MappingNode {
				j.AllowFailure = true
				for _, f := range d.pairs(v) {
					if f.key.Value != "exit_codes" {
						d.errorf(f.key, path+"."+f.key.Value, "unknown allow_failure field (allowed: exit_codes)")
						continue
					}
					codes := []node{resolve(f.value)}
					if codes[0].Kind == yaml.SequenceNode {
						codes = codes[0].Content
					}
					d.step(len(codes))
					for _, c := range codes {
						n, err := strconv.Atoi(scalar(d, c, path+".exit_codes"))
						if err != nil {
							d.errorf(c, path+".exit_codes", "expected an exit code number")
							continue
						}
						j.AllowFailureExitCodes = append(j.AllowFailureExitCodes, n)
					}
				}
				continue
			}
			b, err := strconv.ParseBool(scalar(d, v, path))
			if err != nil {
				d.errorf(v, path, "expected true or false")
			}
			j.AllowFailure = b
		case "when":
			w := scalar(d, kv.value, path)
			switch w {
			case WhenOnSuccess, WhenOnFailure, WhenAlways, WhenManual, WhenNever:
				j.When = w
			case "delayed":
				d.warnf(kv.value, path, "when: delayed runs at once under runner exec")
			default:
				d.errorHint(kv.value, path, "use on_success, on_failure, always, manual or never", "unknown when %q", w)
			}
		case "environment":
			j.Environment = parseEnvironment(d, kv.value, path)
		case "release":
			if j.Release = parseRelease(d, kv.value, path); j.Release != nil {
				d.warnf(kv.key, path, "no release is created by runner exec (tag %s); the job's script runs", j.Release.TagName)
			}
		case "pages":
			j.Pages = parsePages(d, kv.value, path)
		case "before_script", "after_script", "image", "services", "cache", "timeout", "extends", "artifacts", "retry",
			"inherit", "trigger":
			// read above or below, together with their defaults
		default:
			if hint, ok := failingJobKeys[key]; ok {
				d.errorHint(kv.key, path, hint, "%s is not supported by runner exec", key)
			} else if why, ok := ignoredJobKeys[key]; ok {
				msg := "not supported by runner exec; ignored"
				if why != "" {
					msg += ": " + why
				}
				d.warnf(kv.key, path, "%s", msg)
			} else {
				d.errorHint(kv.key, path, suggest(key, jobKeys), "unknown job keyword %q", key)
			}
		}
	}
	if v := get("before_script"); v != nil {
		before = script(d, v, name+".before_script")
	}
	if v := get("after_script"); v != nil {
		j.AfterScript = script(d, v, name+".after_script")
	}
	if v := get("image"); v != nil {
		j.Image = image(d, v, name+".image")
	}
	if v := get("cache"); v != nil {
		j.Caches, j.cacheSpecs = caches(d, v, name+".cache")
	}
	if v := get("services"); v != nil {
		for i, sv := range seq(d, v, name+".services") {
			j.Services = append(j.Services, image(d, sv, fmt.Sprintf("%s.services[%d]", name, i)))
		}
	}
	if v := get("retry"); v != nil {
		j.Retry = parseRetry(d, v, name+".retry")
	}
	if v := get("timeout"); v != nil {
		t, err := ParseTimeout(scalar(d, v, name+".timeout"))
		if err != nil {
			d.errorf(v, name+".timeout", "%v", err)
		}
		j.Timeout = t
	}
	if v := get("artifacts"); v != nil {
		j.Artifacts = parseArtifacts(d, v, name+".artifacts")
	}
	if !hasScript && j.Trigger == nil && j.Upstream == "" {
		var at node // the job's first key: its file (an included one) and line
		if len(m.entries) > 0 {
			at = m.entries[0].key
		}
		d.errorHint(at, name, "add script: with the commands to run, or trigger: for a child pipeline", "job %q has no script", name)
	}
	// GitLab: a manual job may fail unless it says otherwise (a rule's when: manual
	// does not change this; see Evaluate).
	if j.When == WhenManual && !j.allowFailureSet {
		j.AllowFailure = true
	}
	if name == "pages" && m.get("pages") == nil {
		j.Pages = DefaultPagesPublish
	}
	if j.Pages != "" {
		pagesArtifact(j)
		at, path := m.get("pages"), name+".pages"
		if at == nil && len(m.entries) > 0 {
			at, path = m.entries[0].key, name // a job named pages
		}
		d.warnf(at, path, "%s", describePages(j.Pages))
	}
	if t := j.Trigger; t != nil && t.Project != "" {
		d.warnf(m.get("trigger"), name+".trigger.project", "multi-project pipelines are not run by runner exec: job %q (trigger of project %s) is skipped", name, t.Project)
	}
	j.Script = append(before, main...)
	if j.Rules != nil && (j.Only != nil || j.Except != nil) {
		d.errorHint(m.get("rules"), name+".rules", "express only/except as rules", "rules cannot be used with only or except (GitLab rejects this)")
	}
	if !slices.Contains(p.Stages, j.Stage) {
		d.errorHint(m.get("stage"), name+".stage", "declare it under stages: "+suggestOr(j.Stage, p.Stages), "stage %q is not declared", j.Stage)
	}
	if len(d.errs) > errsBefore {
		return nil
	}
	return j
}

// suggestOr is a "did you mean" hint, else the known words: at most maxListed of them,
// so that a hint stays one short line.
func suggestOr(word string, known []string) string {
	if s := suggest(word, known); s != "" {
		return s
	}
	if len(known) > maxListed {
		return fmt.Sprintf("%s, … (%d in all)", strings.Join(known[:maxListed], ", "), len(known))
	}
	return strings.Join(known, ", ")
}

// maxListed bounds the words a hint lists.
const maxListed = 10

// checkNeeds checks every need as GitLab does: the job must exist, and be in the same
// stage or an earlier one.
func checkNeeds(d *diags, p *Pipeline) {
	stageIndex := make(map[string]int, len(p.Stages))
	for i, s := range p.Stages {
		stageIndex[s] = i
	}
	byName := make(map[string]*Job, len(p.Jobs))
	names := make([]string, len(p.Jobs))
	for i, j := range p.Jobs {
		byName[j.Name] = j
		names[i] = j.Name
	}
	for _, j := range p.Jobs {
		checkJobNeeds(d, j, j.Name+".needs", j.Needs, j.needAt, byName, names, stageIndex)
		for _, r := range j.Rules {
			checkJobNeeds(d, j, fmt.Sprintf("%s.rules[%d].needs", j.Name, r.Index), r.Needs, r.needAt, byName, names, stageIndex)
		}
	}
}

// checkJobNeeds checks the needs of j, written at path: the job's own or a rule's.
func checkJobNeeds(d *diags, j *Job, base string, needs []string, needAt []node, byName map[string]*Job, names []string, stageIndex map[string]int) {
	for i, n := range needs {
		path := fmt.Sprintf("%s[%d]", base, i)
		var at node
		if i < len(needAt) {
			at = needAt[i]
		}
		dep := byName[n]
		switch {
		case dep == nil && d.refused[n]:
			// The job is refused with an error of its own.
		case n == j.Name:
			d.errorf(at, path, "job %q needs itself", n)
		case dep == nil:
			d.errorHint(at, path, suggest(n, names), "needs unknown job %q", n)
		case stageIndex[dep.Stage] > stageIndex[j.Stage]:
			d.errorHint(at, path,
				fmt.Sprintf("move %q to stage %s or earlier, or %q to stage %s or later", n, j.Stage, j.Name, dep.Stage),
				"job %q (stage %s) needs %q of the later stage %s: GitLab rejects this (need %s is not defined in current or prior stages)",
				j.Name, j.Stage, n, dep.Stage, n)
		}
	}
}

// TimeoutOr returns the job's timeout, or def when none is set.
func (j *Job) TimeoutOr(def time.Duration) time.Duration {
	if j.Timeout > 0 {
		return j.Timeout
	}
	return def
}
