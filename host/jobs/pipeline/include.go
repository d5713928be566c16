package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// GitLab's limits on include (the defaults of ci_max_includes and of the nesting depth).
const (
	// MaxIncludes bounds the files a pipeline includes in all, a file included
	// twice counting twice.
	MaxIncludes = 150
	// MaxIncludeDepth bounds the nesting of includes.
	MaxIncludeDepth = 100
)

// RemoteTimeout bounds the fetch of one include:remote file when Options.HTTPClient
// is not set.
const RemoteTimeout = 30 * time.Second

// Options say where a pipeline's includes and inputs come from.
type Options struct {
	// Dir is the project's directory, where include:local paths start. Default: the
	// pipeline file's directory.
	Dir string
	// Inputs are the values of the main file's spec:inputs (runner exec --input
	// name=value), as written on the command line; they are converted to the declared
	// type.
	Inputs map[string]string
	// Projects maps a project path (group/name) to a local checkout of it, for
	// include:project (runner exec --include-project group/name=PATH).
	Projects map[string]string
	// HTTPClient fetches include:remote files; default: a client with RemoteTimeout.
	HTTPClient *http.Client
	// Env is what include:rules decide against: the predefined variables and the
	// run's --var ones (GitLab allows no others there: no global or job variables),
	// the checkout for exists and its diff for changes. Nil means there is no run to
	// decide for: include rules are not evaluated and every file is included, with
	// a warning.
	Env *Env
}

// LoadWith reads and parses a pipeline file with its includes and inputs.
func LoadWith(ctx context.Context, path string, o Options) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pipeline: %w", err)
	}
	return ParseWith(ctx, path, data, o)
}

// source is a file of the pipeline: the main one or an included one.
type source struct {
	// name is how messages name the file: a path, a URL, or project:file@ref.
	name string
	// key identifies the file for cycle detection.
	key string
	// dir is the checkout where the file's include:local paths start; project is
	// its path (group/name) when it is not the main project.
	dir, project string
	// at is the include entry that brought the file in (nil for the main file).
	at node
}

// loader reads a pipeline file and what it includes, and merges them into one
// document.
type loader struct {
	ctx    context.Context
	d      *diags
	o      Options
	client *http.Client
	// count is the number of files included so far.
	count int
	// eval decides include:rules, made when first needed.
	eval *evaluator
	// child is set when the loader reads a child pipeline's trigger:include.
	child *childLoad
}

