package pipeline

import (
	"fmt"
	"slices"
	"strconv"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// defaultKeys are the keywords default: takes, which inherit:default can name.
var defaultKeys = []string{"image", "before_script", "after_script", "timeout", "services", "tags", "cache",
	"artifacts", "retry", "interruptible", "hooks", "id_tokens"}

// inheritSet is one part of a job's inherit:: true (all, the default), false (none),
// or the names listed.
type inheritSet struct {
	none  bool
	names []string // nil: every one (unless none)
}

func (s inheritSet) has(name string) bool {
	if s.none {
		return false
	}
	return s.names == nil || slices.Contains(s.names, name)
}

// inheritance is a job's inherit: keyword.
type inheritance struct {
	defaults, variables inheritSet
}

// parseInherit reads inherit: {default: true|false|[keywords], variables:
// true|false|[names]}.
func parseInherit(d *diags, n node, path string) inheritance {
	var in inheritance
	m := mapping(d, n, path)
	if m == nil {
		return in
	}
	for _, kv := range d.pairs(m) {
		p := path + "." + kv.key.Value
		switch kv.key.Value {
		case "default":
			in.defaults = parseInheritSet(d, kv.value, p, func(i int, at node, name string) {
				if !slices.Contains(defaultKeys, name) {
					d.errorHint(at, fmt.Sprintf("%s[%d]", p, i), suggestOr(name, defaultKeys), "%q is not a default: keyword", name)
				}
			})
		case "variables":
			in.variables = parseInheritSet(d, kv.value, p, func(i int, at node, name string) {
				if !varName.MatchString(name) {
					d.errorHint(at, fmt.Sprintf("%s[%d]", p, i), "use letters, digits and underscores, not starting with a digit", "invalid variable name %q", name)
				}
			})
		default:
			d.errorHint(kv.key, p, "allowed: default, variables", "unknown inherit keyword %q", kv.key.Value)
		}
	}
	return in
}

// parseInheritSet reads true, false or a list of names, each checked by check.
func parseInheritSet(d *diags, n node, path string, check func(i int, at node, name string)) inheritSet {
	v := resolve(n)
	if v.Kind == yaml.SequenceNode {
		s := inheritSet{names: []string{}}
		for i, it := range seq(d, v, path) {
			name := scalar(d, it, fmt.Sprintf("%s[%d]", path, i))
			if name != "" {
				check(i, resolve(it), name)
				s.names = append(s.names, name)
			}
		}
		return s
	}
	b, err := strconv.ParseBool(scalar(d, v, path))
	if err != nil {
		d.errorHint(v, path, "write true, false or a list of names", "expected true, false or a list")
		return inheritSet{}
	}
	return inheritSet{none: !b}
}

// inherited returns the global variables s lets a job inherit.
func (s inheritSet) inherited(vs jobs.Variables) jobs.Variables {
	if s.none {
		return nil
	}
	if s.names == nil {
		return vs
	}
	return slices.DeleteFunc(slices.Clone(vs), func(v jobs.Variable) bool { return !slices.Contains(s.names, v.Key) })
}
