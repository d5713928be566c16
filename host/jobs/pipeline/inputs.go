package pipeline

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// inputArg is a value given for a spec input: a node of an include's inputs:, or a
// string from the command line (at is nil then).
type inputArg struct {
	at  node
	str string
}

// includeInputs reads the inputs: of an include entry.
func (l *loader) includeInputs(p string, n node) (map[string]inputArg, bool) {
	if n == nil {
		return nil, true
	}
	m := mapping(l.d, n, p+".inputs")
	if m == nil {
		return nil, false
	}
	out := map[string]inputArg{}
	for _, kv := range l.d.pairs(m) {
		out[kv.key.Value] = inputArg{at: kv.value}
	}
	return out, true
}

// inputTypes are the types a spec input may declare.
var inputTypes = []string{"string", "number", "boolean", "array"}

// inputs checks the values given for a file's spec:inputs against the header and
// returns each input's value as a node, defaults applied.
func (l *loader) inputs(src source, header node, args map[string]inputArg) (map[string]node, bool) {
	d := l.d
	errsBefore := len(d.errs)
	var decls []pair
	for _, kv := range d.pairs(resolve(header)) {
		if kv.key.Value != "spec" {
			d.errorHint(kv.key, kv.key.Value, "the header document holds spec: only; jobs go after ---", "unknown header keyword %q", kv.key.Value)
			continue
		}
		spec := resolve(kv.value)
		if spec.Tag == "!!null" {
			continue
		}
		if mapping(d, spec, "spec") == nil {
			continue
		}
		for _, f := range d.pairs(spec) {
			switch f.key.Value {
			case "inputs":
				if in := resolve(f.value); in.Tag != "!!null" && mapping(d, in, "spec.inputs") != nil {
					decls = d.pairs(in)
				}
			case "description", "component":
			default:
				d.warnf(f.key, "spec."+f.key.Value, "ignored by runner exec")
			}
		}
	}
	values := map[string]node{}
	declared := map[string]bool{}
	for _, decl := range decls {
		name := decl.key.Value
		declared[name] = true
		p := "spec.inputs." + name
		typ, def, options, re := "string", node(nil), []node(nil), ""
		if dm := resolve(decl.value); dm.Tag != "!!null" {
			if mapping(d, dm, p) == nil {
				continue
			}
			for _, f := range d.pairs(dm) {
				switch f.key.Value {
				case "type":
					typ = scalar(d, f.value, p+".type")
					if !slices.Contains(inputTypes, typ) {
						d.errorHint(f.value, p+".type", "use string, number, boolean or array", "unknown input type %q", typ)
					}
				case "default":
					def = resolve(f.value)
				case "options":
					options = seq(d, f.value, p+".options")
				case "regex":
					re = scalar(d, f.value, p+".regex")
				case "description":
				case "rules":
					d.warnf(f.key, p+".rules", "input rules are not evaluated by runner exec; default: and options: apply")
				default:
					d.errorHint(f.key, p+"."+f.key.Value, "allowed: default, type, options, regex, description", "unknown input keyword %q", f.key.Value)
				}
			}
		}
		if len(d.errs) > errsBefore {
			continue
		}
		a, given := args[name]
		var v node
		switch {
		case given && a.at != nil:
			v = resolve(a.at)
		case given:
			var err error
			if v, err = fromFlag(typ, a.str); err != nil {
				d.errorHint(decl.key, p, fmt.Sprintf("give --input %s=VALUE a %s", name, typ), "input %q: %v", name, err)
				continue
			}
		case def != nil:
			v = def
		default:
			d.errorHint(decl.key, p, fmt.Sprintf("give it with --input %s=VALUE, or under inputs: of the include", name),
				"%s requires input %q, which has no default and was not given", src.name, name)
			continue
		}
		at := v
		if given && a.at != nil {
			at = a.at
		} else if given {
			at = decl.key
		}
		if msg := checkType(v, typ); msg != "" {
			d.errorf(at, p, "input %q: %s", name, msg)
			continue
		}
		if options != nil && !slices.ContainsFunc(options, func(o node) bool { return sameValue(resolve(o), v) }) {
			var opts []string
			for _, o := range options {
				opts = append(opts, resolve(o).Value)
			}
			d.errorHint(at, p, "use one of: "+strings.Join(opts, ", "), "input %q: %s is not one of the options", name, valueText(v))
			continue
		}
		if re != "" && typ == "string" {
			rx, err := regexp.Compile(strings.TrimSuffix(strings.TrimPrefix(re, "/"), "/"))
			if err != nil {
				d.errorf(decl.key, p+".regex", "input %q: invalid regex: %v", name, err)
				continue
			}
			if !rx.MatchString(v.Value) {
				d.errorf(at, p, "input %q: %q does not match %s", name, v.Value, re)
				continue
			}
		}
		values[name] = v
	}
	for _, name := range slices.Sorted(maps.Keys(args)) {
		if !declared[name] {
			a := args[name]
			at := a.at
			if at == nil {
				at = resolve(header)
			}
			d.errorHint(at, "inputs."+name, suggestOr(name, slices.Sorted(maps.Keys(declared))),
				"%s declares no input %q", src.name, name)
		}
	}
	return values, len(d.errs) == errsBefore
}

