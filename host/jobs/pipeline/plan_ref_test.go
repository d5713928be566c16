package pipeline

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// referencePlan is the first implementation of Plan: simple, quadratic, and the
// definition of the order and the skips that Plan must keep.
func referencePlan(p *Pipeline, names ...string) (*Plan, error) {
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
			return nil, fmt.Errorf("%s: no job named %q (%s)", p.File, n, strings.Join(known, ", "))
		} else if j.When == WhenManual {
			delete(skipped, n)
		}
	}
	// A manual job that may not fail blocks the later stages: the jobs there that
	// wait for the earlier stages do not run.
	blocking := func(o *Job) bool {
		_, skip := skipped[o.Name]
		return skip && o.When == WhenManual && !o.AllowFailure
	}
	deps := map[string][]string{}
	for _, j := range p.Jobs {
		if _, skip := skipped[j.Name]; skip {
			continue
		}
		if j.Needs == nil {
			if i := slices.IndexFunc(p.Jobs, func(o *Job) bool { return blocking(o) && stageIndex[o.Stage] < stageIndex[j.Stage] }); i >= 0 {
				skipped[j.Name] = "waits for the manual job " + p.Jobs[i].Name
				continue
			}
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

// randomPipeline builds a pipeline of n jobs over a few stages with random needs
// (earlier or same stage, sometimes later ones or cycles) and random when.
func randomPipeline(r *rand.Rand, n int) *Pipeline {
	p := &Pipeline{File: "ci.yml", Stages: []string{".pre", "build", "test", "deploy", ".post"}}
	for i := range n {
		j := &Job{When: WhenOnSuccess}
		j.Name = fmt.Sprintf("j%d", i)
		j.Stage = p.Stages[r.IntN(len(p.Stages))]
		switch r.IntN(10) {
		case 0:
			j.When, j.AllowFailure = WhenManual, r.IntN(2) == 0
		case 1:
			j.When = WhenNever
		}
		if r.IntN(3) == 0 {
			j.Needs = []string{}
			for range r.IntN(3) {
				j.Needs = append(j.Needs, fmt.Sprintf("j%d", r.IntN(n)))
			}
		}
		p.Jobs = append(p.Jobs, j)
	}
	return p
}

// TestPlanMatchesReference: on random pipelines, Plan takes the same jobs in the same
// order, waits for the same jobs and skips the same jobs as the reference.
func TestPlanMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 3000 {
		p := randomPipeline(r, 1+r.IntN(12))
		var names []string
		if r.IntN(3) == 0 {
			names = []string{p.Jobs[r.IntN(len(p.Jobs))].Name}
		}
		want, werr := referencePlan(p, names...)
		got, gerr := p.Plan(names...)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("trial %d %v: err = %v, reference %v\n%s", trial, names, gerr, werr, dump(p))
		}
		if werr != nil {
			if strings.Contains(werr.Error(), "cycle") != strings.Contains(gerr.Error(), "cycle") {
				t.Fatalf("trial %d: err = %v, reference %v\n%s", trial, gerr, werr, dump(p))
			}
			continue
		}
		if g, w := names2(got.Jobs), names2(want.Jobs); g != w {
			t.Fatalf("trial %d %v: order %s, reference %s\n%s", trial, names, g, w, dump(p))
		}
		for n, wd := range want.Deps {
			gd := slices.Sorted(slices.Values(got.Deps[n]))
			if slices.Sort(wd); !slices.Equal(gd, wd) {
				t.Fatalf("trial %d: deps[%s] = %v, reference %v\n%s", trial, n, gd, wd, dump(p))
			}
		}
		var gs, ws []string
		for _, s := range got.Skipped {
			gs = append(gs, s.Name)
		}
		for _, s := range want.Skipped {
			ws = append(ws, s.Name)
		}
		if !slices.Equal(gs, ws) {
			t.Fatalf("trial %d: skipped %v, reference %v\n%s", trial, gs, ws, dump(p))
		}
	}
}

func names2(js []*Job) string { return strings.Join(names(js), ",") }

func dump(p *Pipeline) string {
	var b strings.Builder
	for _, j := range p.Jobs {
		fmt.Fprintf(&b, "%s stage=%s when=%s needs=%v\n", j.Name, j.Stage, j.When, j.Needs)
	}
	return b.String()
}

// TestPlanLargeStagePipeline: thousands of jobs in stage order plan without holding a
// dependency list per job (a pipeline of 20,000 jobs used to need gigabytes).
func TestPlanLargeStagePipeline(t *testing.T) {
	p := &Pipeline{File: "ci.yml", Stages: []string{".pre", "build", "test", "deploy", ".post"}}
	for i := range 20000 {
		j := &Job{When: WhenOnSuccess}
		j.Name, j.Stage = fmt.Sprintf("j%d", i), p.Stages[1+i%3]
		p.Jobs = append(p.Jobs, j)
	}
	plan, err := p.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Jobs) != 20000 || len(plan.Deps["j2"]) != 13334 {
		t.Fatalf("jobs %d, deps of a deploy job %d", len(plan.Jobs), len(plan.Deps["j2"]))
	}
	// Jobs of a stage share one list.
	if &plan.Deps["j2"][0] != &plan.Deps["j5"][0] {
		t.Error("the deploy jobs do not share their dependency list")
	}
}
