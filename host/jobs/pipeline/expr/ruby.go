package expr

import (
	"fmt"
	"regexp"
	"strings"
)

// Character classes for Ruby's \h (a hex digit) and \H (anything else), as the
// inside of a bracket expression: RE2 has neither escape.
const (
	hexRanges    = `0-9A-Fa-f`
	nonHexRanges = `\x00-/:-@G-` + "`" + `g-\x{10FFFF}`
)

// CompileRegexp compiles the body of a /body/flags pattern of GitLab's CI/CD
// configuration (rules:if =~ and !~, only/except refs), flags being RE2's (i, m, s,
// U). GitLab documents these patterns as Ruby regular expressions and matches them
// with RE2; the Ruby escapes that RE2 lacks are translated to what they mean in Ruby:
// \Z (end of the string, or before a newline that ends it), \h (a hex digit) and \H
// (any other character). (?<name>…) groups are RE2's too. Look-arounds and
// backreferences, which RE2 cannot match, are refused with an error that names them.
func CompileRegexp(body, flags string) (*regexp.Regexp, error) {
	tr, err := translateRuby(body)
	if err != nil {
		return nil, err
	}
	if flags != "" {
		tr = "(?" + flags + ")" + tr
	}
	return regexp.Compile(tr)
}

// translateRuby rewrites the Ruby-only escapes of a regular expression into RE2
// syntax; everything else is copied as written.
func translateRuby(body string) (string, error) {
	var b strings.Builder
	inClass := false
	for i := 0; i < len(body); {
		c := body[i]
		switch {
		case c == '\\' && i+1 < len(body):
			n := body[i+1]
			switch {
			case n == 'Z' && !inClass:
				b.WriteString(`(?:\n?\z)`)
			case n == 'h' && inClass:
				b.WriteString(hexRanges)
			case n == 'h':
				b.WriteString("[" + hexRanges + "]")
			case n == 'H' && inClass:
				b.WriteString(nonHexRanges)
			case n == 'H':
				b.WriteString("[^" + hexRanges + "]")
			case n >= '1' && n <= '9' && !inClass:
				return "", fmt.Errorf(`backreference \%c is not supported: GitLab matches patterns with RE2, which has no backreferences`, n)
			case n == 'k' && !inClass && i+2 < len(body) && (body[i+2] == '<' || body[i+2] == '\''):
				return "", fmt.Errorf(`backreference \k is not supported: GitLab matches patterns with RE2, which has no backreferences`)
			default:
				b.WriteString(body[i : i+2])
			}
			i += 2
			continue
		case c == '[' && !inClass:
			inClass = true
			b.WriteByte(c)
			i++
			if i < len(body) && body[i] == '^' {
				b.WriteByte('^')
				i++
			}
			if i < len(body) && body[i] == ']' {
				b.WriteByte(']') // a ] first in a class is a character
				i++
			}
			continue
		case c == '[' && strings.HasPrefix(body[i:], "[:"):
			// A POSIX class inside a bracket expression: its ] does not end the class.
			if end := strings.Index(body[i:], ":]"); end > 0 {
				b.WriteString(body[i : i+end+2])
				i += end + 2
				continue
			}
		case c == ']' && inClass:
			inClass = false
		case c == '(' && !inClass:
			for _, la := range []struct{ open, kind string }{{"(?=", "look-ahead"}, {"(?!", "look-ahead"}, {"(?<=", "look-behind"}, {"(?<!", "look-behind"}} {
				if strings.HasPrefix(body[i:], la.open) {
					return "", fmt.Errorf("%s %s is not supported: GitLab matches patterns with RE2, which has no look-arounds", la.kind, la.open)
				}
			}
		}
		b.WriteByte(c)
		i++
	}
	return b.String(), nil
}