// load reads one file's documents, applies its inputs, checks its aliases and merges
// its includes under it. It returns the file's merged top-level mapping, or nil after
// reporting why.
func (l *loader) load(src source, data []byte, args map[string]inputArg, chain []source) node {
	d := l.d
	if len(data) > MaxFileSize {
		d.errorIn(src.name, "GitLab refuses CI files over 1 MiB of keys and values; split the pipeline",
			"the file is %d bytes, more than runner exec reads (%d)", len(data), MaxFileSize)
		return nil
	}
	var docs []node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			e := yamlError(src.name, err)
			d.errs = append(d.errs, e)
			return nil
		}
		if len(docs) == 2 {
			d.errorIn(src.name, "keep one spec: header document and one pipeline document",
				"the file holds more than two YAML documents")
			return nil
		}
		if doc.Kind != 0 && len(doc.Content) > 0 {
			docs = append(docs, doc.Content[0])
		} else {
			docs = append(docs, nil)
		}
	}
	for _, doc := range docs {
		if doc != nil {
			d.register(doc, src.name)
		}
	}
	var header, content node
	switch {
	case len(docs) == 2:
		header, content = docs[0], docs[1]
		if header == nil || resolve(header).Kind != yaml.MappingNode || !hasKey(resolve(header), "spec") {
			at := header
			if at == nil {
				at = content
			}
			d.errorHint(at, "", "put spec: inputs: in the first document, or remove the --- separator",
				"the file holds two YAML documents, but the first is not a spec: header")
			return nil
		}
	case len(docs) == 1:
		content = docs[0]
	}
	if content == nil {
		if header != nil {
			d.errorHint(header, "", "add the pipeline after the --- that ends the spec: header", "the file has a spec: header but no pipeline")
		} else {
			d.errorIn(src.name, "add at least one job with a script", "the file is empty")
		}
		return nil
	}
	var values map[string]node
	if header != nil {
		if !checkAliases(d, header) {
			return nil
		}
		var ok bool
		values, ok = l.inputs(src, header, args)
		if !ok {
			return nil
		}
	} else if len(args) > 0 {
		for name, a := range args {
			d.errorHint(a.at, "inputs."+name, "declare the inputs in a spec: header document, or do not pass them",
				"%s has no spec: inputs header, so it takes no input %q", src.name, name)
		}
		return nil
	}
	if !interpolate(d, content, values) {
		return nil
	}
	if !checkAliases(d, content) {
		return nil
	}
	root := resolve(content)
	if root.Kind != yaml.MappingNode {
		d.errorf(root, "", "the top level must be a mapping of keywords and jobs, not a %s", kindName(root))
		return nil
	}
	own := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: root.Line, Column: root.Column}
	d.files[own] = src.name
	var includes []pair
	for _, kv := range d.pairs(root) {
		switch kv.key.Value {
		case "include":
			includes = append(includes, kv)
			continue
		case "spec":
			// A header put in the pipeline's own document; anything else named spec
			// is a job (GitLab's Crystal template has one).
			if misplacedHeader(kv.value) {
				d.errorHint(kv.key, "spec", "put spec: in a header document of its own, ended by ---",
					"an inputs header must be the file's first YAML document, separated from the pipeline by ---")
				return nil
			}
		}
		own.Content = append(own.Content, kv.key, kv.value)
	}
	var merged node
	ok := true
	for _, inc := range includes {
		for _, f := range l.includes(src, inc.value, chain) {
			if f == nil {
				ok = false
				continue
			}
			merged = d.deepMerge(merged, f)
		}
	}
	if !ok {
		return nil
	}
	return d.deepMerge(merged, own)
}

func hasKey(m node, key string) bool {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return true
		}
	}
	return false
}

// register notes the file of every node of a document, aliases not followed.
func (d *diags) register(n node, file string) {
	if n == nil || n.Kind == yaml.AliasNode {
		return
	}
	if _, seen := d.files[n]; seen {
		return
	}
	d.files[n] = file
	for _, c := range n.Content {
		d.register(c, file)
	}
}

// deepMerge merges b over a as GitLab merges included files: mappings key by key, at
// every level; anything else (lists included) is replaced by b's. The inputs are not
// modified.
func (d *diags) deepMerge(a, b node) node {
	if a == nil {
		return b
	}
	ra, rb := resolve(a), resolve(b)
	if ra.Kind != yaml.MappingNode || rb.Kind != yaml.MappingNode || ra.Tag == "!reference" || rb.Tag == "!reference" {
		return b
	}
	m := &mappingNode{}
	for _, p := range d.pairs(ra) {
		m.set(p.key, p.value)
	}
	for _, p := range d.pairs(rb) {
		if old := m.get(p.key.Value); old != nil {
			m.set(p.key, d.deepMerge(old, p.value))
		} else {
			m.set(p.key, p.value)
		}
	}
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: rb.Line, Column: rb.Column}
	d.step(len(m.entries))
	for _, e := range m.entries {
		out.Content = append(out.Content, e.key, e.value)
	}
	d.files[out] = d.fileOf(rb)
	return out
}

