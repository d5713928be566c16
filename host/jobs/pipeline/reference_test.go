package pipeline

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestHiddenKeysAnyValue: a top-level key starting with "." is hidden whatever its
// value, and is never a job.
func TestHiddenKeysAnyValue(t *testing.T) {
	p, err := Parse("ci.yml", []byte(`
.list: [echo a, echo b]
.scalar: just text
.number: 3
.empty:
.map: {image: alpine:3}
.tmpl:
  script: [echo from template]
job:
  extends: .tmpl
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := names(p.Jobs); !slices.Equal(got, []string{"job"}) {
		t.Errorf("jobs = %v, want [job]", got)
	}
}

// TestReference: !reference [key, …] resolves anywhere GitLab allows it, to lists,
// strings and mappings, across nesting, with merge keys and after includes.
func TestReference(t *testing.T) {
	tests := []struct {
		name   string
		yaml   string
		job    string
		script []string
		after  []string
		vars   map[string]string
	}{
		{"script lines of a hidden job", `
.setup:
  script: [echo one, echo two]
  after_script: [echo cleanup]
test:
  script:
    - !reference [.setup, script]
    - echo three
  after_script: !reference [.setup, after_script]
`, "test", []string{"echo one", "echo two", "echo three"}, []string{"echo cleanup"}, nil},
		{"variables mapping and a single variable", `
.vars:
  variables: {A: "1", B: "2"}
.one:
  value: "x"
job:
  variables: !reference [.vars, variables]
  script: [echo]
job2:
  variables:
    C: !reference [.one, value]
  script: [echo]
`, "job2", []string{"echo"}, nil, map[string]string{"C": "x"}},
		{"nested references are resolved in the target", `
.a:
  script: [echo a]
.b:
  script:
    - !reference [.a, script]
    - echo b
.c:
  script:
    - !reference [.b, script]
    - echo c
job:
  before_script: [!reference [.c, script]]
  script: [echo job]
`, "job", []string{"echo a", "echo b", "echo c", "echo job"}, nil, nil},
		{"a reference to a reference", `
.a: {s: [echo a]}
.b: {s: !reference [.a, s]}
job:
  script: !reference [.b, s]
`, "job", []string{"echo a"}, nil, nil},
		{"a key brought in by a merge key", `
.base: &base {script: [echo merged]}
.t:
  <<: *base
job:
  script: !reference [.t, script]
`, "job", []string{"echo merged"}, nil, nil},
		{"a job's own keys, in a hidden list and into extends", `
.lines: [echo l1, echo l2]
.tmpl:
  before_script: [!reference [.lines]]
build:
  extends: .tmpl
  script: [make]
`, "build", []string{"echo l1", "echo l2", "make"}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("ci.yml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			j := p.Job(tt.job)
			if j == nil {
				t.Fatalf("no job %s in %v", tt.job, names(p.Jobs))
			}
			if !slices.Equal(j.Script, tt.script) {
				t.Errorf("script = %q, want %q", j.Script, tt.script)
			}
			if tt.after != nil && !slices.Equal(j.AfterScript, tt.after) {
				t.Errorf("after_script = %q, want %q", j.AfterScript, tt.after)
			}
			for k, want := range tt.vars {
				if v, _ := j.Variables.Get(k); v != want {
					t.Errorf("%s = %q, want %q", k, v, want)
				}
			}
		})
	}
	// The first case's job with variables from the reference.
	p, err := Parse("ci.yml", []byte(tests[1].yaml))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := p.Job("job").Variables.Get("B"); v != "2" {
		t.Errorf("job B = %q, want 2", v)
	}
}

// TestReferenceErrors: a reference that names nothing, nests too deeply or contains
// itself is refused with the place and the key.
func TestReferenceErrors(t *testing.T) {
	var deep strings.Builder
	deep.WriteString(".r0: [echo]\n")
	for i := 1; i <= MaxReferenceDepth+1; i++ {
		fmt.Fprintf(&deep, ".r%d: [!reference [.r%d]]\n", i, i-1)
	}
	fmt.Fprintf(&deep, "job:\n  script: !reference [.r%d]\n", MaxReferenceDepth+1)
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"missing top-level key", ".setup:\n  script: [x]\njob:\n  script:\n    - !reference [.setpu, script]\n",
			[]string{"ci.yml:5:7: !reference [.setpu, script]: the pipeline has no key \".setpu\"", `did you mean ".setup"?`}},
		{"missing nested key", ".setup:\n  script: [x]\njob:\n  script: !reference [.setup, before_script]\n",
			[]string{"ci.yml:4:11:", `.setup has no key "before_script"`}},
		{"through a list", ".l: [a]\njob:\n  script: !reference [.l, x]\n",
			[]string{"3:11:", ".l is a list, it has no key \"x\""}},
		{"not a list", "job:\n  script: !reference .setup\n", []string{"2:11:", "!reference needs a list of keys"}},
		{"contains itself", ".a:\n  s: [!reference [.a]]\njob:\n  script: [x]\n", []string{"2:7:", "refers to a value that contains it"}},
		{"too deep", deep.String(), []string{"nest deeper than 10 levels"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("ci.yml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestReferenceDepthWithinLimit: ten nested references are GitLab's limit, and work.
func TestReferenceDepthWithinLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString(".r0: [echo deep]\n")
	for i := 1; i < MaxReferenceDepth; i++ {
		fmt.Fprintf(&b, ".r%d: [!reference [.r%d]]\n", i, i-1)
	}
	fmt.Fprintf(&b, "job:\n  script: !reference [.r%d]\n", MaxReferenceDepth-1)
	p, err := Parse("ci.yml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Job("job").Script; !slices.Equal(got, []string{"echo deep"}) {
		t.Errorf("script = %q", got)
	}
}
