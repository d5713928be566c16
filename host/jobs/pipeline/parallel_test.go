package pipeline

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestParallelExpansion(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		// want maps each expected job, in file order, to variables it must have
		// (name=value) and its needs ("-" for none given, nil list).
		jobs  []string
		vars  map[string][]string
		needs map[string][]string
	}{
		{
			name: "parallel N",
			yaml: "test:\n  parallel: 3\n  script: x\n",
			jobs: []string{"test 1/3", "test 2/3", "test 3/3"},
			vars: map[string][]string{"test 2/3": {"CI_NODE_INDEX=2", "CI_NODE_TOTAL=3"}},
		},
		{
			name: "parallel 1 is still a parallel job",
			yaml: "test:\n  parallel: 1\n  script: x\n",
			jobs: []string{"test 1/1"},
			vars: map[string][]string{"test 1/1": {"CI_NODE_INDEX=1", "CI_NODE_TOTAL=1"}},
		},
		{
			name: "matrix: product per entry, first variable slowest, entries concatenated",
			yaml: `deploy:
  variables: {PROVIDER: none, KEEP: k}
  parallel:
    matrix:
      - PROVIDER: aws
        STACK: [monitoring, app1]
      - PROVIDER: [ovh, gcp]
  script: x
`,
			jobs: []string{"deploy: [aws, monitoring]", "deploy: [aws, app1]", "deploy: [ovh]", "deploy: [gcp]"},
			vars: map[string][]string{
				"deploy: [aws, app1]": {"PROVIDER=aws", "STACK=app1", "KEEP=k", "CI_NODE_INDEX=2", "CI_NODE_TOTAL=4"},
				"deploy: [gcp]":       {"PROVIDER=gcp", "CI_NODE_INDEX=4"},
			},
		},
		{
			name:  "needs of a parallel job by its name: every job it makes",
			yaml:  "stages: [build, test]\nbuild:\n  stage: build\n  parallel: 2\n  script: x\ntest:\n  needs: [build]\n  script: y\n",
			jobs:  []string{"build 1/2", "build 2/2", "test"},
			needs: map[string][]string{"test": {"build 1/2", "build 2/2"}, "build 1/2": nil},
		},
		{
			name: "needs:parallel:matrix picks jobs of a matrix",
			yaml: `stages: [build, test]
build:
  stage: build
  parallel:
    matrix:
      - OS: [linux, mac]
        ARCH: [amd64, arm64]
  script: x
test:
  needs:
    - job: build
      parallel:
        matrix:
          - OS: linux
            ARCH: [amd64, arm64]
  script: y
exact:
  needs: ["build: [mac, arm64]"]
  script: z
`,
			jobs:  []string{"build: [linux, amd64]", "build: [linux, arm64]", "build: [mac, amd64]", "build: [mac, arm64]", "test", "exact"},
			needs: map[string][]string{"test": {"build: [linux, amd64]", "build: [linux, arm64]"}, "exact": {"build: [mac, arm64]"}},
		},
		{
			name:  "the jobs a parallel job makes keep its needs",
			yaml:  "stages: [build, test]\nb:\n  stage: build\n  script: x\nt:\n  needs: [b]\n  parallel: 2\n  script: y\n",
			jobs:  []string{"b", "t 1/2", "t 2/2"},
			needs: map[string][]string{"t 2/2": {"b"}},
		},
		{
			name: "rules needs are expanded too",
			yaml: "stages: [build, test]\nb:\n  stage: build\n  parallel: 2\n  script: x\nt:\n  rules:\n    - needs: [b]\n  script: y\n",
			jobs: []string{"b 1/2", "b 2/2", "t"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(".gitlab-ci.yml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, j := range p.Jobs {
				names = append(names, j.Name)
			}
			if !slices.Equal(names, tt.jobs) {
				t.Fatalf("jobs = %q, want %q", names, tt.jobs)
			}
			for job, want := range tt.vars {
				eff := p.Job(job).Variables
				for _, w := range want {
					k, v, _ := strings.Cut(w, "=")
					if got, ok := eff.Get(k); !ok || got != v {
						t.Errorf("%s: %s = %q, want %q", job, k, got, v)
					}
				}
			}
			for job, want := range tt.needs {
				if got := p.Job(job).Needs; !slices.Equal(got, want) || (got == nil) != (want == nil) {
					t.Errorf("%s needs %q, want %q", job, got, want)
				}
			}
			if _, err := p.Plan(); err != nil {
				t.Errorf("plan: %v", err)
			}
		})
	}
}

