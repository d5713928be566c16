// Package expr parses and evaluates GitLab's CI/CD variable expressions, the
// language of `rules:if`, `workflow:rules:if` and `only`/`except:variables`.
//
// # Grammar
//
//	expr       = and { "||" and }
//	and        = term { "&&" term }
//	term       = "(" expr ")" | comparison
//	comparison = operand [ ( "==" | "!=" ) operand ]
//	           | operand ( "=~" | "!~" ) ( operand | pattern )
//	operand    = variable | string | "null"
//	variable   = "$" name | "${" name "}"        (name: ASCII letters, digits, _)
//	string     = '"' { any char but '"' } '"' | "'" { any char but "'" } "'"
//	pattern    = "/" body "/" { "i" | "m" | "s" | "U" }
//
// `${NAME}` is accepted as a convenience and printed as `$NAME`; GitLab's own
// lexer accepts only `$NAME`. Whitespace separates tokens and is otherwise ignored. && binds tighter than ||,
// as GitLab documents (it follows Ruby's precedence); both are left-associative
// and short-circuit. Comparisons do not chain: `$A == $B == $C` is an error.
// Strings have no escapes (as in GitLab), so a string holding a double quote is
// written with single quotes and vice versa. Inside a pattern, `\/` stands for a
// slash; every other backslash sequence is passed to the regular expression. A
// pattern is at least two characters long (GitLab rejects `/./`), may only be the
// right operand of =~ or !~, and is compiled by CompileRegexp: RE2's syntax, which
// GitLab matches with, plus the Ruby escapes \Z, \h and \H. An expression has at
// most 100 tokens, GitLab's limit.
//
// # Semantics
//
// A variable that lookup does not know is null; a known variable is a string,
// possibly empty. Then:
//
//   - `x == y` is true when both are null or both are equal strings; null is not
//     equal to "" (so `$UNDEFINED == null` is true, `$UNDEFINED == ""` false,
//     `$EMPTY == ""` true, `$EMPTY == null` false). `!=` is its negation.
//   - `x =~ /re/flags` is true when re matches anywhere in x (anchor with ^ and $);
//     null on the left is matched as "". The flags are RE2's: i (case-insensitive),
//     m (^ and $ match at line breaks), s (. matches \n), U (ungreedy).
//   - When the right operand of =~ is a variable or a string, its value is used as a
//     pattern if it has the form /body/flags and compiles (GitLab 15.1+); a null
//     right operand never matches; any other value falls back to GitLab's
//     documented (and discouraged) behaviour: true when the left value is a
//     substring of the right value. `!~` is the negation of =~.
//   - An operand on its own (`$VAR`, `"text"`, `null`) is true when it is a
//     non-empty string, so `$VAR` means "defined and not empty". This holds inside
//     && and || too, as GitLab documents it.
//
// Parse errors are *SyntaxError values naming the 1-based column (in characters)
// of the offending token and what to do about it.
package expr

import (
	"errors"
	"regexp"
	"strconv"
	"strings"
)

// MaxTokens is the most tokens an expression may have; GitLab rejects longer ones.
const MaxTokens = 100

// Expr is a parsed expression. It is immutable and safe for concurrent use.
type Expr struct {
	root node
}

// Parse parses src, reporting the first problem as a *SyntaxError.
func Parse(src string) (*Expr, error) {
	toks, err := lex(src)
	if err != nil {
		return nil, err
	}
	p := &parser{src: src, toks: toks}
	if len(toks) == 1 { // only tokEOF
		return nil, p.errAt(toks[0], "empty expression", "write a condition such as $CI_COMMIT_BRANCH == \"main\"")
	}
	root, err := p.parseOr()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != tokEOF {
		return nil, p.unexpected(t)
	}
	return &Expr{root: root}, nil
}

// MustParse is like Parse but panics on error; it is meant for expressions
// written in Go source, such as tests.
func MustParse(src string) *Expr {
	e, err := Parse(src)
	if err != nil {
		panic("expr.MustParse(" + src + "): " + err.Error())
	}
	return e
}