// includes reads the files an include: value names (a string, a mapping or a list of
// them), each merged with its own includes; a nil entry stands for a file that failed.
func (l *loader) includes(src source, v node, chain []source) []node {
	d := l.d
	v = resolve(v)
	items := []node{v}
	if v.Kind == yaml.SequenceNode {
		items = v.Content
	}
	var out []node
	base := "include"
	if l.child != nil && len(chain) == 1 {
		base = l.child.job + ".trigger.include"
	}
	for i, it := range items {
		p := base
		if v.Kind == yaml.SequenceNode {
			p = fmt.Sprintf("%s[%d]", base, i)
		}
		it = resolve(it)
		switch it.Kind {
		case yaml.ScalarNode:
			if it.Tag == "!!null" || it.Value == "" {
				d.errorf(it, p, "expected a file to include")
				out = append(out, nil)
				continue
			}
			kind := "local"
			if isURL(it.Value) {
				kind = "remote"
			}
			out = append(out, l.includeEntry(src, chain, p, it, map[string]node{kind: it}, nil)...)
		case yaml.MappingNode:
			fields := map[string]node{}
			var inputs, rules node
			for _, f := range d.pairs(it) {
				switch k := f.key.Value; k {
				case "local", "remote", "project", "file", "ref", "template", "component":
					fields[k] = f.value
				case "artifact", "job":
					if l.child == nil {
						d.errorHint(f.key, p+"."+k, "include:artifact makes a dynamic child pipeline: use it under a job's trigger:include", "include:%s is only for trigger:include", k)
						fields = nil
						break
					}
					fields[k] = f.value
				case "inputs":
					inputs = f.value
				case "rules":
					rules = f.value
				case "cache", "integrity":
					d.warnf(f.key, p+"."+k, "ignored by runner exec")
				default:
					d.errorHint(f.key, p+"."+k, "allowed: local, remote, project (with file, ref), template, component, inputs, rules",
						"unknown include keyword %q", k)
					fields = nil
				}
				if fields == nil {
					break
				}
			}
			if fields == nil {
				out = append(out, nil)
				continue
			}
			if rules != nil {
				include, ok := l.includeRules(src, rules, p+".rules")
				if !ok {
					out = append(out, nil)
					continue
				}
				if !include {
					continue
				}
			}
			out = append(out, l.includeEntry(src, chain, p, it, fields, inputs)...)
		default:
			d.errorf(it, p, "expected a file name or a mapping (local:, remote:, project:, template:, component:), got a %s", kindName(it))
			out = append(out, nil)
		}
	}
	return out
}

func isURL(s string) bool { return strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "http://") }

// includeEntry reads the files of one include entry.
func (l *loader) includeEntry(src source, chain []source, p string, at node, fields map[string]node, inputs node) []node {
	d := l.d
	var kinds []string
	for _, k := range []string{"local", "remote", "project", "template", "component", "artifact"} {
		if fields[k] != nil {
			kinds = append(kinds, k)
		}
	}
	if len(kinds) != 1 {
		d.errorHint(at, p, "use exactly one of local, remote, project, template, component",
			"an include entry needs one source, this one has %d", len(kinds))
		return []node{nil}
	}
	kind := kinds[0]
	if kind != "artifact" && fields["job"] != nil {
		d.errorHint(at, p, "job: goes with artifact:", "include:%s does not take job:", kind)
		return []node{nil}
	}
	if kind == "artifact" {
		return []node{l.artifactFile(src, chain, p, at, fields)}
	}
	// at names the entry's value: the entry itself for the string shorthand.
	vp := p + "." + kind
	if resolve(fields[kind]) == at {
		vp = p
	}
	if kind != "project" && (fields["file"] != nil || fields["ref"] != nil) {
		d.errorHint(at, p, "file: and ref: go with project:", "include:%s does not take file: or ref:", kind)
		return []node{nil}
	}
	args, ok := l.includeInputs(p, inputs)
	if !ok {
		return []node{nil}
	}
	val := scalar(d, fields[kind], vp)
	if val == "" {
		return []node{nil}
	}
	vn := resolve(fields[kind])
	switch kind {
	case "template":
		d.errorHint(vn, vp,
			fmt.Sprintf("vendor it: copy lib/gitlab/ci/templates/%s from the gitlab-org/gitlab repository into this project and include it with local:", val),
			"include:template %q is a template of the GitLab server, which runner exec does not have", val)
		return []node{nil}
	case "component":
		d.errorHint(vn, vp,
			"vendor it: check out the component's project and include its templates/<name>.yml with project: and file: (runner exec --include-project group/name=PATH), or copy it into this project and include it with local:, passing the same inputs:",
			"include:component %q is served by a GitLab instance, which runner exec does not query", val)
		return []node{nil}
	case "remote":
		if !isURL(val) {
			d.errorHint(vn, vp, "use a full http:// or https:// URL, or local: for a file of this project", "include:remote %q is not an HTTP(S) URL", val)
			return []node{nil}
		}
		s := source{name: val, key: "remote:" + val, dir: src.dir, project: src.project, at: vn}
		data, err := l.fetch(val)
		if err != nil {
			d.errorHint(vn, vp, "check the URL, or download the file into the project and include it with local:", "include:remote: %v", err)
			return []node{nil}
		}
		return []node{l.nested(s, data, args, chain, vp)}
	case "local":
		if strings.Contains(val, "*") {
			files, err := globLocal(src.dir, val)
			if err != nil {
				d.errorf(vn, vp, "include:local %q: %v", val, err)
				return []node{nil}
			}
			if len(files) == 0 {
				d.errorHint(vn, vp, "check the pattern: * stays within a directory, ** crosses directories",
					"include:local %q matches no file in %s", val, displayDir(src.dir))
				return []node{nil}
			}
			var out []node
			for _, f := range files {
				out = append(out, l.localFile(src, chain, vp, vn, f, args))
			}
			return out
		}
		return []node{l.localFile(src, chain, vp, vn, val, args)}
	}
	// project
	dir, ok := l.o.Projects[val]
	if !ok {
		d.errorHint(vn, vp, fmt.Sprintf("check out %s and pass --include-project %s=PATH", val, val),
			"include:project %q: runner exec has no local checkout of that project", val)
		return []node{nil}
	}
	fn := resolve(fields["file"])
	if fn == nil {
		d.errorHint(at, p, "name the project's file(s) with file:", "include:project needs file:")
		return []node{nil}
	}
	files := []node{fn}
	if fn.Kind == yaml.SequenceNode {
		files = fn.Content
	}
	ref := ""
	if fields["ref"] != nil {
		ref = scalar(d, fields["ref"], p+".ref")
	}
	var out []node
	for i, f := range files {
		fp := p + ".file"
		if fn.Kind == yaml.SequenceNode {
			fp = fmt.Sprintf("%s[%d]", fp, i)
		}
		name := scalar(d, f, fp)
		if name == "" {
			out = append(out, nil)
			continue
		}
		rel := strings.TrimPrefix(path.Clean("/"+name), "/")
		display := val + ":" + rel
		if ref != "" {
			display += "@" + ref
		}
		s := source{name: display, key: "project:" + val + ":" + rel + "@" + ref, dir: dir, project: val, at: resolve(f)}
		data, err := readProjectFile(l.ctx, dir, rel, ref)
		if err != nil {
			d.errorHint(resolve(f), fp, fmt.Sprintf("the checkout of %s is %s (from --include-project)", val, dir), "include:project %s: %v", display, err)
			out = append(out, nil)
			continue
		}
		out = append(out, l.nested(s, data, args, chain, fp))
	}
	return out
}

