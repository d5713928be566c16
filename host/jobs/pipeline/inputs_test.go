package pipeline

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

const inputsHeader = `spec:
  inputs:
    stage:
      default: test
    env:
      description: where to deploy
      options: [staging, production]
    parallel_jobs:
      type: number
      default: 2
    strict:
      type: boolean
      default: false
    commands:
      type: array
      default: [make, make check]
    version:
      regex: ^v\d+\.\d+$
      default: v1.0
---
`

const inputsBody = `stages: [build, test, deploy]
"deploy-$[[ inputs.env ]]":
  stage: $[[ inputs.stage ]]
  variables:
    JOBS: $[[ inputs.parallel_jobs ]]
    WHERE: "to $[[ inputs.env ]] at $[[ inputs.version ]]"
    SHORT: $[[ inputs.env | truncate(0,4) ]]
  allow_failure: $[[ inputs.strict ]]
  script: $[[ inputs.commands ]]
`

// TestInputs: a spec:inputs header's defaults and given values are interpolated with
// their types: a whole value keeps the input's type (an array becomes a list), inside
// a string it is text; job names may use inputs too.
func TestInputs(t *testing.T) {
	tests := []struct {
		name   string
		inputs map[string]string
		job    string
		stage  string
		script []string
		vars   map[string]string
		allow  bool
	}{
		{"defaults", map[string]string{"env": "staging"}, "deploy-staging", "test",
			[]string{"make", "make check"}, map[string]string{"JOBS": "2", "WHERE": "to staging at v1.0", "SHORT": "stag"}, false},
		{"given values", map[string]string{"env": "production", "stage": "deploy", "parallel_jobs": "5", "strict": "true",
			"commands": "[./deploy.sh]", "version": "v2.3"}, "deploy-production", "deploy",
			[]string{"./deploy.sh"}, map[string]string{"JOBS": "5", "WHERE": "to production at v2.3", "SHORT": "prod"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParseWith(context.Background(), "ci.yml", []byte(inputsHeader+inputsBody), Options{Inputs: tt.inputs})
			if err != nil {
				t.Fatal(err)
			}
			j := p.Job(tt.job)
			if j == nil {
				t.Fatalf("no job %s in %v", tt.job, names(p.Jobs))
			}
			if j.Stage != tt.stage || !slices.Equal(j.Script, tt.script) || j.AllowFailure != tt.allow {
				t.Errorf("job = stage %q script %q allow_failure %v", j.Stage, j.Script, j.AllowFailure)
			}
			for k, want := range tt.vars {
				if v, _ := j.Variables.Get(k); v != want {
					t.Errorf("%s = %q, want %q", k, v, want)
				}
			}
		})
	}
}

// TestInputErrors: a missing required input, a value outside the options, of the
// wrong type, or not matching the regex, and an input that is not declared, are each
// an error naming the input; so is an interpolation of an unknown input.
func TestInputErrors(t *testing.T) {
	tests := []struct {
		name   string
		file   string
		inputs map[string]string
		want   []string
	}{
		{"required input missing", inputsHeader + inputsBody, nil,
			[]string{`ci.yml:5:5: spec.inputs.env: ci.yml requires input "env", which has no default and was not given (give it with --input env=VALUE`}},
		{"value outside options", inputsHeader + inputsBody, map[string]string{"env": "prod"},
			[]string{`spec.inputs.env: input "env": prod is not one of the options (use one of: staging, production)`}},
		{"not a number", inputsHeader + inputsBody, map[string]string{"env": "staging", "parallel_jobs": "many"},
			[]string{`input "parallel_jobs": "many" is not a number`}},
		{"not a boolean", inputsHeader + inputsBody, map[string]string{"env": "staging", "strict": "yes"},
			[]string{`input "strict": "yes" is not true or false`}},
		{"not an array", inputsHeader + inputsBody, map[string]string{"env": "staging", "commands": "make"},
			[]string{`input "commands": "make" is not an array`}},
		{"regex", inputsHeader + inputsBody, map[string]string{"env": "staging", "version": "1.0"},
			[]string{`input "version": "1.0" does not match ^v\d+\.\d+$`}},
		{"undeclared input", inputsHeader + inputsBody, map[string]string{"env": "staging", "enviroment": "x"},
			[]string{`ci.yml declares no input "enviroment"`}},
		{"input for a file without a header", "job:\n  script: [x]\n", map[string]string{"env": "x"},
			[]string{`ci.yml has no spec: inputs header, so it takes no input "env"`}},
		{"unknown interpolation", "spec:\n  inputs:\n    a:\n      default: x\n---\njob:\n  script:\n    - echo $[[ inputs.b ]]\n", nil,
			[]string{`ci.yml:8:7: unknown input "b" in $[[ inputs.b ]]`}},
		{"default of the wrong type", "spec:\n  inputs:\n    n:\n      type: number\n      default: lots\n---\njob:\n  script: [x]\n", nil,
			[]string{`ci.yml:5:16: spec.inputs.n: input "n": lots is not a number`}},
		{"spec in the pipeline document", "spec:\n  inputs: {}\njob:\n  script: [x]\n", nil,
			[]string{"ci.yml:1:1: spec: an inputs header must be the file's first YAML document"}},
		{"two documents without a header", "a:\n  script: [x]\n---\nb:\n  script: [y]\n", nil,
			[]string{"the first is not a spec: header"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseWith(context.Background(), "ci.yml", []byte(tt.file), Options{Inputs: tt.inputs})
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

// TestInputsHeaderOnlyDefaults: a file with a header whose inputs all have defaults
// runs with no --input at all, as the "no jobs" file should.
func TestInputsHeaderOnlyDefaults(t *testing.T) {
	p, err := Parse("ci.yml", []byte("spec:\n  inputs:\n    timeout:\n      default: 10m\n---\ntest:\n  timeout: $[[ inputs.timeout ]]\n  script: [go test ./...]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if j := p.Job("test"); j == nil || j.Timeout != 10*time.Minute {
		t.Errorf("jobs = %v", names(p.Jobs))
	}
}