func TestParallelRulesNeedsExpanded(t *testing.T) {
	p, err := Parse(".gitlab-ci.yml", []byte("stages: [build, test]\nb:\n  stage: build\n  parallel: 2\n  script: x\nt:\n  rules:\n    - needs: [b]\n  script: y\n"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Evaluate(Env{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.Pipeline.Job("t").Needs; !slices.Equal(got, []string{"b 1/2", "b 2/2"}) {
		t.Errorf("t needs %q after its rule, want both jobs of b", got)
	}
}

func TestParallelErrors(t *testing.T) {
	big := "j:\n  parallel:\n    matrix:\n      - A: [" + strings.Repeat("x,", 20) + "x]\n        B: [" + strings.Repeat("y,", 9) + "y]\n  script: x\n"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"zero", "j:\n  parallel: 0\n  script: x\n", []string{`.gitlab-ci.yml:2:13: j.parallel: parallel "0" is not a number from 1 to 200`}},
		{"201", "j:\n  parallel: 201\n  script: x\n", []string{`2:13: j.parallel: parallel "201" is not a number from 1 to 200`}},
		{"not a number", "j:\n  parallel: many\n  script: x\n", []string{`2:13: j.parallel: parallel "many" is not a number`}},
		{"matrix too large", big, []string{"5:9: j.parallel.matrix[0].B: the matrix makes more than 200 jobs (GitLab's limit)"}},
		{"matrix entries add up", "j:\n  parallel:\n    matrix:\n" + strings.Repeat("      - A: ["+strings.Repeat("x,", 49)+"x]\n", 5) + "  script: x\n",
			[]string{"8:9: j.parallel.matrix[4].A: the matrix makes more than 200 jobs"}},
		{"unknown parallel key", "j:\n  parallel:\n    matrx: []\n  script: x\n", []string{`3:5: j.parallel.matrx: unknown parallel keyword "matrx"`}},
		{"empty matrix", "j:\n  parallel:\n    matrix: []\n  script: x\n", []string{"3:13: j.parallel.matrix: the matrix is empty"}},
		{"bad matrix variable", "j:\n  parallel:\n    matrix:\n      - 1A: [x]\n  script: x\n", []string{`4:9: j.parallel.matrix[0].1A: invalid variable name "1A"`}},
		{"matrix value not a string", "j:\n  parallel:\n    matrix:\n      - A: [{x: y}]\n  script: x\n", []string{"4:13: j.parallel.matrix[0].A[0]: expected a string"}},
		{"name clash", "\"j 1/2\":\n  script: x\nj:\n  parallel: 2\n  script: x\n", []string{`4:13: j.parallel: parallel makes a job "j 1/2", which is defined already`}},
		{"needs a combination the matrix lacks", "stages: [b, t]\nm:\n  stage: b\n  parallel:\n    matrix:\n      - OS: [linux]\nt:\n  stage: t\n  needs:\n    - job: m\n      parallel:\n        matrix:\n          - OS: windows\n  script: y\n",
			[]string{`10:12: t.needs[0]: needs unknown job "m: [windows]"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, tt.yaml, tt.want...)
		})
	}
}

func TestDryRunShowsParallelExpansions(t *testing.T) {
	dr := dryRunOf(t, "test:\n  parallel:\n    matrix:\n      - GO: ['1.25', '1.26']\n  script: x\n")
	data, err := json.Marshal(dr)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`"name":"test: [1.25]","expanded_from":"test","status":"run"`, `{"name":"GO","value":"1.26"}`, `{"name":"CI_NODE_TOTAL","value":"2"}`} {
		if !bytes.Contains(data, []byte(w)) {
			t.Errorf("JSON lacks %s:\n%s", w, data)
		}
	}
	var text bytes.Buffer
	dr.WriteText(&text)
	if w := fmt.Sprintf("%-12s  run          when: on_success, parallel: test", "test: [1.26]"); !strings.Contains(text.String(), w) {
		t.Errorf("text lacks %q:\n%s", w, text.String())
	}
}

// TestParallelWithinBudget: parallel multiplies jobs, and a small file of many
// parallel jobs must be refused in bounded time rather than make millions of them.
func TestParallelWithinBudget(t *testing.T) {
	var b strings.Builder
	b.WriteString(".t:\n  parallel: 200\n  script: x\n  variables: {")
	for i := range 20 {
		fmt.Fprintf(&b, "V%d: x, ", i)
	}
	b.WriteString("}\n")
	for i := range 20000 {
		fmt.Fprintf(&b, "j%d: {extends: .t}\n", i)
	}
	_, err := Parse(".gitlab-ci.yml", []byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "takes more than") {
		t.Fatalf("error = %v, want the expansion budget", err)
	}
}
