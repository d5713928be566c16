package pipeline

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func mustParse(t *testing.T, y string) *Pipeline {
	t.Helper()
	p, err := Parse(".gitlab-ci.yml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func names(js []*Job) []string {
	out := make([]string, len(js))
	for i, j := range js {
		out[i] = j.Name
	}
	return out
}

func TestPlan(t *testing.T) {
	p := mustParse(t, full)
	plan, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := names(plan.Jobs), []string{"build", "test", "lint"}; !slices.Equal(got, want) {
		t.Errorf("order = %v, want %v", got, want)
	}
	if got := plan.Deps["test"]; !slices.Equal(got, []string{"build"}) {
		t.Errorf("test deps = %v, want stage order [build]", got)
	}
	if got := plan.Deps["lint"]; len(got) != 0 {
		t.Errorf("lint deps = %v, want none (needs: [])", got)
	}
	if len(plan.Skipped) != 1 || plan.Skipped[0].Name != "deploy" || !strings.Contains(plan.Skipped[0].Reason, "manual") {
		t.Errorf("skipped = %+v", plan.Skipped)
	}

	// Naming a manual job runs it, with what it needs.
	plan, err = p.Plan("deploy")
	if err != nil {
		t.Fatal(err)
	}
	if got := names(plan.Jobs); !slices.Equal(got, []string{"build", "deploy"}) {
		t.Errorf("plan(deploy) = %v", got)
	}
	if _, err := p.Plan("deplyo"); err == nil || !strings.Contains(err.Error(), `did you mean "deploy"`) {
		t.Errorf("unknown job: %v", err)
	}
}

func TestPlanCycle(t *testing.T) {
	p := mustParse(t, "a:\n  script: x\n  needs: [b]\nb:\n  script: y\n  needs: [a]\n")
	if _, err := p.Plan(); err == nil || !strings.Contains(err.Error(), "cycle among: a, b") {
		t.Fatalf("err = %v", err)
	}
}

func TestPlanNeedsOfManualJobSkipped(t *testing.T) {
	p := mustParse(t, "a:\n  script: x\n  when: manual\nb:\n  script: y\n  needs: [a]\nc:\n  script: z\n")
	plan, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(plan.Jobs); !slices.Equal(got, []string{"c"}) {
		t.Errorf("jobs = %v, want [c]", got)
	}
	if len(plan.Skipped) != 2 || !strings.Contains(plan.Skipped[1].Reason, "needs a") {
		t.Errorf("skipped = %+v", plan.Skipped)
	}
}

func TestShouldRun(t *testing.T) {
	tests := []struct {
		when string
		deps []Outcome
		want bool
	}{
		{WhenOnSuccess, nil, true},
		{WhenOnSuccess, []Outcome{Succeeded, FailedAllowed}, true},
		{WhenOnSuccess, []Outcome{Succeeded, Failed}, false},
		{WhenOnSuccess, []Outcome{NotRun}, false},
		{WhenOnFailure, []Outcome{Succeeded}, false},
		{WhenOnFailure, []Outcome{Succeeded, Failed}, true},
		{WhenOnFailure, []Outcome{NotRun}, true},
		{WhenAlways, []Outcome{Failed}, true},
	}
	for _, tt := range tests {
		if got := ShouldRun(&Job{When: tt.when}, tt.deps); got != tt.want {
			t.Errorf("ShouldRun(%s, %v) = %v, want %v", tt.when, tt.deps, got, tt.want)
		}
	}
}

// TestPlanUnknownJob: naming a job that does not exist suggests at most a few close
// names and counts the jobs, however many there are.
func TestPlanUnknownJob(t *testing.T) {
	var b strings.Builder
	for i := range 3000 {
		fmt.Fprintf(&b, "job-%04d: {script: [x]}\n", i)
	}
	b.WriteString(".hidden: {script: [x]}\n")
	p := mustParse(t, b.String())
	tests := []struct{ name, want string }{
		{"job-000", `.gitlab-ci.yml: no job named "job-000"; did you mean "job-0000", "job-0001" or "job-0002"? (3000 jobs in the file)`},
		{"nothing-like-it", `.gitlab-ci.yml: no job named "nothing-like-it" (3000 jobs in the file)`},
		{".hidden", `.gitlab-ci.yml: no job named ".hidden" (3000 jobs in the file; a name starting with "." is a hidden job, a template for extends, and never runs)`},
	}
	for _, tt := range tests {
		_, err := p.Plan(tt.name)
		if err == nil || err.Error() != tt.want {
			t.Errorf("Plan(%q) = %v\nwant %s", tt.name, err, tt.want)
		}
	}
	small := mustParse(t, "a: {script: [x]}\nb: {script: [y]}\n")
	if _, err := small.Plan("zzz"); err == nil || err.Error() != `.gitlab-ci.yml: no job named "zzz"; the jobs are "a" and "b" (2 jobs in the file)` {
		t.Errorf("err = %v", err)
	}
}
