package pipeline

import (
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxReferenceDepth is GitLab's limit on !reference tags nested in what they refer to.
const MaxReferenceDepth = 10

// resolveReferences replaces every !reference [key, …] of the merged document by the
// node it names, in place: references see the whole pipeline, includes merged, and
// are resolved before extends, as in GitLab. A reference shares its target, like an
// alias, so a target used many times is not copied.
func resolveReferences(d *diags, root node) bool {
	r := &refResolver{d: d, root: root, state: map[node]walkState{}, keys: map[node]map[string]node{}}
	r.walk(root, 0)
	return !r.failed
}

type walkState int

const (
	unwalked walkState = iota
	walking
	walked
)

type refResolver struct {
	d      *diags
	root   node
	state  map[node]walkState
	keys   map[node]map[string]node
	failed bool
}

// index returns a mapping's keys (merge keys applied), built once per mapping, so
// that many references into a large pipeline cost one pass over it.
func (r *refResolver) index(m node) map[string]node {
	if idx, ok := r.keys[m]; ok {
		return idx
	}
	idx := map[string]node{}
	for _, kv := range r.d.pairs(m) {
		idx[kv.key.Value] = kv.value
	}
	r.keys[m] = idx
	return idx
}

// walk resolves the references under n; depth is how many references led here.
func (r *refResolver) walk(n node, depth int) {
	n = resolve(n)
	if n == nil || r.state[n] != unwalked || r.failed {
		return
	}
	r.state[n] = walking
	for i, c := range n.Content {
		if n.Kind == yaml.MappingNode && i%2 == 0 {
			continue // keys
		}
		if rc := resolve(c); rc != nil && rc.Tag == "!reference" {
			if t := r.ref(rc, depth); t != nil {
				n.Content[i] = t
			}
			continue
		}
		r.walk(c, depth)
	}
	r.state[n] = walked
}

// ref returns the node a !reference names, its own references resolved.
func (r *refResolver) ref(n node, depth int) node {
	d := r.d
	if r.failed {
		return nil
	}
	fail := func(hint, format string, args ...any) node {
		r.failed = true
		d.errorHint(n, "", hint, format, args...)
		return nil
	}
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		return fail("write !reference [job, keyword, …]", "!reference needs a list of keys")
	}
	if depth >= MaxReferenceDepth {
		return fail("GitLab refuses deeper nesting too", "!reference tags nest deeper than %d levels", MaxReferenceDepth)
	}
	keys := make([]string, 0, len(n.Content))
	for _, k := range n.Content {
		if k = resolve(k); k.Kind != yaml.ScalarNode || k.Tag == "!!null" {
			return fail("write !reference [job, keyword, …]", "!reference keys must be strings")
		}
		keys = append(keys, k.Value)
	}
	cur := resolve(r.root)
	for i, k := range keys {
		if cur.Kind != yaml.MappingNode || cur.Tag == "!reference" {
			return fail("a reference names keys of mappings", "!reference [%s]: %s is a %s, it has no key %q",
				strings.Join(keys, ", "), strings.Join(keys[:i], "."), kindName(cur), k)
		}
		idx := r.index(cur)
		next := idx[k]
		if next == nil {
			known := make([]string, 0, len(idx))
			for k := range idx {
				known = append(known, k)
			}
			slices.Sort(known)
			where := "the pipeline"
			if i > 0 {
				where = strings.Join(keys[:i], ".")
			}
			return fail(suggest(k, known), "!reference [%s]: %s has no key %q", strings.Join(keys, ", "), where, k)
		}
		cur = resolve(next)
		if cur.Tag == "!reference" {
			if cur = r.ref(cur, depth+1); cur == nil {
				return nil
			}
		}
	}
	if r.state[cur] == walking {
		return fail("a reference cannot name what contains it", "!reference [%s] refers to a value that contains it", strings.Join(keys, ", "))
	}
	r.walk(cur, depth+1)
	if r.failed {
		return nil
	}
	return cur
}