// fromFlag converts a command-line input value to a node of the declared type.
func fromFlag(typ, s string) (node, error) {
	switch typ {
	case "number":
		if _, err := strconv.ParseFloat(s, 64); err != nil {
			return nil, fmt.Errorf("%q is not a number", s)
		}
		tag := "!!float"
		if _, err := strconv.ParseInt(s, 10, 64); err == nil {
			tag = "!!int"
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: s}, nil
	case "boolean":
		if s != "true" && s != "false" {
			return nil, fmt.Errorf("%q is not true or false", s)
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: s}, nil
	case "array":
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(s), &doc); err != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.SequenceNode {
			return nil, fmt.Errorf("%q is not an array such as [a, b]", s)
		}
		return doc.Content[0], nil
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}, nil
}

// checkType says what is wrong with v as a value of type typ, or "".
func checkType(v node, typ string) string {
	switch typ {
	case "array":
		if v.Kind != yaml.SequenceNode {
			return "expected an array, got a " + kindName(v)
		}
	case "number":
		if v.Kind != yaml.ScalarNode || (v.Tag != "!!int" && v.Tag != "!!float") {
			return fmt.Sprintf("%s is not a number", valueText(v))
		}
	case "boolean":
		if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" {
			return fmt.Sprintf("%s is not true or false", valueText(v))
		}
	default:
		if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
			return "expected a string, got a " + kindName(v)
		}
	}
	return ""
}

func sameValue(a, b node) bool {
	return a.Kind == yaml.ScalarNode && b.Kind == yaml.ScalarNode && a.Value == b.Value
}

// valueText is a value as interpolation writes it into a string: scalars as they
// are, arrays as JSON.
func valueText(v node) string {
	if v.Kind == yaml.ScalarNode {
		return v.Value
	}
	var x any
	if err := v.Decode(&x); err == nil {
		if b, err := json.Marshal(x); err == nil {
			return string(b)
		}
	}
	return ""
}

var interpolation = regexp.MustCompile(`\$\[\[\s*(.*?)\s*\]\]`)

// interpolate replaces $[[ inputs.name ]] in the keys and values of a document, in
// place. A value that is exactly one interpolation takes the input's type (an array
// becomes a list); inside a longer string the value is written as text. The text
// produced is bounded by MaxExpandedSize.
func interpolate(d *diags, doc node, values map[string]node) bool {
	ip := &interpolator{d: d, values: values, seen: map[node]bool{}}
	ip.walk(doc, false)
	return !ip.failed
}

type interpolator struct {
	d      *diags
	values map[string]node
	seen   map[node]bool
	size   int
	failed bool
}

