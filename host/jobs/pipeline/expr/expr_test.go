package expr

import (
	"reflect"
	"strings"
	"testing"
)

// vars builds a lookup from a map; names absent from the map are undefined.
func vars(m map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}
}

type evalCase struct {
	src  string
	vars map[string]string
	want bool
}

// docCases reproduces the examples of GitLab's documentation page "Specify when
// jobs run with `rules`" (sections "Common `if` clauses with predefined variables",
// "Complex rules", "CI/CD variable expressions", "Compare a variable to a regular
// expression", "Store a regular expression in a variable", "Join variable
// expressions together" and "Troubleshooting"), each with variables that make it
// true and variables that make it false.
var docCases = []evalCase{
	// Common if clauses.
	{`$CI_PIPELINE_SOURCE == "merge_request_event"`, map[string]string{"CI_PIPELINE_SOURCE": "merge_request_event"}, true},
	{`$CI_PIPELINE_SOURCE == "merge_request_event"`, map[string]string{"CI_PIPELINE_SOURCE": "push"}, false},
	{`$CI_PIPELINE_SOURCE == "schedule"`, nil, false},
	{`$CI_COMMIT_TAG`, map[string]string{"CI_COMMIT_TAG": "v1.0"}, true},
	{`$CI_COMMIT_TAG`, map[string]string{"CI_COMMIT_BRANCH": "main"}, false},
	{`$CI_COMMIT_BRANCH == "main"`, map[string]string{"CI_COMMIT_BRANCH": "main"}, true},
	{`$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH`, map[string]string{"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}, true},
	{`$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH`, map[string]string{"CI_COMMIT_BRANCH": "dev", "CI_DEFAULT_BRANCH": "main"}, false},
	// A tag pipeline has no CI_COMMIT_BRANCH: null is not equal to a string.
	{`$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH`, map[string]string{"CI_DEFAULT_BRANCH": "main"}, false},
	{`$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $CI_COMMIT_TITLE =~ /Merge branch.*/`,
		map[string]string{"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", "CI_COMMIT_TITLE": "Merge branch 'x' into 'main'"}, true},
	{`$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH && $CI_COMMIT_TITLE =~ /Merge branch.*/`,
		map[string]string{"CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", "CI_COMMIT_TITLE": "Fix typo"}, false},
	{`$CUSTOM_VARIABLE == "value1"`, map[string]string{"CUSTOM_VARIABLE": "value1"}, true},
	{`$CUSTOM_VARIABLE == "value1"`, map[string]string{"CUSTOM_VARIABLE": "value1 "}, false},
	// Complex rules.
	{`($CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH || $CI_COMMIT_BRANCH == "develop") && $MY_VARIABLE`,
		map[string]string{"CI_COMMIT_BRANCH": "develop", "CI_DEFAULT_BRANCH": "main", "MY_VARIABLE": "1"}, true},
	{`($CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH || $CI_COMMIT_BRANCH == "develop") && $MY_VARIABLE`,
		map[string]string{"CI_COMMIT_BRANCH": "develop", "CI_DEFAULT_BRANCH": "main"}, false},
	{`$CUSTOM_VARIABLE == "true" && $CI_PIPELINE_SOURCE == "merge_request_event"`,
		map[string]string{"CUSTOM_VARIABLE": "true", "CI_PIPELINE_SOURCE": "merge_request_event"}, true},
	// Equality, both quote styles, variable against variable.
	{`$VARIABLE == "some value"`, map[string]string{"VARIABLE": "some value"}, true},
	{`$VARIABLE != 'some value'`, map[string]string{"VARIABLE": "some value"}, false},
	{`$VARIABLE != "some value"`, nil, true},
	{`$VARIABLE_1 == $VARIABLE_2`, map[string]string{"VARIABLE_1": "a", "VARIABLE_2": "a"}, true},
	{`$VARIABLE_1 != $VARIABLE_2`, map[string]string{"VARIABLE_1": "a", "VARIABLE_2": "b"}, true},
	{`$VARIABLE_1 == $VARIABLE_2`, nil, true}, // both null
	// null: defined or not.
	{`$VARIABLE == null`, nil, true},
	{`$VARIABLE == null`, map[string]string{"VARIABLE": ""}, false},
	{`$VARIABLE != null`, map[string]string{"VARIABLE": ""}, true},
	{`$VARIABLE != null`, nil, false},
	// Defined but empty.
	{`$VARIABLE == ""`, map[string]string{"VARIABLE": ""}, true},
	{`$VARIABLE == ""`, nil, false},
	{`$VARIABLE != ""`, nil, true},
	{`$VARIABLE != ""`, map[string]string{"VARIABLE": "x"}, true},
	// Defined and not empty.
	{`$VARIABLE`, map[string]string{"VARIABLE": "x"}, true},
	{`$VARIABLE`, map[string]string{"VARIABLE": ""}, false},
	{`$VARIABLE`, nil, false},
	{`${VARIABLE}`, map[string]string{"VARIABLE": "x"}, true},
	// Regular expressions.
	{`$VARIABLE =~ /^content.*/`, map[string]string{"VARIABLE": "content-1"}, true},
	{`$VARIABLE =~ /^content.*/`, map[string]string{"VARIABLE": "my content"}, false},
	{`$VARIABLE !~ /^content.*/`, map[string]string{"VARIABLE": "my content"}, true},
	{`$VARIABLE !~ /^content.*/`, map[string]string{"VARIABLE": "content"}, false},
	{`$VARIABLE =~ /pattern/`, map[string]string{"VARIABLE": "PATTERN"}, false},
	{`$VARIABLE =~ /pattern/i`, map[string]string{"VARIABLE": "PATTERN"}, true},
	{`$CI_COMMIT_REF_NAME =~ /^issue-.*$/`, map[string]string{"CI_COMMIT_REF_NAME": "issue-12"}, true},
	{`$CI_COMMIT_REF_NAME =~ /issue/`, map[string]string{"CI_COMMIT_REF_NAME": "severe-issues"}, true},
	{`$CI_COMMIT_REF_NAME =~ /^issue-/`, map[string]string{"CI_COMMIT_REF_NAME": "severe-issues"}, false},
	{`$CI_COMMIT_REF_NAME =~ /\x40/`, map[string]string{"CI_COMMIT_REF_NAME": "a@b"}, true},
	{`$CI_COMMIT_BRANCH =~ /^feature\/.+/`, map[string]string{"CI_COMMIT_BRANCH": "feature/x"}, true},
	// An undefined variable is matched as "".
	{`$VARIABLE =~ /^$/`, nil, true},
	{`$VARIABLE =~ /.+/`, nil, false},
	// A regular expression stored in a variable (GitLab 15.1+).
	{`$teststring =~ $pattern`, map[string]string{"teststring": "abcde", "pattern": "/^ab.*/"}, true},
	{`$teststring =~ $pattern`, map[string]string{"teststring": "fghij", "pattern": "/^ab.*/"}, false},
	{`$teststring !~ $pattern`, map[string]string{"teststring": "fghij", "pattern": "/^ab.*/"}, true},
	{`$teststring =~ $pattern`, map[string]string{"teststring": "ABC", "pattern": "/^ab/i"}, true},
	// Variables inside a pattern are not resolved: /$string1/ means "string1 at end of line"
	// and so never matches; the same holds for a pattern stored in a variable.
	{`$CI_JOB_NAME =~ /$string1/`, map[string]string{"CI_JOB_NAME": "regex-job1", "string1": "regex-job1"}, false},
	{`$CI_JOB_NAME =~ $pattern`, map[string]string{"CI_JOB_NAME": "regex-job2", "string2": "regex-job2", "pattern": "/$string2/"}, false},
	// An undefined variable on the right never matches.
	{`$teststring =~ $pattern`, map[string]string{"teststring": "abc"}, false},
	{`$teststring !~ $pattern`, map[string]string{"teststring": "abc"}, true},
	// Troubleshooting: a right side that is not a /pattern/ is a substring test.
	{`"23" =~ "1234"`, nil, true},
	{`"23" =~ /1234/`, nil, false},
	{`$V =~ $W`, map[string]string{"V": "ab", "W": "xaby"}, true},
	{`$V =~ $W`, map[string]string{"V": "ab", "W": "/x(/"}, false}, // invalid pattern: substring test
	// Joining expressions; && binds tighter than ||.
	{`$VARIABLE1 =~ /^content.*/ && $VARIABLE2 == "something"`, map[string]string{"VARIABLE1": "content", "VARIABLE2": "something"}, true},
	{`$VARIABLE1 =~ /^content.*/ && $VARIABLE2 =~ /thing$/ && $VARIABLE3`,
		map[string]string{"VARIABLE1": "content", "VARIABLE2": "something"}, false},
	// Read as A || (B && C): true through A alone, which (A || B) && C would not be.
	{`$VARIABLE1 =~ /^content.*/ || $VARIABLE2 =~ /thing$/ && $VARIABLE3`, map[string]string{"VARIABLE1": "content"}, true},
	{`$VARIABLE1 =~ /^content.*/ || $VARIABLE2 =~ /thing$/ && $VARIABLE3`, map[string]string{"VARIABLE2": "something"}, false},
	{`($VARIABLE1 =~ /^content.*/ || $VARIABLE2) && ($VARIABLE3 =~ /thing$/ || $VARIABLE4)`,
		map[string]string{"VARIABLE2": "x", "VARIABLE4": "y"}, true},
	{`($VARIABLE1 =~ /^content.*/ || $VARIABLE2) && ($VARIABLE3 =~ /thing$/ || $VARIABLE4)`,
		map[string]string{"VARIABLE2": "x"}, false},
	{`($VARIABLE1 =~ /^content.*/ || $VARIABLE2 =~ /thing$/) && $VARIABLE3`, map[string]string{"VARIABLE1": "content"}, false},
	{`$CI_COMMIT_BRANCH == "my-branch" || (($VARIABLE1 == "thing" || $VARIABLE2 == "thing") && $VARIABLE3)`,
		map[string]string{"VARIABLE2": "thing", "VARIABLE3": "1"}, true},
	{`$CI_COMMIT_BRANCH == "my-branch" || (($VARIABLE1 == "thing" || $VARIABLE2 == "thing") && $VARIABLE3)`,
		map[string]string{"VARIABLE2": "thing"}, false},
	// An empty variable is false inside && too (GitLab issue 321371 calls the
	// opposite a bug; the documentation says "defined and not empty").
	{`$TEST_VAR && $CI_COMMIT_BRANCH == "master"`, map[string]string{"TEST_VAR": "", "CI_COMMIT_BRANCH": "master"}, false},
	{`$a || $b == '1'`, map[string]string{"a": "", "b": "1"}, true},
	// Literals as conditions.
	{`"x"`, nil, true},
	{`""`, nil, false},
	{`null`, nil, false},
	{`null == null`, nil, true},
}

func TestEvalDocumentedExamples(t *testing.T) {
	for _, tc := range docCases {
		e, err := Parse(tc.src)
		if err != nil {
			t.Errorf("Parse(%s): %v", tc.src, err)
			continue
		}
		got, err := e.Eval(vars(tc.vars))
		if err != nil {
			t.Errorf("Eval(%s, %v): %v", tc.src, tc.vars, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Eval(%s, %v) = %v, want %v", tc.src, tc.vars, got, tc.want)
		}
		// The canonical form means the same.
		again, err := MustParse(e.String()).Eval(vars(tc.vars))
		if err != nil || again != got {
			t.Errorf("canonical %s of %s evaluates to %v, %v; want %v", e.String(), tc.src, again, err, got)
		}
	}
}

func TestShortCircuitAndNilLookup(t *testing.T) {
	var asked []string
	lookup := func(name string) (string, bool) {
		asked = append(asked, name)
		return "x", true
	}
	if ok, _ := MustParse(`$A || $B`).Eval(lookup); !ok || !reflect.DeepEqual(asked, []string{"A"}) {
		t.Errorf("$A || $B = %v asking %v; want true asking only A", ok, asked)
	}
	if ok, err := MustParse(`$A == null`).Eval(nil); !ok || err != nil {
		t.Errorf("nil lookup: $A == null = %v, %v; want true (no variables defined)", ok, err)
	}
}

func TestString(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{`$A=="x"`, `$A == "x"`},
		{`${A}  !=  'x'`, `$A != "x"`},
		{`$A == 'say "hi"'`, `$A == 'say "hi"'`},
		{`$A =~ /a\/b/si`, `$A =~ /a\/b/is`},
		{`$A =~ /\\d+/`, `$A =~ /\\d+/`},
		{`$A =~ /x/UiiU`, ``}, // single character: rejected, see TestParseErrors
		{`(($A))`, `$A`},
		{`($A || $B) && $C`, `($A || $B) && $C`},
		{`$A || ($B && $C)`, `$A || $B && $C`},
		{`($A && $B) && ($C && $D)`, `$A && $B && $C && $D`},
		{`$A || ($B || $C)`, `$A || $B || $C`},
		{"$A\n&&\t$B", `$A && $B`},
		{`null != $X`, `null != $X`},
	} {
		e, err := Parse(tc.src)
		if tc.want == "" {
			if err == nil {
				t.Errorf("Parse(%s) succeeded, want an error", tc.src)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%s): %v", tc.src, err)
			continue
		}
		if got := e.String(); got != tc.want {
			t.Errorf("Parse(%s).String() = %s, want %s", tc.src, got, tc.want)
		}
	}
}

func TestVariables(t *testing.T) {
	got := MustParse(`$B == $A || ${B} =~ $C && $A != null`).Variables()
	if want := []string{"B", "A", "C"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Variables() = %v, want %v", got, want)
	}
	if got := MustParse(`"x" == null`).Variables(); len(got) != 0 {
		t.Errorf("Variables() of a constant = %v, want none", got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		src    string
		col    int
		inMsg  string // part of the message
		inHint string // part of the hint
	}{
		{``, 1, "empty expression", "$CI_COMMIT_BRANCH"},
		{`   `, 4, "empty expression", ""},
		{`$A == "main`, 7, "unterminated string", `close it with "`},
		{`$A == 'main`, 7, "unterminated string", "close it with '"},
		{`$A =~ /(ab/`, 7, "invalid regular expression `/(ab/`", "RE2"},
		{`$A =~ /^(?!main)/`, 7, "invalid regular expression", "lookaround"},
		{`$A =~ /ab`, 7, "unterminated pattern", `\/`},
		{`$A =~ /ab\/`, 7, "unterminated pattern", ""},
		{`$A =~ /./`, 7, "too short", "/^a/"},
		{`$A =~ //`, 7, "too short", ""},
		{`$A =~ /ab/x`, 11, "unknown pattern flag `x`", "i, m, s and U"},
		{`$A =~ /ab/iUz && $B`, 13, "unknown pattern flag `z`", ""},
		{`$A ==`, 4, "missing right operand of ==", "null"},
		{`$A &&`, 6, "unexpected end of expression", "complete the condition"},
		{`$A || && $B`, 7, "unexpected `&&`", ""},
		{`&& $B`, 1, "unexpected `&&`", "put a condition before it"},
		{`$A && == "x"`, 7, "missing left operand of ==", `$VARIABLE == "value"`},
		{`($A == "x"`, 1, "unbalanced (", "close it with )"},
		{`(($A) || $B`, 1, "unbalanced (", ""},
		{`$A == "x")`, 10, "unbalanced )", "add the matching ("},
		{`()`, 2, "empty parentheses", "put a condition inside"},
		{`$A == $B == $C`, 10, "unexpected `==`", "cannot be chained"},
		{`($A) == "x"`, 6, "unexpected `==`", "group"},
		{`$A $B`, 4, "unexpected `$B`", "&& or ||"},
		{`$A == ($B)`, 7, "unexpected `(` after ==", ""},
		{`/ab/ =~ $A`, 1, "right operand of =~", "$VARIABLE =~ /ab/"},
		{`$A == /ab/`, 7, "cannot be compared with ==", "=~"},
		{`$A = "x"`, 4, "unexpected `=`", "=="},
		{`$A & $B`, 4, "unexpected `&`", "&&"},
		{`$A == main`, 7, "unexpected word `main`", `"main"`},
		{`$A == true`, 7, "unexpected word `true`", "null"},
		{`$ == "x"`, 1, "expected a variable name", ""},
		{`${A == "x"`, 1, "unterminated ${A", "}"},
		{`$A == "é" && é`, 14, "unexpected character `é`", ""},
		{strings.Repeat(`$A && `, 50) + `$A`, 301, "too many tokens", "several rules"},
	} {
		_, err := Parse(tc.src)
		if err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", tc.src)
			continue
		}
		se, ok := err.(*SyntaxError)
		if !ok {
			t.Errorf("Parse(%q) error %T, want *SyntaxError", tc.src, err)
			continue
		}
		if se.Column != tc.col || !strings.Contains(se.Msg, tc.inMsg) || !strings.Contains(se.Hint, tc.inHint) {
			t.Errorf("Parse(%q) = column %d, msg %q, hint %q; want column %d, msg with %q, hint with %q",
				tc.src, se.Column, se.Msg, se.Hint, tc.col, tc.inMsg, tc.inHint)
		}
		if ColumnOf(err) != se.Column || !strings.HasPrefix(err.Error(), "column ") {
			t.Errorf("Parse(%q): Error() = %q, ColumnOf = %d", tc.src, err, ColumnOf(err))
		}
	}
}

func TestMaxTokensAccepted(t *testing.T) {
	// 100 tokens is GitLab's limit; a valid expression has an odd number of
	// tokens, so 99 is the longest accepted.
	src := strings.Repeat(`$A && `, 49) + `$A`
	if _, err := Parse(src); err != nil {
		t.Fatalf("99 tokens: %v", err)
	}
}
