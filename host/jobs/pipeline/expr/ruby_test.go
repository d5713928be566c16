package expr

import (
	"strings"
	"testing"
)

// TestCompileRegexpRubyEscapes: the Ruby escapes RE2 lacks mean what they mean in
// Ruby, in and out of character classes; the rest of the syntax is RE2's.
func TestCompileRegexpRubyEscapes(t *testing.T) {
	tests := []struct {
		body, flags string
		match       []string
		noMatch     []string
	}{
		// \Z: end of string, or before a final newline.
		{`\Av[0-9]+\Z`, "", []string{"v12", "v12\n"}, []string{"v12\n\n", "v12x", "xv12"}},
		{`a\Z`, "m", []string{"a", "a\n"}, []string{"a\nb"}},
		// \h and \H: a hex digit and anything else, alone and in classes.
		{`^\h+$`, "", []string{"0aF9", "c0ffee"}, []string{"g", "0x1"}},
		{`^\H$`, "", []string{"g", "-", "é"}, []string{"a", "F", "7"}},
		{`^[\h.-]+$`, "", []string{"ab-12.ef"}, []string{"ab_12"}},
		{`^[^\h]$`, "", []string{"z"}, []string{"e"}},
		{`^[\H]$`, "", []string{"z", "\n"}, []string{"f", "0"}},
		{`^[x\H]$`, "", []string{"x", "q"}, []string{"b"}},
		// Escaped backslashes and class contents are not escapes of their own.
		{`^\\Z$`, "", []string{`\Z`}, []string{""}},
		{`^[\]Z]+$`, "", []string{"]Z"}, []string{"a"}},
		{`^[[:alpha:]\h]+$`, "", []string{"xyz09"}, []string{"-"}},
		// Named groups as Ruby writes them, flags as GitLab passes them.
		{`^(?<major>\d+)\.(?P<minor>\d+)$`, "", []string{"1.2"}, []string{"1"}},
		{`^RELEASE\Z`, "i", []string{"release"}, []string{"releases"}},
	}
	for _, tt := range tests {
		re, err := CompileRegexp(tt.body, tt.flags)
		if err != nil {
			t.Errorf("/%s/%s: %v", tt.body, tt.flags, err)
			continue
		}
		for _, s := range tt.match {
			if !re.MatchString(s) {
				t.Errorf("/%s/%s does not match %q", tt.body, tt.flags, s)
			}
		}
		for _, s := range tt.noMatch {
			if re.MatchString(s) {
				t.Errorf("/%s/%s matches %q", tt.body, tt.flags, s)
			}
		}
	}
}

// TestCompileRegexpUnsupported: what RE2 cannot do is refused with a message that
// says what it is.
func TestCompileRegexpUnsupported(t *testing.T) {
	tests := []struct{ body, want string }{
		{`foo(?=bar)`, "look-ahead (?= is not supported"},
		{`foo(?!bar)`, "look-ahead (?! is not supported"},
		{`(?<=v)\d+`, "look-behind (?<= is not supported"},
		{`(?<!v)\d+`, "look-behind (?<! is not supported"},
		{`(a)\1`, `backreference \1 is not supported`},
		{`(?<x>a)\k<x>`, `backreference \k is not supported`},
		{`a(`, "missing closing )"},
	}
	for _, tt := range tests {
		_, err := CompileRegexp(tt.body, "")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("/%s/: err = %v, want %q", tt.body, err, tt.want)
		}
	}
	// In a class and escaped they are plain characters.
	for _, body := range []string{`[(?=]`, `\(?=x`, `[\1]`} {
		if _, err := CompileRegexp(body, ""); err != nil && strings.Contains(err.Error(), "not supported") {
			t.Errorf("/%s/: %v", body, err)
		}
	}
}

// TestPatternsUseRubyEscapes: =~ in an expression, literal and from a variable,
// reads the same Ruby escapes.
func TestPatternsUseRubyEscapes(t *testing.T) {
	e, err := Parse(`$TAG =~ /\Av\h+\Z/ && $TAG =~ $PAT`)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := e.Eval(vars(map[string]string{"TAG": "vbeef\n", "PAT": `/\Av\h+\Z/`}))
	if err != nil || !ok {
		t.Errorf("eval = %v, %v; want true", ok, err)
	}
	if _, err := Parse(`$TAG =~ /a(?=b)/`); err == nil || !strings.Contains(err.Error(), "look-ahead") {
		t.Errorf("look-ahead: err = %v", err)
	}
}