// walk interpolates n and what it contains; isKey says n is a mapping key, which
// stays a string.
func (ip *interpolator) walk(n node, isKey bool) {
	if n == nil || n.Kind == yaml.AliasNode || ip.seen[n] || ip.failed {
		return
	}
	ip.seen[n] = true
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "$[[") {
		ip.scalar(n, isKey)
		return
	}
	for i, c := range n.Content {
		ip.walk(c, n.Kind == yaml.MappingNode && i%2 == 0)
	}
}

func (ip *interpolator) scalar(n node, isKey bool) {
	if m := interpolation.FindStringSubmatchIndex(n.Value); !isKey && m != nil && m[0] == 0 && m[1] == len(n.Value) {
		v, ok := ip.value(n, n.Value[m[2]:m[3]])
		if !ok {
			return
		}
		if v.Kind != yaml.ScalarNode || v.Tag != "!!str" {
			ip.size += len(valueText(v))
			line, col, style := n.Line, n.Column, n.Style
			*n = *v
			n.Line, n.Column, n.Style, n.Anchor = line, col, style&^(yaml.LiteralStyle|yaml.FoldedStyle), ""
			ip.check(n)
			return
		}
	}
	var failed bool
	out := interpolation.ReplaceAllStringFunc(n.Value, func(s string) string {
		expr := interpolation.FindStringSubmatch(s)[1]
		v, ok := ip.value(n, expr)
		if !ok {
			failed = true
			return s
		}
		t := valueText(v)
		ip.size += len(t)
		return t
	})
	if failed {
		return
	}
	n.Value, n.Tag = out, "!!str"
	ip.check(n)
}

func (ip *interpolator) check(n node) {
	if ip.size > MaxExpandedSize && !ip.failed {
		ip.failed = true
		ip.d.errorHint(n, "", "pass smaller inputs, or use them in fewer places",
			"inputs interpolate to more than %d bytes", MaxExpandedSize)
	}
}

// value evaluates "inputs.name | fn | …".
func (ip *interpolator) value(at node, expr string) (node, bool) {
	d := ip.d
	parts := strings.Split(expr, "|")
	ref := strings.TrimSpace(parts[0])
	name, ok := strings.CutPrefix(ref, "inputs.")
	if !ok {
		ip.failed = true
		d.errorHint(at, "", "write $[[ inputs.NAME ]]", "unknown interpolation %q", "$[[ "+expr+" ]]")
		return nil, false
	}
	v, ok := ip.values[name]
	if !ok {
		ip.failed = true
		known := slices.Sorted(maps.Keys(ip.values))
		hint := "declare it under spec: inputs: in the header document"
		if s := suggest(name, known); s != "" {
			hint = s
		}
		d.errorHint(at, "", hint, "unknown input %q in $[[ %s ]]", name, expr)
		return nil, false
	}
	for _, fn := range parts[1:] {
		fn = strings.TrimSpace(fn)
		s := valueText(v)
		switch {
		case fn == "expand_vars":
			// Variables are expanded when the job runs; runner exec keeps the text.
		case fn == "posix_escape":
			s = posixEscape(s)
		case strings.HasPrefix(fn, "truncate(") && strings.HasSuffix(fn, ")"):
			args := strings.Split(strings.TrimSuffix(strings.TrimPrefix(fn, "truncate("), ")"), ",")
			var nums []int
			for _, a := range args {
				if n, err := strconv.Atoi(strings.TrimSpace(a)); err == nil && n >= 0 {
					nums = append(nums, n)
				}
			}
			if len(nums) != 2 {
				ip.failed = true
				d.errorHint(at, "", "write truncate(OFFSET, LENGTH)", "invalid function %q", fn)
				return nil, false
			}
			off, n := min(nums[0], len(s)), nums[1]
			s = s[off:min(len(s), off+n)]
		default:
			ip.failed = true
			d.errorHint(at, "", "runner exec supports expand_vars, truncate and posix_escape", "unknown interpolation function %q", fn)
			return nil, false
		}
		v = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
	}
	return v, true
}

// posixEscape backslash-escapes what a POSIX shell would interpret.
func posixEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.,:/@\n", r)) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