// Eval evaluates the expression. lookup returns a variable's value and whether
// it is defined; a nil lookup defines no variables. The error is reserved for
// failures at evaluation time; GitLab's language has none today (a variable that
// does not hold a valid pattern falls back to a substring test, as in GitLab), so
// every expression that parses evaluates without error.
func (e *Expr) Eval(lookup func(name string) (string, bool)) (bool, error) {
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	return e.root.eval(lookup), nil
}

// String returns the canonical form of the expression: single spaces around
// operators, `$NAME` for variables, double quotes unless the string holds one,
// flags in the order imsU, and only the parentheses the precedence needs.
// Parse(e.String()) yields an expression with the same String.
func (e *Expr) String() string {
	var b strings.Builder
	e.root.format(&b)
	return b.String()
}

// Variables returns the names of the variables the expression refers to, each
// once, in order of first appearance.
func (e *Expr) Variables() []string {
	var names []string
	seen := map[string]bool{}
	e.root.walk(func(o *operand) {
		if o.kind == opVar && !seen[o.text] {
			seen[o.text] = true
			names = append(names, o.text)
		}
	})
	return names
}

// SyntaxError is a problem found while parsing an expression.
type SyntaxError struct {
	// Column is the 1-based position, in characters, of the offending token.
	Column int
	// Msg says what is wrong.
	Msg string
	// Hint says what to do; it may be empty.
	Hint string
}

