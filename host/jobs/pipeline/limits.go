package pipeline

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Limits on what a pipeline file may expand to. YAML aliases and merge keys let a file
// of a few hundred bytes stand for gigabytes, or for itself; extends and default: repeat
// templates in every job. The parser measures before it expands, so that any file is
// read in bounded time and memory.
const (
	// MaxFileSize is the largest file read at all.
	MaxFileSize = 8 << 20
	// MaxExpandedSize bounds the bytes of keys and values once aliases and merge keys
	// are expanded (plus one per node, so that empty values count): 1 MiB, GitLab's
	// default max_yaml_size_bytes.
	MaxExpandedSize = 1 << 20
	// MaxDepth bounds the nesting of the expanded document: 100, GitLab's default
	// max_yaml_depth.
	MaxDepth = 100
	// MaxExpansionSteps bounds the work of expanding extends, default: and merge keys
	// into jobs, counted in keys merged and script lines produced. A pipeline of 2,000
	// jobs with 100 keys and script lines each takes 200,000.
	MaxExpansionSteps = 5_000_000
)

// pathSeg is one step of a key path: a mapping key or a list index.
type pathSeg struct {
	key     string
	index   int
	isIndex bool
}

func joinSegs(segs []pathSeg) string {
	var b strings.Builder
	for _, s := range segs {
		if s.isIndex {
			b.WriteString("[" + strconv.Itoa(s.index) + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s.key)
	}
	return b.String()
}

// aliasCheck walks the document once, in document order, without following aliases.
// An anchor is always defined before its aliases, so when an alias is reached its
// target is either finished (its expanded size and depth are known) or still being
// walked, which means the alias is inside what it names: a cycle.
type aliasCheck struct {
	d    *diags
	path []pathSeg
	// open holds the nodes being walked; done the finished ones, with their measures.
	open map[node]bool
	done map[node]measure
	// biggest is the alias whose expansion is largest, to point at when the file is
	// too large.
	biggest     node
	biggestPath string
	biggestSize int
	deepAt      node
	deepPath    string
	failed      bool
}

// measure is a node's expanded size (saturated just above MaxExpandedSize) and depth,
// and its size as written, aliases not expanded.
type measure struct{ size, depth, written int }

func addSat(a, b int) int { return min(a+b, MaxExpandedSize+1) }

// checkAliases reports alias cycles, and documents whose expansion exceeds
// MaxExpandedSize or MaxDepth. It returns false when the document must not be expanded.
func checkAliases(d *diags, root node) bool {
	a := &aliasCheck{d: d, open: map[node]bool{}, done: map[node]measure{}}
	m := a.walk(root)
	if a.failed {
		return false
	}
	if m.depth > MaxDepth {
		d.errorHint(a.deepAt, a.deepPath, "flatten the structure; GitLab refuses such a file too",
			"the document nests deeper than %d levels (GitLab's default max_yaml_depth)", MaxDepth)
		return false
	}
	if m.size > MaxExpandedSize {
		if a.biggest != nil && m.written <= MaxExpandedSize {
			detail := fmt.Sprintf("*%s here alone expands to more than 1 MiB", a.biggest.Value)
			if a.biggestSize <= MaxExpandedSize {
				detail = fmt.Sprintf("the largest alias, *%s here, expands to %d bytes", a.biggest.Value, a.biggestSize)
			}
			d.errorHint(a.biggest, a.biggestPath,
				"share less through anchors, or use extends: with hidden jobs; GitLab refuses such a file too",
				"YAML aliases expand the file to more than 1 MiB of keys and values (GitLab's default max_yaml_size_bytes); %s",
				detail)
		} else {
			d.errorHint(root, "", "split the pipeline; GitLab refuses such a file too",
				"the file holds more than 1 MiB of keys and values (GitLab's default max_yaml_size_bytes)")
		}
		return false
	}
	return true
}

func (a *aliasCheck) walk(n node) measure {
	if a.failed || n == nil {
		return measure{}
	}
	if n.Kind == yaml.AliasNode {
		t := n.Alias
		if t == nil {
			return measure{}
		}
		if a.open[t] {
			a.failed = true
			a.d.errorHint(n, joinSegs(a.path),
				"a YAML anchor cannot contain itself; move the shared keys into an anchor of their own and merge that",
				"alias *%s refers to the %s that contains it (&%s at line %d), so it would expand forever",
				n.Value, kindName(t), t.Anchor, t.Line)
			return measure{}
		}
		m, ok := a.done[t]
		if !ok {
			// Not reachable for documents from the YAML parser (anchors come first);
			// measure the target in place rather than trust that.
			m = a.walk(t)
		}
		if m.size > a.biggestSize {
			a.biggest, a.biggestPath, a.biggestSize = n, joinSegs(a.path), m.size
		}
		a.noteDepth(n, m.depth)
		m.written = addSat(len(n.Value), 1)
		return m
	}
	if m, ok := a.done[n]; ok {
		return m
	}
	a.open[n] = true
	m := measure{size: addSat(len(n.Value), 1), depth: 1}
	m.written = m.size
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			km := a.walk(k)
			a.path = append(a.path, pathSeg{key: k.Value})
			vm := a.walk(v)
			a.path = a.path[:len(a.path)-1]
			m.size = addSat(m.size, addSat(km.size, vm.size))
			m.written = addSat(m.written, addSat(km.written, vm.written))
			m.depth = max(m.depth, 1+vm.depth)
		}
	case yaml.SequenceNode, yaml.DocumentNode:
		for i, c := range n.Content {
			a.path = append(a.path, pathSeg{index: i, isIndex: true})
			cm := a.walk(c)
			a.path = a.path[:len(a.path)-1]
			m.size = addSat(m.size, cm.size)
			m.written = addSat(m.written, cm.written)
			m.depth = max(m.depth, 1+cm.depth)
		}
	}
	delete(a.open, n)
	a.done[n] = m
	a.noteDepth(n, m.depth)
	return m
}

// noteDepth remembers the first (innermost) node whose subtree is too deep.
func (a *aliasCheck) noteDepth(n node, depth int) {
	if depth > MaxDepth && a.deepAt == nil {
		a.deepAt, a.deepPath = n, joinSegs(a.path)
	}
}

// budgetExceeded is raised (as a panic, caught by Parse) when expanding the jobs takes
// more than MaxExpansionSteps: unwinding from deep inside the merge is simpler than
// checking for it at every level.
type budgetExceeded struct{}

// step counts n units of expansion work.
func (d *diags) step(n int) {
	d.steps += n
	if d.steps > MaxExpansionSteps {
		panic(budgetExceeded{})
	}
}

func (d *diags) budgetError() {
	msg := fmt.Sprintf("expanding extends:, default:, merge keys and parallel: takes more than %d steps (keys merged, script lines and parallel jobs produced); the file multiplies its templates or jobs too often", MaxExpansionSteps)
	hint := "use fewer or smaller templates per job, or split the pipeline"
	if d.job != "" {
		d.errorHint(d.jobNode, d.job, hint, "%s, here while expanding job %q", msg, d.job)
		return
	}
	d.errorHint(nil, "", hint, "%s", msg)
}
