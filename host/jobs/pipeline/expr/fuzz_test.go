package expr

import (
	"strings"
	"testing"
)

// seeds are expressions that reach every part of the lexer and parser.
func seeds() []string {
	s := []string{
		`$A`, `${A}`, `null`, `"x"`, `'x'`, `$A == "x"`, `$A != 'y"z'`, `$A =~ /a\/b/i`,
		`$A !~ /^x$/msU`, `$A =~ $B`, `($A || $B) && $C`, `$A || $B && $C`, `(($A))`,
		`$A == $B == $C`, `$A =~ /./`, `$A =~ /(a/`, `$A == "x`, `$A &&`, `(`, `)`, `$`,
		`/ab/ == $A`, `$A == é`, "$A\t==\n'x'", `$A =~ /\\/`,
	}
	for _, c := range docCases {
		s = append(s, c.src)
	}
	return s
}

// FuzzParse checks that Parse never panics, that its errors carry a column
// inside the input, and that the canonical form parses back to itself.
func FuzzParse(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		e, err := Parse(src)
		if err != nil {
			if c := ColumnOf(err); c < 1 || c > len([]rune(src))+1 {
				t.Fatalf("Parse(%q): column %d outside the input: %v", src, c, err)
			}
			return
		}
		canon := e.String()
		e2, err := Parse(canon)
		if err != nil {
			t.Fatalf("Parse(%q) ok, but its canonical form %q does not parse: %v", src, canon, err)
		}
		if got := e2.String(); got != canon {
			t.Fatalf("canonical form of %q is %q, which re-parses to %q", src, canon, got)
		}
	})
}

// envLookup turns "NAME=value" lines into a lookup; other lines are ignored.
func envLookup(env string) func(string) (string, bool) {
	m := map[string]string{}
	for _, line := range strings.Split(env, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

// FuzzEval checks that evaluation never panics or fails, is deterministic, and
// gives the same result for the canonical form.
func FuzzEval(f *testing.F) {
	for _, c := range docCases {
		var env strings.Builder
		for k, v := range c.vars {
			env.WriteString(k + "=" + v + "\n")
		}
		f.Add(c.src, env.String())
	}
	f.Add(`$A =~ $B`, "A=abc\nB=/b(/")
	f.Add(`$A !~ $B`, "A=\nB=/^$/m")
	f.Fuzz(func(t *testing.T, src, env string) {
		e, err := Parse(src)
		if err != nil {
			return
		}
		lookup := envLookup(env)
		first, err := e.Eval(lookup)
		if err != nil {
			t.Fatalf("Eval(%q): %v", src, err)
		}
		if again, _ := e.Eval(lookup); again != first {
			t.Fatalf("Eval(%q) gave %v then %v", src, first, again)
		}
		canon := MustParse(e.String())
		if got, _ := canon.Eval(lookup); got != first {
			t.Fatalf("Eval(%q) = %v but its canonical form %q gives %v", src, first, e.String(), got)
		}
	})
}
