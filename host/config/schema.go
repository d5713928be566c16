package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/flotilla-ci/flotilla/host/internal/didyoumean"
)

var (
	durationType   = reflect.TypeOf(Duration{})
	stringListType = reflect.TypeOf(StringList{})
)

// checker walks the position tree against the Go types of Config. It reports every
// unknown key (warning) and every wrongly typed value (error) in one pass, where the
// decoder would stop at the first, and it records where each key path was written.
type checker struct {
	file  string
	diags Diagnostics
	where map[string]pos
	// scopes are the enclosing tables being walked, innermost last, so that a key
	// written in the wrong table can be pointed at the table that has it.
	scopes []scope
}

type scope struct {
	path  string
	known []string
}

func (c *checker) add(sev Severity, at pos, path, msg, hint string) {
	c.diags = append(c.diags, Diagnostic{Severity: sev, File: c.file, Line: at.line, Column: at.col,
		Path: path, Message: msg, Hint: hint})
}

// tomlFields maps each toml tag of a struct type to its field index.
func tomlFields(t reflect.Type) (map[string]int, []string) {
	m := map[string]int{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("toml"), ",")[0]
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		m[tag] = i
		names = append(names, tag)
	}
	return m, names
}

// walk checks n against t. g is the same value as go-toml decoded it into a generic
// map; walk removes from g whatever it reports as an error, so that the rest can still
// be decoded and its values checked. It returns true when n itself must be removed.
func (c *checker) walk(n *tnode, g any, t reflect.Type, path string) (drop bool) {
	c.where[path] = n.at
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == durationType:
		if n.kind != unstable.String {
			return c.typeError(n, path, "duration string such as \"20m0s\"")
		}
		d, err := time.ParseDuration(n.data)
		if err != nil {
			c.add(Error, n.at, path, fmt.Sprintf("invalid duration %q", n.data),
				"write a Go duration: a number with a unit, e.g. \"90s\", \"20m0s\", \"1h30m\"")
			return true
		}
		if d < 0 {
			c.add(Error, n.at, path, fmt.Sprintf("duration %q is negative", n.data), "use a positive duration, or 0s for the default")
			return true
		}
		return false
	case t == stringListType:
		if n.kind == unstable.String {
			return false
		}
		if n.kind != unstable.Array {
			return c.typeError(n, path, "string or array of strings")
		}
		bad := false
		for i, e := range n.elems {
			bad = c.walk(e, nil, reflect.TypeOf(""), indexPath(path, i)) || bad
		}
		return bad
	}
	switch t.Kind() {
	case reflect.Interface:
		c.index(n, path)
	case reflect.Struct:
		if n.kind != unstable.Table {
			return c.typeError(n, path, "table")
		}
		gm, _ := g.(map[string]any)
		fields, names := tomlFields(t)
		c.scopes = append(c.scopes, scope{path, names})
		defer func() { c.scopes = c.scopes[:len(c.scopes)-1] }()
		for _, k := range n.keys {
			child := n.child[k]
			p := joinPath(path, k)
			i, ok := fields[k]
			if !ok {
				// GitLab Runner's TOML decoder, like go-toml, falls back to matching
				// field names ignoring case, so such a key is read: say so.
				if fold := foldMatch(k, names); fold != "" {
					c.add(Warning, child.at, p, fmt.Sprintf("key %q is read as %q (keys match ignoring case)", k, fold),
						fmt.Sprintf("write %q", fold))
					if c.walk(child, gm[k], t.Field(fields[fold]).Type, joinPath(path, fold)) {
						delete(gm, k)
					}
					continue
				}
				c.index(child, p)
				hint := ""
				if s := suggest(k, names); s != "" {
					hint = fmt.Sprintf("did you mean %q?", s)
				} else if outer := c.enclosingWith(k); outer != "" {
					hint = fmt.Sprintf("did you mean %s? the key belongs to an enclosing table", outer)
				}
				c.add(Warning, child.at, p, fmt.Sprintf("unknown key %q is ignored", k), hint)
				delete(gm, k)
				continue
			}
			if c.walk(child, gm[k], t.Field(i).Type, p) {
				delete(gm, k)
			}
		}
	case reflect.Map:
		if n.kind != unstable.Table {
			return c.typeError(n, path, "table")
		}
		gm, _ := g.(map[string]any)
		for _, k := range n.keys {
			if c.walk(n.child[k], gm[k], t.Elem(), joinPath(path, k)) {
				delete(gm, k)
			}
		}
	case reflect.Slice:
		if n.kind != unstable.Array && n.kind != unstable.ArrayTable {
			want := "array"
			if t.Elem().Kind() == reflect.Struct {
				want = "array of tables ([[" + lastKey(path) + "]])"
			}
			return c.typeError(n, path, want)
		}
		ga, _ := g.([]any)
		bad := false
		for i, e := range n.elems {
			var ge any
			if i < len(ga) {
				ge = ga[i]
			}
			// A bad element of a table array is cleaned inside; a bad scalar element
			// spoils the array, which is then dropped whole.
			if c.walk(e, ge, t.Elem(), indexPath(path, i)) {
				bad = true
			}
		}
		return bad
	case reflect.String:
		return c.expect(n, path, "string", unstable.String)
	case reflect.Bool:
		return c.expect(n, path, "boolean (true or false)", unstable.Bool)
	case reflect.Int, reflect.Int64, reflect.Int32:
		return c.expect(n, path, "integer", unstable.Integer)
	case reflect.Float64, reflect.Float32:
		return c.expect(n, path, "number", unstable.Float, unstable.Integer)
	}
	return false
}

