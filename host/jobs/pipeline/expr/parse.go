package expr

import (
	"strings"
	"unicode/utf8"
)

type tokKind int

const (
	tokEOF tokKind = iota
	tokOperand
	tokOp     // == != =~ !~
	tokAnd    // &&
	tokOr     // ||
	tokLParen // (
	tokRParen // )
)

type token struct {
	kind tokKind
	off  int    // byte offset in the source
	text string // source text of the token
	o    *operand
}

// column turns a byte offset into a 1-based character column.
func column(src string, off int) int {
	return utf8.RuneCountInString(src[:off]) + 1
}

func lexErr(src string, off int, msg, hint string) *SyntaxError {
	return &SyntaxError{Column: column(src, off), Msg: msg, Hint: hint}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isWord(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// lex splits src into tokens, ending with a tokEOF token.
func lex(src string) ([]token, error) {
	var toks []token
	i := 0
	for {
		for i < len(src) && isSpace(src[i]) {
			i++
		}
		if i == len(src) {
			return append(toks, token{kind: tokEOF, off: i}), nil
		}
		if len(toks) == MaxTokens {
			return nil, lexErr(src, i, "too many tokens: GitLab allows at most 100 in one expression",
				"split the condition over several rules")
		}
		t, err := lexOne(src, i)
		if err != nil {
			return nil, err
		}
		toks = append(toks, t)
		i += len(t.text)
	}
}

// twoChar maps the two-character operators to their kinds.
var twoChar = map[string]tokKind{
	"==": tokOp, "!=": tokOp, "=~": tokOp, "!~": tokOp,
	"&&": tokAnd, "||": tokOr,
}

func lexOne(src string, i int) (token, error) {
	c := src[i]
	if i+1 < len(src) {
		if k, ok := twoChar[src[i:i+2]]; ok {
			return token{kind: k, off: i, text: src[i : i+2]}, nil
		}
	}
	switch {
	case c == '(':
		return token{kind: tokLParen, off: i, text: "("}, nil
	case c == ')':
		return token{kind: tokRParen, off: i, text: ")"}, nil
	case c == '$':
		return lexVariable(src, i)
	case c == '"' || c == '\'':
		end := strings.IndexByte(src[i+1:], c)
		if end < 0 {
			return token{}, lexErr(src, i, "unterminated string", "close it with "+string(c))
		}
		text := src[i : i+end+2]
		return token{kind: tokOperand, off: i, text: text, o: &operand{kind: opString, text: text[1 : len(text)-1]}}, nil
	case c == '/':
		return lexPattern(src, i)
	case isWord(c):
		j := i
		for j < len(src) && isWord(src[j]) {
			j++
		}
		word := src[i:j]
		if word == "null" {
			return token{kind: tokOperand, off: i, text: word, o: &operand{kind: opNull}}, nil
		}
		return token{}, lexErr(src, i, "unexpected word "+quote(word),
			"write variables as $"+word+", quote strings as \""+word+"\"; the only keyword is null")
	case c == '=' || c == '!':
		return token{}, lexErr(src, i, "unexpected "+quote(string(c)), "the comparison operators are ==, !=, =~ and !~")
	case c == '&' || c == '|':
		return token{}, lexErr(src, i, "unexpected "+quote(string(c)), "join conditions with && or ||")
	default:
		r, _ := utf8.DecodeRuneInString(src[i:])
		return token{}, lexErr(src, i, "unexpected character "+quote(string(r)),
			"an expression holds $VARIABLES, \"strings\", null, /patterns/, ==, !=, =~, !~, &&, || and parentheses")
	}
}

func lexVariable(src string, i int) (token, error) {
	j := i + 1
	braced := j < len(src) && src[j] == '{'
	if braced {
		j++
	}
	start := j
	for j < len(src) && isWord(src[j]) {
		j++
	}
	if j == start {
		return token{}, lexErr(src, i, "expected a variable name after $", "variable names are letters, digits and _, e.g. $CI_COMMIT_BRANCH")
	}
	name := src[start:j]
	if braced {
		if j == len(src) || src[j] != '}' {
			return token{}, lexErr(src, i, "unterminated ${"+name, "close it with }")
		}
		j++
	}
	return token{kind: tokOperand, off: i, text: src[i:j], o: &operand{kind: opVar, text: name}}, nil
}

func lexPattern(src string, i int) (token, error) {
	var body strings.Builder
	j := i + 1
	for {
		if j >= len(src) {
			return token{}, lexErr(src, i, "unterminated pattern", "close it with /, and write a / inside it as \\/")
		}
		c := src[j]
		if c == '/' {
			break
		}
		if c == '\\' && j+1 < len(src) {
			if src[j+1] == '/' {
				body.WriteByte('/')
			} else {
				body.WriteString(src[j : j+2])
			}
			j += 2
			continue
		}
		body.WriteByte(c)
		j++
	}
	raw := src[i+1 : j]
	j++ // closing slash
	fstart := j
	for j < len(src) && isWord(src[j]) {
		j++
	}
	if utf8.RuneCountInString(raw) < 2 {
		return token{}, lexErr(src, i, "pattern "+quote(src[i:j])+" is too short: GitLab rejects patterns of fewer than two characters",
			"write e.g. /^a/ or /(a)/ instead")
	}
	flags, bad, ok := canonFlags(src[fstart:j])
	if !ok {
		return token{}, lexErr(src, fstart+strings.IndexByte(src[fstart:j], bad), "unknown pattern flag "+quote(string(bad)), "the flags are i, m, s and U")
	}
	re, err := CompileRegexp(body.String(), flags)
	if err != nil {
		return token{}, lexErr(src, i, "invalid regular expression "+quote(src[i:j])+": "+err.Error(),
			"patterns use RE2 syntax, which has no backreferences or lookaround")
	}
	return token{kind: tokOperand, off: i, text: src[i:j],
		o: &operand{kind: opPattern, text: body.String(), flags: flags, re: re}}, nil
}

func quote(s string) string { return "`" + s + "`" }

type parser struct {
	src  string
	toks []token
	pos  int
}

func (p *parser) peek() token { return p.toks[p.pos] }

func (p *parser) next() token {
	t := p.toks[p.pos]
	if t.kind != tokEOF {
		p.pos++
	}
	return t
}

func (p *parser) errAt(t token, msg, hint string) error {
	return lexErr(p.src, t.off, msg, hint)
}

// unexpected reports a token that cannot appear where it is.
func (p *parser) unexpected(t token) error {
	switch t.kind {
	case tokEOF:
		return p.errAt(t, "unexpected end of expression", "complete the condition after the last operator")
	case tokRParen:
		return p.errAt(t, "unbalanced )", "remove it or add the matching (")
	case tokOp:
		return p.errAt(t, "unexpected "+quote(t.text), "comparisons cannot be chained or applied to a group; join conditions with && or ||")
	case tokOperand, tokLParen:
		return p.errAt(t, "unexpected "+quote(t.text), "join conditions with && or ||")
	default:
		return p.errAt(t, "unexpected "+quote(t.text), "put a condition before it")
	}
}

func (p *parser) parseOr() (node, error) {
	var terms []node
	for {
		n, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		if or, ok := n.(*orNode); ok {
			terms = append(terms, or.terms...)
		} else {
			terms = append(terms, n)
		}
		if p.peek().kind != tokOr {
			break
		}
		p.next()
	}
	if len(terms) == 1 {
		return terms[0], nil
	}
	return &orNode{terms: terms}, nil
}

func (p *parser) parseAnd() (node, error) {
	var terms []node
	for {
		n, err := p.parseTerm()
		if err != nil {
			return nil, err
		}
		if and, ok := n.(*andNode); ok {
			terms = append(terms, and.terms...)
		} else {
			terms = append(terms, n)
		}
		if p.peek().kind != tokAnd {
			break
		}
		p.next()
	}
	if len(terms) == 1 {
		return terms[0], nil
	}
	return &andNode{terms: terms}, nil
}

func (p *parser) parseTerm() (node, error) {
	t := p.next()
	switch t.kind {
	case tokLParen:
		if c := p.peek(); c.kind == tokRParen {
			return nil, p.errAt(c, "empty parentheses", "put a condition inside them or remove them")
		}
		n, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		if c := p.peek(); c.kind != tokRParen {
			if c.kind == tokEOF {
				return nil, p.errAt(t, "unbalanced (", "close it with )")
			}
			return nil, p.unexpected(c)
		}
		p.next()
		return n, nil
	case tokOperand:
		return p.parseComparison(t)
	case tokOp:
		return nil, p.errAt(t, "missing left operand of "+t.text, "write e.g. $VARIABLE "+t.text+" \"value\"")
	default:
		return nil, p.unexpected(t)
	}
}

func (p *parser) parseComparison(left token) (node, error) {
	if left.o.kind == opPattern {
		return nil, p.errAt(left, "a pattern can only be the right operand of =~ or !~", "write $VARIABLE =~ "+left.text)
	}
	if p.peek().kind != tokOp {
		return &truthNode{o: left.o}, nil
	}
	op := p.next()
	right := p.next()
	if right.kind != tokOperand {
		if right.kind == tokEOF {
			return nil, p.errAt(op, "missing right operand of "+op.text, "compare with a $VARIABLE, a \"string\", null or a /pattern/")
		}
		return nil, p.errAt(right, "unexpected "+quote(right.text)+" after "+op.text, "compare with a $VARIABLE, a \"string\", null or a /pattern/")
	}
	if right.o.kind == opPattern && (op.text == "==" || op.text == "!=") {
		return nil, p.errAt(right, "a pattern cannot be compared with "+op.text, "use =~ or !~ to match a pattern")
	}
	return &cmpNode{op: op.text, left: left.o, right: right.o}, nil
}
