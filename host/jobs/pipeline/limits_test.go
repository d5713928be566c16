package pipeline

import (
	"fmt"
	"strings"
	"testing"
)

// bomb returns a YAML alias bomb: levels anchors, each naming the previous one width
// times, so that the last one expands to width^levels values. merge makes every level
// a merge key (<<: [*l0, *l0, …]) instead of a list of aliases.
func bomb(levels, width int, merge bool) string {
	var b strings.Builder
	b.WriteString(".l0: &l0 {stage: test, when: always}\n")
	for i := 1; i <= levels; i++ {
		refs := make([]string, width)
		for k := range refs {
			refs[k] = fmt.Sprintf("*l%d", i-1)
		}
		if merge {
			fmt.Fprintf(&b, ".l%d: &l%d {<<: [%s]}\n", i, i, strings.Join(refs, ", "))
		} else {
			fmt.Fprintf(&b, ".l%d: &l%d [%s]\n", i, i, strings.Join(refs, ", "))
		}
	}
	if merge {
		fmt.Fprintf(&b, "j:\n  <<: *l%d\n  script: [x]\n", levels)
	} else {
		fmt.Fprintf(&b, "j:\n  script: [x]\n  variables: {V: *l%d}\n", levels)
	}
	return b.String()
}

// TestParseBoundsAliases: YAML that refers to itself, or expands to far more than it is,
// is refused with the place and the limit, instead of overflowing the stack or burning
// CPU for minutes.
func TestParseBoundsAliases(t *testing.T) {
	nested := "j:\n  script: [x]\n  variables: {V: " + strings.Repeat("[", 100+1) + strings.Repeat("]", 100+1) + "}\n"
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"merge key into its own anchor", ".a: &a\n  <<: *a\n  script: [x]\nj:\n  extends: .a\n",
			[]string{".gitlab-ci.yml:2:7: .a.<<: alias *a refers to the mapping that contains it (&a at line 1)", "cannot contain itself"}},
		{"list containing itself", "j:\n  script: &s [echo, *s]\n",
			[]string{".gitlab-ci.yml:2:21: j.script[1]: alias *s refers to the list that contains it (&s at line 2)"}},
		{"cycle through a nested mapping", ".t: &t\n  variables:\n    V: {inner: *t}\nj:\n  script: [x]\n",
			[]string{"3:16: .t.variables.V.inner: alias *t refers to the mapping that contains it"}},
		{"alias bomb", bomb(9, 9, false),
			[]string{".gitlab-ci.yml:7:11: .l6[0]: YAML aliases expand the file to more than 1 MiB", "*l5 here alone", "max_yaml_size_bytes"}},
		{"merge-key bomb", bomb(9, 9, true),
			[]string{".gitlab-ci.yml:7:16: .l6.<<[0]: YAML aliases expand the file to more than 1 MiB"}},
		{"file too large to read", "# " + strings.Repeat("x", MaxFileSize) + "\nj: {script: [x]}\n",
			[]string{".gitlab-ci.yml: the file is 8388628 bytes, more than runner exec reads (8388608)"}},
		{"nesting deeper than GitLab allows", nested,
			[]string{".gitlab-ci.yml:3:", "j.variables.V", "deeper than 100 levels"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, tt.yaml, tt.want...)
		})
	}
}

