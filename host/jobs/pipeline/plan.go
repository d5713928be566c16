package pipeline

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/flotilla-ci/flotilla/host/internal/didyoumean"
)

// Plan is what `runner exec` will run: the jobs in a valid order, each with the jobs it
// waits for, and the jobs left out with the reason.
type Plan struct {
	// Pipeline is the pipeline planned.
	Pipeline *Pipeline
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
//
// The work and memory are linear in the jobs and their needs, also for pipelines of
// thousands of jobs in stage order: the jobs of one stage share one dependency list
// (so the slices in Deps may share memory and must not be modified).
func (p *Pipeline) Plan(names ...string) (*Plan, error) {
	stageIndex := make(map[string]int, len(p.Stages))
	for i, s := range p.Stages {
		stageIndex[s] = i
	}
	byName := make(map[string]*Job, len(p.Jobs))
	fileIndex := make(map[string]int, len(p.Jobs))
	for i, j := range p.Jobs {
		if _, dup := byName[j.Name]; !dup {
			byName[j.Name], fileIndex[j.Name] = j, i
		}
	}
	plan := &Plan{Pipeline: p, Deps: map[string][]string{}}
	skipped := map[string]string{}
	for _, j := range p.Jobs {
		switch {
		case j.Upstream != "":
			skipped[j.Name] = fmt.Sprintf("needs:pipeline %s: it mirrors another project's pipeline, which runner exec does not wait for", j.Upstream)
		case j.Trigger != nil && j.Trigger.Project != "":
			skipped[j.Name] = fmt.Sprintf("trigger:project %s: multi-project pipelines are not run by runner exec", j.Trigger.Project)
		case j.When == WhenManual:
			skipped[j.Name] = "when: manual jobs are not run by runner exec (name it to run it)"
		case j.When == WhenNever:
			skipped[j.Name] = "when: never"
		}
	}
	// A manual job named explicitly is run: that is how a user asks for it.
	for _, n := range names {
		if j := byName[n]; j == nil {
			return nil, p.noJob(n)
		} else if j.When == WhenManual {
			delete(skipped, n)
		}
	}

	// Stage ordering: the runnable jobs sorted by stage (file order within a stage);
	// a job without needs waits for a prefix of this list.
	var byStage []*Job
	for _, j := range p.Jobs {
		if _, skip := skipped[j.Name]; !skip && byName[j.Name] == j {
			byStage = append(byStage, j)
		}
	}
	slices.SortStableFunc(byStage, func(a, b *Job) int { return stageIndex[a.Stage] - stageIndex[b.Stage] })
	stageOrder := make([]string, len(byStage))
	for i, j := range byStage {
		stageOrder[i] = j.Name
	}
	// earlier returns how many of stageOrder are in stages before s.
	earlier := func(s int) int {
		n, _ := slices.BinarySearchFunc(byStage, s, func(j *Job, s int) int { return stageIndex[j.Stage] - s })
		return n
	}
	deps := map[string][]string{}
	dependents := map[string][]string{} // of explicit needs only
	var stageJobs []*Job                // runnable jobs without needs, by stage
	prefix := map[string]int{}          // a job of stageJobs → the length of its deps
	for _, j := range byStage {
		if j.Needs != nil {
			deps[j.Name] = slices.Clone(j.Needs)
			for _, n := range j.Needs {
				if byName[n] == nil {
					return nil, fmt.Errorf("%s: job %q needs unknown job %q", p.File, j.Name, n)
				}
				dependents[n] = append(dependents[n], j.Name)
			}
			continue
		}
		k := earlier(stageIndex[j.Stage])
		deps[j.Name] = stageOrder[:k:k] // every runnable job has an entry, even with no dependencies
		prefix[j.Name] = k
		stageJobs = append(stageJobs, j)
	}

	// A job that waits for a skipped job cannot run either. Explicit needs are
	// followed backwards; a runnable job that becomes skipped also stops every job
	// without needs of a later stage (they wait for it), which is one cut per stage.
	queue := make([]string, 0, len(skipped))
	for _, j := range p.Jobs {
		if _, skip := skipped[j.Name]; skip && byName[j.Name] == j {
			queue = append(queue, j.Name)
		}
	}
	propagated := map[string]bool{}
	cut, next := len(p.Stages), len(stageJobs)-1 // stageJobs[next+1:] are skipped
	// A manual job that may not fail (allow_failure: false, as a rule's when: manual
	// leaves it) blocks the later stages in GitLab until someone runs it.
	blocking := func(x string) bool {
		j := byName[x]
		_, skip := skipped[x]
		return skip && j.When == WhenManual && !j.AllowFailure
	}
	cutBy := ""
	skip := func(name string) {
		if _, done := skipped[name]; !done && !propagated[name] {
			propagated[name] = true
			queue = append(queue, name)
		}
	}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		for _, r := range dependents[x] {
			skip(r)
		}
		if s := stageIndex[byName[x].Stage]; (propagated[x] || blocking(x)) && s < cut {
			cut, cutBy = s, x
			for ; next >= 0 && stageIndex[stageJobs[next].Stage] > cut; next-- {
				skip(stageJobs[next].Name)
			}
		}
	}
	// The reason names the first dependency that does not run; for the jobs without
	// needs that is the first skipped job of stageOrder.
	firstSkipped := slices.IndexFunc(stageOrder, func(n string) bool { return propagated[n] })
	for _, j := range p.Jobs {
		if !propagated[j.Name] {
			continue
		}
		ds := deps[j.Name]
		if j.Needs == nil && firstSkipped >= 0 {
			ds = stageOrder[firstSkipped : firstSkipped+1]
		}
		if j.Needs == nil && cutBy != "" && blocking(cutBy) && (firstSkipped < 0 || stageIndex[byName[cutBy].Stage] <= stageIndex[byName[stageOrder[firstSkipped]].Stage]) {
			skipped[j.Name] = fmt.Sprintf("waits for the manual job %s, which blocks the later stages (allow_failure: false)", cutBy)
			delete(deps, j.Name)
			continue
		}
		skipped[j.Name] = "a job it waits for does not run"
		for _, d := range ds {
			if _, wasSkipped := skipped[d]; wasSkipped || propagated[d] {
				skipped[j.Name] = fmt.Sprintf("needs %s, which does not run", d)
				break
			}
		}
		delete(deps, j.Name)
	}

	want := map[string]bool{}
	if len(names) == 0 {
		for n := range deps {
			want[n] = true
		}
	} else {
		var stack []string
		for _, n := range names {
			if reason, skip := skipped[n]; skip {
				return nil, fmt.Errorf("%s: job %q cannot run: %s", p.File, n, reason)
			}
			stack = append(stack, n)
		}
		pushed := 0 // stageOrder[:pushed] is on the stack already: prefixes nest
		for len(stack) > 0 {
			n := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if want[n] {
				continue
			}
			want[n] = true
			if k, ok := prefix[n]; ok {
				if k > pushed {
					stack = append(stack, stageOrder[pushed:k]...)
					pushed = k
				}
				continue
			}
			stack = append(stack, deps[n]...)
		}
	}

	// Order: the order of the classic algorithm that sweeps the jobs in file order
	// again and again, taking each job whose dependencies are done. A job is taken in
	// sweep pass(j) = max(1, pass(d) for a dependency d before it in the file,
	// pass(d)+1 for one after it); the order is by pass, then file position.
	pass := make(map[string]int, len(want))
	onPath := map[string]int{} // job → its position in path
	var path, cycle []string
	var visit func(n string) int
	// sums[k] summarizes stageOrder[:k]: the highest pass, and the last file position
	// of a job with that pass (a job after it in the file waits one pass more).
	type summary struct{ max, lastAtMax int }
	sums := []summary{{0, -1}}
	summarize := func(k int) summary {
		for len(sums) <= k && cycle == nil {
			i := len(sums) - 1
			d := stageOrder[i]
			pd := visit(d)
			if len(sums) != i+1 || cycle != nil {
				continue // a nested call extended the summaries already
			}
			s := sums[i]
			switch {
			case pd > s.max:
				s = summary{pd, fileIndex[d]}
			case pd == s.max:
				s.lastAtMax = max(s.lastAtMax, fileIndex[d])
			}
			sums = append(sums, s)
		}
		if cycle != nil {
			return summary{}
		}
		return sums[k]
	}
	visit = func(n string) int {
		if v, ok := pass[n]; ok {
			return v
		}
		if i, ok := onPath[n]; ok {
			cycle = slices.Clone(path[i:])
			return 0
		}
		onPath[n] = len(path)
		path = append(path, n)
		v := 1
		ds := deps[n]
		if k, ok := prefix[n]; ok {
			// A job without needs waits for a whole prefix of stageOrder: take the
			// prefix's summary instead of walking it again for every such job.
			s := summarize(k)
			if cycle != nil {
				return 0
			}
			v = max(v, s.max)
			if s.lastAtMax > fileIndex[n] {
				v = max(v, s.max+1)
			}
			ds = nil
		}
		for _, d := range ds {
			pd := visit(d)
			if cycle != nil {
				return 0
			}
			if fileIndex[d] > fileIndex[n] {
				pd++
			}
			v = max(v, pd)
		}
		path = path[:len(path)-1]
		delete(onPath, n)
		pass[n] = v
		return v
	}
	for _, j := range p.Jobs {
		if want[j.Name] && cycle == nil {
			visit(j.Name)
		}
	}
	if cycle != nil {
		slices.Sort(cycle)
		return nil, fmt.Errorf("%s: needs form a cycle among: %s", p.File, strings.Join(cycle, ", "))
	}
	for _, j := range p.Jobs {
		if want[j.Name] && byName[j.Name] == j {
			plan.Jobs = append(plan.Jobs, j)
			plan.Deps[j.Name] = deps[j.Name]
		}
	}
	slices.SortStableFunc(plan.Jobs, func(a, b *Job) int { return pass[a.Name] - pass[b.Name] })
	for _, j := range p.Jobs {
		if reason, ok := skipped[j.Name]; ok && (len(names) == 0 || want[j.Name]) {
			plan.Skipped = append(plan.Skipped, Skip{j.Name, reason})
		}
	}
	return plan, nil
}

// maxNamesShown bounds the job names a message lists.
const maxNamesShown = 3

// noJob is the error for a job name that is not in the pipeline: the closest names,
// never the whole list, which can be thousands long.
func (p *Pipeline) noJob(name string) error {
	known := make([]string, len(p.Jobs))
	for i, j := range p.Jobs {
		known[i] = j.Name
	}
	msg := fmt.Sprintf("%s: no job named %q", p.File, name)
	switch close := didyoumean.Nearest(name, known, maxNamesShown); {
	case len(close) > 0:
		msg += "; did you mean " + quoteList(close, "or") + "?"
	case len(known) <= maxNamesShown:
		msg += "; the jobs are " + quoteList(known, "and")
	}
	plural := "s"
	if len(known) == 1 {
		plural = ""
	}
	msg += fmt.Sprintf(" (%d job%s in the file", len(known), plural)
	if strings.HasPrefix(name, ".") {
		msg += "; a name starting with \".\" is a hidden job, a template for extends, and never runs"
	}
	return errors.New(msg + ")")
}

// quoteList writes names as "a", "b" or "c".
func quoteList(names []string, conj string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " " + conj + " " + q[len(q)-1]
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
