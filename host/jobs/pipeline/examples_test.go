package pipeline

import (
	"path/filepath"
	"slices"
	"testing"
)

// The example projects of the README must parse and plan as documented.
func TestExamplePipelines(t *testing.T) {
	tests := []struct {
		dir  string
		jobs []string
		deps map[string][]string
	}{
		{"go-module", []string{"build", "vet", "test"}, map[string][]string{"test": {"build"}, "vet": {"build"}}},
		{"failing-job", []string{"unit", "flaky", "report-failure"}, map[string][]string{"report-failure": {"unit", "flaky"}}},
		{"needs-dag", []string{"build-a", "build-b", "test-a", "lint", "deploy"}, map[string][]string{"test-a": {"build-a"}, "lint": nil, "deploy": {"test-a", "build-b"}}},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			p, err := Load(filepath.Join("..", "..", "..", "examples", "pipelines", tt.dir, ".gitlab-ci.yml"))
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Warnings) > 0 {
				t.Errorf("warnings: %v", p.Warnings)
			}
			plan, err := p.Plan()
			if err != nil {
				t.Fatal(err)
			}
			if got := names(plan.Jobs); !slices.Equal(got, tt.jobs) {
				t.Errorf("jobs = %v, want %v", got, tt.jobs)
			}
			for job, want := range tt.deps {
				if got := plan.Deps[job]; !slices.Equal(got, want) {
					t.Errorf("deps[%s] = %v, want %v", job, got, want)
				}
			}
		})
	}
}
