package config

import (
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// pos is a 1-based line and column in the file.
type pos struct{ line, col int }

// tnode is one value of the document with the place it was written. go-toml's decoder
// forgets positions after decoding, so the loader keeps this tree to point value-level
// problems (bad duration, idle_time < 1s, …) at the key that holds the value.
type tnode struct {
	// kind is unstable.Table for tables (header, dotted or inline), unstable.ArrayTable
	// for arrays of tables, unstable.Array for arrays, else the scalar kind.
	kind  unstable.Kind
	at    pos
	data  string
	keys  []string // table: children in file order
	child map[string]*tnode
	elems []*tnode // array or array of tables
}

func newTable(at pos) *tnode {
	return &tnode{kind: unstable.Table, at: at, child: map[string]*tnode{}}
}

func (n *tnode) get(k string) *tnode {
	if n == nil || n.child == nil {
		return nil
	}
	return n.child[k]
}

func (n *tnode) set(k string, c *tnode) {
	if _, ok := n.child[k]; !ok {
		n.keys = append(n.keys, k)
	}
	n.child[k] = c
}

// buildTree turns a document that go-toml already accepted into a tnode tree. It
// trusts the document to be valid TOML, so conflicts (which the decoder rejects first)
// are resolved leniently rather than reported.
func buildTree(data []byte) (*tnode, error) {
	var p unstable.Parser
	p.Reset(data)
	root := newTable(pos{1, 1})
	cur := root
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue:
			addKeyValue(&p, cur, e)
		case unstable.Table:
			cur = descend(&p, root, e, false)
		case unstable.ArrayTable:
			cur = descend(&p, root, e, true)
		}
	}
	return root, p.Error()
}

func keyParts(p *unstable.Parser, it unstable.Iterator) ([]string, []pos) {
	var ks []string
	var ps []pos
	for it.Next() {
		n := it.Node()
		ks = append(ks, string(n.Data))
		ps = append(ps, nodePos(p, n, pos{}))
	}
	return ks, ps
}

func nodePos(p *unstable.Parser, n *unstable.Node, fallback pos) pos {
	if n == nil || n.Raw.Length == 0 {
		return fallback
	}
	s := p.Shape(n.Raw)
	return pos{s.Start.Line, s.Start.Column}
}

// descend walks a [table] or [[array.table]] header from the root, creating what is
// missing, and returns the table that following key/values go into.
func descend(p *unstable.Parser, root *tnode, e *unstable.Node, array bool) *tnode {
	ks, ps := keyParts(p, e.Key())
	cur := root
	for i, k := range ks {
		last := i == len(ks)-1
		c := cur.get(k)
		switch {
		case last && array:
			if c == nil || c.kind != unstable.ArrayTable {
				c = &tnode{kind: unstable.ArrayTable, at: ps[i]}
				cur.set(k, c)
			}
			t := newTable(ps[i])
			c.elems = append(c.elems, t)
			return t
		case c == nil:
			c = newTable(ps[i])
			cur.set(k, c)
		case c.kind == unstable.ArrayTable && len(c.elems) > 0:
			c = c.elems[len(c.elems)-1]
		case c.kind != unstable.Table:
			c = newTable(ps[i])
			cur.set(k, c)
		}
		if last {
			c.at = ps[i]
		}
		cur = c
	}
	return cur
}

func addKeyValue(p *unstable.Parser, t *tnode, e *unstable.Node) {
	ks, ps := keyParts(p, e.Key())
	cur := t
	for i, k := range ks[:len(ks)-1] {
		c := cur.get(k)
		if c == nil || c.kind != unstable.Table {
			c = newTable(ps[i])
			cur.set(k, c)
		}
		cur = c
	}
	at := ps[len(ps)-1]
	cur.set(ks[len(ks)-1], buildValue(p, e.Value(), at))
}

func buildValue(p *unstable.Parser, v *unstable.Node, at pos) *tnode {
	switch v.Kind {
	case unstable.Array:
		n := &tnode{kind: unstable.Array, at: at}
		it := v.Children()
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			n.elems = append(n.elems, buildValue(p, c, nodePos(p, c, at)))
		}
		return n
	case unstable.InlineTable:
		n := newTable(at)
		it := v.Children()
		for it.Next() {
			c := it.Node()
			if c.Kind == unstable.KeyValue {
				addKeyValue(p, n, c)
			}
		}
		return n
	default:
		return &tnode{kind: v.Kind, at: at, data: string(v.Data)}
	}
}

// joinPath appends a key to a display path, quoting keys that are not bare.
func joinPath(path, key string) string {
	k := key
	if !isBareKey(k) {
		k = strconv.Quote(k)
	}
	if path == "" {
		return k
	}
	return path + "." + k
}

func indexPath(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func isBareKey(k string) bool {
	if k == "" {
		return false
	}
	return strings.IndexFunc(k, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) < 0
}

// kindName names a TOML value kind the way a user writes it.
func kindName(k unstable.Kind) string {
	switch k {
	case unstable.Table:
		return "table"
	case unstable.ArrayTable:
		return "array of tables"
	case unstable.Array:
		return "array"
	case unstable.String:
		return "string"
	case unstable.Bool:
		return "boolean"
	case unstable.Float:
		return "float"
	case unstable.Integer:
		return "integer"
	case unstable.LocalDate, unstable.LocalTime, unstable.LocalDateTime, unstable.DateTime:
		return "date/time"
	}
	return k.String()
}
