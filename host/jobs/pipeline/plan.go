package pipeline

import (
	"fmt"
	"slices"
	"strings"
)

// Plan is what `runner exec` will run: the jobs in a valid order, each with the jobs it
// waits for, and the jobs left out with the reason.
type Plan struct {
	// Jobs are in topological order: every job comes after the jobs it waits for.
	Jobs []*Job
	// Deps maps a job name to the names of the jobs it waits for.
	Deps map[string][]string
	// Skipped lists jobs that will not run (manual, never) and why.
	Skipped []Skip
}

// Skip is a job left out of a plan.
type Skip struct {
	Name, Reason string
}

// Plan builds the job graph. With no names it plans the whole pipeline; with names it
// plans those jobs plus everything they wait for. A job's dependencies are its needs:
// when given, else every job of the earlier stages (GitLab's stage ordering).
func (p *Pipeline) Plan(names ...string) (*Plan, error) {
	stageIndex := map[string]int{}
	for i, s := range p.Stages {
		stageIndex[s] = i
	}
	plan := &Plan{Deps: map[string][]string{}}
	skipped := map[string]string{}
	for _, j := range p.Jobs {
		switch j.When {
		case WhenManual:
			skipped[j.Name] = "when: manual jobs are not run by runner exec (name it to run it)"
		case WhenNever:
			skipped[j.Name] = "when: never"
		}
	}
	// A manual job named explicitly is run: that is how a user asks for it.
	for _, n := range names {
		if j := p.Job(n); j == nil {
			known := make([]string, len(p.Jobs))
			for i, x := range p.Jobs {
				known[i] = x.Name
			}
			return nil, fmt.Errorf("%s: no job named %q (%s)", p.File, n, suggestOr(n, known))
		} else if j.When == WhenManual {
			delete(skipped, n)
		}
	}
	deps := map[string][]string{}
	for _, j := range p.Jobs {
		if _, skip := skipped[j.Name]; skip {
			continue
		}
		deps[j.Name] = nil // every runnable job has an entry, even with no dependencies
		if j.Needs != nil {
			deps[j.Name] = slices.Clone(j.Needs)
			continue
		}
		for _, o := range p.Jobs {
			if _, skip := skipped[o.Name]; !skip && stageIndex[o.Stage] < stageIndex[j.Stage] {
				deps[j.Name] = append(deps[j.Name], o.Name)
			}
		}
	}
	// A job that needs a skipped job cannot run either; repeat until nothing changes.
	for changed := true; changed; {
		changed = false
		for name, ds := range deps {
			for _, dep := range ds {
				if _, skip := skipped[dep]; skip {
					skipped[name] = fmt.Sprintf("needs %s, which does not run", dep)
					delete(deps, name)
					changed = true
					break
				}
			}
		}
	}
	want := map[string]bool{}
	if len(names) == 0 {
		for n := range deps {
			want[n] = true
		}
	} else {
		var visit func(string)
		visit = func(n string) {
			if want[n] {
				return
			}
			want[n] = true
			for _, d := range deps[n] {
				visit(d)
			}
		}
		for _, n := range names {
			if reason, skip := skipped[n]; skip {
				return nil, fmt.Errorf("%s: job %q cannot run: %s", p.File, n, reason)
			}
			visit(n)
		}
	}
	// Topological order (Kahn), stable in file order.
	done := map[string]bool{}
	for len(plan.Jobs) < len(want) {
		progressed := false
		for _, j := range p.Jobs {
			if !want[j.Name] || done[j.Name] {
				continue
			}
			if slices.ContainsFunc(deps[j.Name], func(d string) bool { return !done[d] }) {
				continue
			}
			done[j.Name] = true
			plan.Jobs = append(plan.Jobs, j)
			plan.Deps[j.Name] = deps[j.Name]
			progressed = true
		}
		if !progressed {
			var cyc []string
			for n := range want {
				if !done[n] {
					cyc = append(cyc, n)
				}
			}
			slices.Sort(cyc)
			return nil, fmt.Errorf("%s: needs form a cycle among: %s", p.File, strings.Join(cyc, ", "))
		}
	}
	for _, j := range p.Jobs {
		if reason, ok := skipped[j.Name]; ok && (len(names) == 0 || want[j.Name]) {
			plan.Skipped = append(plan.Skipped, Skip{j.Name, reason})
		}
	}
	return plan, nil
}

// Outcome is how a job ended, as far as the jobs after it care.
type Outcome int

// The outcomes.
const (
	Succeeded Outcome = iota
	// FailedAllowed: the job failed but has allow_failure; it counts as a success.
	FailedAllowed
	Failed
	// NotRun: the job was skipped because of an earlier failure.
	NotRun
)

// ShouldRun decides from the outcomes of the jobs j waits for whether j runs, following
// `when`: on_success runs when every dependency succeeded (allowed failures count as
// successes), on_failure when at least one failed, always in any case.
func ShouldRun(j *Job, deps []Outcome) bool {
	bad := slices.ContainsFunc(deps, func(o Outcome) bool { return o == Failed || o == NotRun })
	switch j.When {
	case WhenAlways:
		return true
	case WhenOnFailure:
		return bad
	default:
		return !bad
	}
}