// TestParseAliasesWithinBounds: shared anchors that stay small still work, also when
// the same anchor is used many times; of several merged mappings the first that has a
// key wins, as YAML's merge key says.
func TestParseAliasesWithinBounds(t *testing.T) {
	p, err := Parse("ci.yml", []byte(bomb(3, 4, true)+".c: &c {script: [shared]}\n.d: &d {script: [other]}\nk:\n  <<: [*c, *d, *l1]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Job("k").Script; strings.Join(got, ",") != "shared" {
		t.Errorf("k.script = %q: the first mapping of a merge list wins", got)
	}
}

// TestParseExtendsFanOut: extends that names the same templates many times over, level
// after level, is expanded once per template (it used to be width^depth times).
func TestParseExtendsFanOut(t *testing.T) {
	var b strings.Builder
	b.WriteString(".t0:\n  script: [x]\n  variables: {A: \"0\"}\n")
	for i := 1; i <= 9; i++ {
		parents := make([]string, 12)
		for k := range parents {
			parents[k] = fmt.Sprintf(".t%d", i-1)
		}
		fmt.Fprintf(&b, ".t%d:\n  extends: [%s]\n", i, strings.Join(parents, ", "))
	}
	b.WriteString("j:\n  extends: .t9\n")
	p, err := Parse("ci.yml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := p.Job("j").Variables.Get("A"); v != "0" {
		t.Errorf("A = %q", v)
	}
	// One level deeper than GitLab's limit, reached through an already expanded
	// template, is still refused.
	b.WriteString(".t10:\n  extends: .t9\nk:\n  extends: .t10\n")
	if _, err := Parse("ci.yml", []byte(b.String())); err == nil || !strings.Contains(err.Error(), "extends nests deeper than 11 levels") {
		t.Errorf("err = %v", err)
	}
}

// TestParseExpansionBudget: extends and default: can multiply a small file into a huge
// pipeline; past the budget the file is refused, naming the job where it ran out.
func TestParseExpansionBudget(t *testing.T) {
	var b strings.Builder
	b.WriteString(".big:\n  script:\n")
	for i := 0; i < 5000; i++ {
		b.WriteString("    - x\n")
	}
	for i := 0; i < 1200; i++ {
		fmt.Fprintf(&b, "j%d: {extends: .big}\n", i)
	}
	_, err := Parse("ci.yml", []byte(b.String()))
	if err == nil {
		t.Fatal("no error")
	}
	for _, w := range []string{"ci.yml:", ": j", "more than 5000000", "extends"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q:\n%v", w, err)
		}
	}
}

func TestParseNeedsLaterStage(t *testing.T) {
	_, err := Parse(".gitlab-ci.yml", []byte("stages: [build, test]\nb:\n  stage: build\n  needs: [t]\n  script: x\nt:\n  stage: test\n  script: y\n"))
	want := `.gitlab-ci.yml:4:11: b.needs[0]: job "b" (stage build) needs "t" of the later stage test: ` +
		`GitLab rejects this (need t is not defined in current or prior stages)`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if strings.Contains(err.Error(), "cycle") {
		t.Errorf("reported as a cycle: %v", err)
	}
	// The same stage and earlier stages are fine.
	p := mustParse(t, "stages: [build, test]\na:\n  stage: build\n  script: x\nb:\n  stage: test\n  needs: [a, c]\n  script: y\nc:\n  stage: test\n  script: z\n  needs: []\n")
	plan, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(plan.Jobs), ","); got != "a,c,b" {
		t.Errorf("order = %s", got)
	}
}

// TestParseHintsStayShort: a hint lists a few names, not all of them.
func TestParseHintsStayShort(t *testing.T) {
	var b strings.Builder
	b.WriteString("stages:\n")
	for i := range 500 {
		fmt.Fprintf(&b, "  - stage%d\n", i)
	}
	b.WriteString("j:\n  stage: nothing-like-it\n  script: [x]\n")
	_, err := Parse("ci.yml", []byte(b.String()))
	want := `ci.yml:503:10: j.stage: stage "nothing-like-it" is not declared (declare it under stages: .pre, stage0, stage1, stage2, stage3, stage4, stage5, stage6, stage7, stage8, … (502 in all))`
	if err == nil || err.Error() != want {
		t.Errorf("err = %v\nwant %s", err, want)
	}
}

// TestParseManyMediumAliases: many aliases of a mid-sized anchor, none too large alone,
// are still blamed for the size, pointing at the largest.
func TestParseManyMediumAliases(t *testing.T) {
	var b strings.Builder
	b.WriteString(".big: &big [" + strings.Repeat("0123456789abcdef, ", 2000) + "x]\n")
	for i := range 40 {
		fmt.Fprintf(&b, "j%d: {script: *big}\n", i)
	}
	_, err := Parse("ci.yml", []byte(b.String()))
	want := "ci.yml:2:14: j0.script: YAML aliases expand the file to more than 1 MiB of keys and values (GitLab's default max_yaml_size_bytes); the largest alias, *big here, expands to 34003 bytes"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v\nwant %s", err, want)
	}
	// The same size written out, without aliases, is the file's own size.
	var c strings.Builder
	for i := range 40 {
		fmt.Fprintf(&c, "j%d: {script: [%s x]}\n", i, strings.Repeat("0123456789abcdef, ", 2000))
	}
	if _, err := Parse("ci.yml", []byte(c.String())); err == nil || !strings.Contains(err.Error(), "ci.yml:1:1: the file holds more than 1 MiB of keys and values") {
		t.Errorf("err = %v", err)
	}
}