// Error formats the error as "column N: message (hint)".
func (e *SyntaxError) Error() string {
	s := "column " + strconv.Itoa(e.Column) + ": " + e.Msg
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// ColumnOf returns the column of a *SyntaxError in err's chain, or 0.
func ColumnOf(err error) int {
	var se *SyntaxError
	if errors.As(err, &se) {
		return se.Column
	}
	return 0
}

// node is an element of the parse tree.
type node interface {
	eval(lookup func(string) (string, bool)) bool
	format(b *strings.Builder)
	walk(fn func(*operand))
}

// orNode and andNode hold two or more terms; nested groups of the same kind are
// flattened, which changes nothing since both operators are associative.
type orNode struct{ terms []node }
type andNode struct{ terms []node }

func (n *orNode) eval(lookup func(string) (string, bool)) bool {
	for _, t := range n.terms {
		if t.eval(lookup) {
			return true
		}
	}
	return false
}

func (n *andNode) eval(lookup func(string) (string, bool)) bool {
	for _, t := range n.terms {
		if !t.eval(lookup) {
			return false
		}
	}
	return true
}

func (n *orNode) format(b *strings.Builder) {
	for i, t := range n.terms {
		if i > 0 {
			b.WriteString(" || ")
		}
		t.format(b)
	}
}

func (n *andNode) format(b *strings.Builder) {
	for i, t := range n.terms {
		if i > 0 {
			b.WriteString(" && ")
		}
		if _, isOr := t.(*orNode); isOr {
			b.WriteByte('(')
			t.format(b)
			b.WriteByte(')')
		} else {
			t.format(b)
		}
	}
}

func (n *orNode) walk(fn func(*operand)) {
	for _, t := range n.terms {
		t.walk(fn)
	}
}

func (n *andNode) walk(fn func(*operand)) {
	for _, t := range n.terms {
		t.walk(fn)
	}
}

// truthNode is an operand used as a condition: true when it is a non-empty string.
type truthNode struct{ o *operand }

func (n *truthNode) eval(lookup func(string) (string, bool)) bool {
	v, ok := n.o.value(lookup)
	return ok && v != ""
}

func (n *truthNode) format(b *strings.Builder) { n.o.format(b) }
func (n *truthNode) walk(fn func(*operand))    { fn(n.o) }

// cmpNode is a comparison: ==, !=, =~ or !~.
type cmpNode struct {
	op          string
	left, right *operand
}

func (n *cmpNode) eval(lookup func(string) (string, bool)) bool {
	switch n.op {
	case "==":
		return n.equal(lookup)
	case "!=":
		return !n.equal(lookup)
	case "=~":
		return n.match(lookup)
	default: // "!~"
		return !n.match(lookup)
	}
}

func (n *cmpNode) equal(lookup func(string) (string, bool)) bool {
	lv, lok := n.left.value(lookup)
	rv, rok := n.right.value(lookup)
	if !lok || !rok {
		return lok == rok // null equals only null
	}
	return lv == rv
}

func (n *cmpNode) match(lookup func(string) (string, bool)) bool {
	text, _ := n.left.value(lookup) // null is matched as ""
	if n.right.kind == opPattern {
		return n.right.re.MatchString(text)
	}
	rv, ok := n.right.value(lookup)
	if !ok {
		return false
	}
	if re := patternValue(rv); re != nil {
		return re.MatchString(text)
	}
	// GitLab's documented fallback for a right side that is not a pattern.
	return strings.Contains(rv, text)
}

func (n *cmpNode) format(b *strings.Builder) {
	n.left.format(b)
	b.WriteString(" " + n.op + " ")
	n.right.format(b)
}

func (n *cmpNode) walk(fn func(*operand)) {
	fn(n.left)
	fn(n.right)
}

type operandKind int

const (
	opVar operandKind = iota
	opString
	opNull
	opPattern
)

// operand is a value: a variable, a string, null, or a pattern.
type operand struct {
	kind operandKind
	// text is the variable name, the string's contents, or the pattern's body
	// with `\/` already turned into `/`.
	text  string
	flags string         // pattern flags, canonical order
	re    *regexp.Regexp // compiled pattern
}

// value returns the operand's string value and false for null.
func (o *operand) value(lookup func(string) (string, bool)) (string, bool) {
	switch o.kind {
	case opVar:
		return lookup(o.text)
	case opString:
		return o.text, true
	default:
		return "", false
	}
}

func (o *operand) format(b *strings.Builder) {
	switch o.kind {
	case opVar:
		b.WriteString("$" + o.text)
	case opString:
		q := `"`
		if strings.Contains(o.text, `"`) {
			q = `'` // strings have no escapes; the lexer guarantees no ' here
		}
		b.WriteString(q + o.text + q)
	case opNull:
		b.WriteString("null")
	case opPattern:
		b.WriteString("/" + strings.ReplaceAll(o.text, "/", `\/`) + "/" + o.flags)
	}
}

// flagOrder is the canonical order of pattern flags; these are the flags GitLab
// accepts and RE2 (and Go's regexp) understands.
const flagOrder = "imsU"

// canonFlags returns flags deduplicated in flagOrder, or false if one is unknown.
func canonFlags(flags string) (string, byte, bool) {
	for i := 0; i < len(flags); i++ {
		if !strings.ContainsRune(flagOrder, rune(flags[i])) {
			return "", flags[i], false
		}
	}
	var out []byte
	for i := 0; i < len(flagOrder); i++ {
		if strings.IndexByte(flags, flagOrder[i]) >= 0 {
			out = append(out, flagOrder[i])
		}
	}
	return string(out), 0, true
}

// patternValue turns a string value of the form /body/flags into a regexp, as
// GitLab does for the right operand of =~ and !~; it returns nil for any other
// value or for one that does not compile. The body runs to the last slash, so it
// may hold unescaped slashes, and `\/` stands for a slash.
func patternValue(v string) *regexp.Regexp {
	if len(v) < 2 || v[0] != '/' {
		return nil
	}
	end := strings.LastIndexByte(v, '/')
	if end == 0 {
		return nil
	}
	flags, _, ok := canonFlags(v[end+1:])
	if !ok {
		return nil
	}
	re, err := CompileRegexp(strings.ReplaceAll(v[1:end], `\/`, "/"), flags)
	if err != nil {
		return nil
	}
	return re
}