func foldMatch(k string, names []string) string {
	for _, n := range names {
		if strings.EqualFold(n, k) {
			return n
		}
	}
	return ""
}

// enclosingWith returns the path of k in the nearest enclosing table that knows it.
func (c *checker) enclosingWith(k string) string {
	for i := len(c.scopes) - 2; i >= 0; i-- {
		if slices.Contains(c.scopes[i].known, k) {
			return joinPath(c.scopes[i].path, k)
		}
	}
	return ""
}

// index records the positions of everything below an untyped value (plugin_config …).
func (c *checker) index(n *tnode, path string) {
	c.where[path] = n.at
	for _, k := range n.keys {
		c.index(n.child[k], joinPath(path, k))
	}
	for i, e := range n.elems {
		c.index(e, indexPath(path, i))
	}
}

func (c *checker) expect(n *tnode, path, want string, kinds ...unstable.Kind) bool {
	for _, k := range kinds {
		if n.kind == k {
			return false
		}
	}
	return c.typeError(n, path, want)
}

// typeError reports a wrongly typed value; it returns true (drop the value).
func (c *checker) typeError(n *tnode, path, want string) bool {
	hint := "write a " + want
	switch {
	case strings.HasPrefix(want, "integer") && n.kind == unstable.String:
		hint = "remove the quotes around the number"
	case strings.HasPrefix(want, "boolean") && n.kind == unstable.String:
		hint = "write true or false without quotes"
	case strings.HasPrefix(want, "duration") && (n.kind == unstable.Integer || n.kind == unstable.Float):
		hint = "durations are strings with a unit, e.g. \"" + n.data + "s\""
	case want == "array" && n.kind == unstable.String:
		hint = "put the value in brackets: [\"" + n.data + "\"]"
	}
	c.add(Error, n.at, path, fmt.Sprintf("wrong type: got %s, want %s", kindName(n.kind), want), hint)
	return true
}

func lastKey(path string) string {
	if i := strings.LastIndexByte(path, '.'); i >= 0 {
		path = path[i+1:]
	}
	if i := strings.IndexByte(path, '['); i >= 0 {
		path = path[:i]
	}
	return path
}

// suggest returns the known key closest to k, or "".
func suggest(k string, known []string) string { return didyoumean.Closest(k, known) }