// localKey identifies a file of this machine for cycle detection.
func localKey(file string) string {
	if abs, err := filepath.Abs(file); err == nil {
		file = abs
	}
	return "local:" + file
}

func displayDir(dir string) string {
	if dir == "." || dir == "" {
		return "the project directory"
	}
	return dir
}

// localFile reads one include:local file of src's project.
func (l *loader) localFile(src source, chain []source, p string, at node, name string, args map[string]inputArg) node {
	d := l.d
	rel := strings.TrimPrefix(path.Clean("/"+name), "/")
	if ext := path.Ext(rel); ext != ".yml" && ext != ".yaml" {
		d.errorHint(at, p, "GitLab includes only .yml and .yaml files", "include:local %q is not a YAML file", name)
		return nil
	}
	full := filepath.Join(src.dir, filepath.FromSlash(rel))
	display := full
	if src.project != "" {
		display = src.project + ":" + rel
	}
	s := source{name: display, key: localKey(full), dir: src.dir, project: src.project, at: at}
	data, err := os.ReadFile(full)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			msg = "no such file in " + displayDir(src.dir)
		}
		d.errorHint(at, p, "local: paths start at the project's root directory", "include:local %q: %s", name, msg)
		return nil
	}
	return l.nested(s, data, args, chain, p)
}

// nested loads an included file after checking GitLab's limits and cycles.
func (l *loader) nested(s source, data []byte, args map[string]inputArg, chain []source, p string) node {
	d := l.d
	l.count++
	if l.count > MaxIncludes {
		d.errorHint(s.at, p, "include fewer files; GitLab refuses more too (ci_max_includes)",
			"more than %d files are included in all", MaxIncludes)
		return nil
	}
	if len(chain) > MaxIncludeDepth { // chain holds the main file too
		d.errorHint(s.at, p, "flatten the includes; GitLab refuses deeper nesting too",
			"includes nest deeper than %d levels", MaxIncludeDepth)
		return nil
	}
	for i, c := range chain {
		if c.key == s.key {
			names := make([]string, 0, len(chain)-i+1)
			for _, c := range chain[i:] {
				names = append(names, c.name)
			}
			d.errorHint(s.at, p, "remove one of the includes that close the loop",
				"include cycle: %s", strings.Join(append(names, s.name), " -> "))
			return nil
		}
	}
	return l.load(s, data, args, append(slices.Clip(chain), s))
}

// fetch downloads an include:remote file, at most MaxFileSize+1 bytes of it.
func (l *loader) fetch(url string) ([]byte, error) {
	c := l.client
	if c == nil {
		c = &http.Client{Timeout: RemoteTimeout}
	}
	req, err := http.NewRequestWithContext(l.ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return data, nil
}

// readProjectFile reads a file of a project's local checkout: at ref through git
// when a ref is given, else from the working tree.
func readProjectFile(ctx context.Context, dir, rel, ref string) ([]byte, error) {
	if ref == "" {
		return os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
	}
	if strings.HasPrefix(ref, "-") {
		return nil, fmt.Errorf("invalid ref %q", ref)
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "show", ref+":"+rel)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git show %s:%s: %v: %s (fetch the ref in the checkout, or drop ref: to read the working tree)", ref, rel, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// wildcardRegexp turns an include:local pattern into a regexp as GitLab reads it:
// "**/" is any run of directories (or none), "**" any characters, "*" any characters
// but "/"; everything else is literal.
func wildcardRegexp(pattern string) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); {
		switch {
		case strings.HasPrefix(pattern[i:], "**/"):
			b.WriteString("(.*?/)?")
			i += 3
		case strings.HasPrefix(pattern[i:], "**"):
			b.WriteString(".*?")
			i += 2
		case pattern[i] == '*':
			b.WriteString("[^/]*?")
			i++
		default:
			j := i
			for j < len(pattern) && pattern[j] != '*' {
				j++
			}
			b.WriteString(regexp.QuoteMeta(pattern[i:j]))
			i = j
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// globLocal lists the files of dir that a wildcard include:local pattern matches,
// as slash-separated paths relative to dir, in lexical order.
func globLocal(dir, pattern string) ([]string, error) {
	re := wildcardRegexp(strings.TrimPrefix(pattern, "/"))
	var out []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			if e.Name() == ".git" && p != dir {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel = filepath.ToSlash(rel); re.MatchString(rel) {
			out = append(out, rel)
		}
		return nil
	})
	return out, err
}

// misplacedHeader reports whether a top-level spec: value is an inputs header (a
// mapping with inputs: and none of a job's keys) rather than a job named spec.
func misplacedHeader(v node) bool {
	m := resolve(v)
	if m == nil || m.Kind != yaml.MappingNode {
		return false
	}
	header := false
	for i := 0; i+1 < len(m.Content); i += 2 {
		switch m.Content[i].Value {
		case "inputs":
			header = true
		case "script", "run", "trigger", "extends", "stage", "image", "needs", "rules":
			return false
		}
	}
	return header
}

// includeRules decides an include entry's rules: include reports whether the entry
// is included; ok is false after an error. The rules see the predefined variables and
// --var ones only, as GitLab's; exists looks in the main project's checkout.
func (l *loader) includeRules(src source, n node, path string) (include, ok bool) {
	d := l.d
	errs := len(d.errs)
	rules := parseRules(d, n, path, includeRules)
	if len(d.errs) > errs {
		return false, false
	}
	if l.o.Env == nil {
		d.warnf(n, path, "include rules are not evaluated without a run to decide for; the file is included")
		return true, true
	}
	if l.eval == nil {
		l.eval = &evaluator{env: *l.o.Env, file: src.name, changed: map[string]changeSet{}}
	}
	r, err := l.eval.firstMatch(rules, l.eval.lookup(nil))
	if err != nil {
		d.errorf(n, path, "%v", err)
		return false, false
	}
	return r != nil && r.When != WhenNever, true
}
