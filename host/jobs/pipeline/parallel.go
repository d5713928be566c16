package pipeline

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// MaxParallel is GitLab's limit on parallel: N and on the jobs one parallel:matrix
// makes.
const MaxParallel = 200

// parallelSpec is a job's parallel: keyword: N copies, or one job per combination
// of the matrix.
type parallelSpec struct {
	total  int
	matrix []jobs.Variables // nil for parallel: N
	at     node
}

// parseParallel reads parallel: N or parallel: {matrix: [...]}.
func parseParallel(d *diags, n node, path string) *parallelSpec {
	v := resolve(n)
	if v.Kind == yaml.ScalarNode {
		total, err := strconv.Atoi(v.Value)
		if err != nil || total < 1 || total > MaxParallel {
			d.errorHint(v, path, fmt.Sprintf("use a number from 1 to %d, or matrix:", MaxParallel), "parallel %q is not a number from 1 to %d", v.Value, MaxParallel)
			return nil
		}
		return &parallelSpec{total: total, at: v}
	}
	m := mapping(d, v, path)
	if m == nil {
		return nil
	}
	var spec *parallelSpec
	for _, kv := range d.pairs(m) {
		if kv.key.Value != "matrix" {
			d.errorHint(kv.key, path+"."+kv.key.Value, "allowed: matrix", "unknown parallel keyword %q", kv.key.Value)
			continue
		}
		combos := matrixCombos(d, kv.value, path+".matrix")
		if combos == nil {
			return nil
		}
		spec = &parallelSpec{total: len(combos), matrix: combos, at: kv.key}
	}
	if spec == nil && len(d.errs) == 0 {
		d.errorHint(v, path, "write parallel: N or parallel: matrix: [...]", "parallel has no matrix")
	}
	return spec
}

// matrixCombos reads a parallel:matrix list: each entry is a mapping of variable
// names to a value or a list of values, and makes one job per combination of its
// values (the first variable varying slowest, as GitLab orders them). nil after an
// error.
func matrixCombos(d *diags, n node, path string) []jobs.Variables {
	if resolve(n).Kind != yaml.SequenceNode {
		seq(d, n, path) // the error
		return nil
	}
	items := seq(d, n, path)
	if len(items) == 0 {
		d.errorf(n, path, "the matrix is empty")
		return nil
	}
	var out []jobs.Variables
	ok := true
	for i, it := range items {
		ip := fmt.Sprintf("%s[%d]", path, i)
		m := mapping(d, it, ip)
		if m == nil {
			ok = false
			continue
		}
		combos := []jobs.Variables{nil}
		for _, kv := range d.pairs(m) {
			kp := ip + "." + kv.key.Value
			if !varName.MatchString(kv.key.Value) {
				d.errorHint(kv.key, kp, "use letters, digits and underscores, not starting with a digit", "invalid variable name %q", kv.key.Value)
				ok = false
				continue
			}
			vals := []node{resolve(kv.value)}
			if vals[0].Kind == yaml.SequenceNode {
				vals = seq(d, vals[0], kp)
			}
			if len(vals) == 0 {
				d.errorf(kv.value, kp, "a matrix variable needs at least one value")
				ok = false
				continue
			}
			if len(out)+len(combos)*len(vals) > MaxParallel {
				d.errorHint(kv.key, kp, "split the job, or list fewer values", "the matrix makes more than %d jobs (GitLab's limit)", MaxParallel)
				return nil
			}
			next := make([]jobs.Variables, 0, len(combos)*len(vals))
			for _, c := range combos {
				for j, val := range vals {
					s := scalar(d, val, fmt.Sprintf("%s[%d]", kp, j))
					next = append(next, append(c[:len(c):len(c)], jobs.Variable{Key: kv.key.Value, Value: s}))
				}
			}
			combos = next
		}
		if len(combos) == 1 && combos[0] == nil {
			d.errorf(it, ip, "a matrix entry needs at least one variable")
			ok = false
			continue
		}
		out = append(out, combos...)
	}
	if !ok {
		return nil
	}
	return out
}

// matrixName is GitLab's name for the job of a matrix combination: "test: [a, b]".
func matrixName(job string, combo jobs.Variables) string {
	vals := make([]string, len(combo))
	for i, v := range combo {
		vals[i] = v.Value
	}
	return job + ": [" + strings.Join(vals, ", ") + "]"
}

// names returns the names of the jobs a parallel job expands into.
func (s *parallelSpec) names(job string) []string {
	out := make([]string, s.total)
	for i := range out {
		if s.matrix != nil {
			out[i] = matrixName(job, s.matrix[i])
		} else {
			out[i] = fmt.Sprintf("%s %d/%d", job, i+1, s.total)
		}
	}
	return out
}

// expandParallel replaces every job with parallel: by the jobs it expands into, with
// CI_NODE_INDEX, CI_NODE_TOTAL and the matrix variables, as GitLab does when it
// creates the pipeline. A need of a parallel job by its name, in needs: or in a rule,
// becomes a need of every job it expands into.
func expandParallel(d *diags, p *Pipeline) {
	groups := map[string][]string{}
	for _, j := range p.Jobs {
		if j.parallel != nil {
			groups[j.Name] = j.parallel.names(j.Name)
		}
	}
	if len(groups) == 0 {
		return
	}
	for _, j := range p.Jobs {
		j.Needs, j.needOpt, j.needAt = expandNeeds(j.Needs, j.needOpt, j.needAt, groups)
		for i := range j.Rules {
			r := &j.Rules[i]
			r.Needs, r.needOpt, r.needAt = expandNeeds(r.Needs, r.needOpt, r.needAt, groups)
		}
	}
	seen := map[string]bool{}
	for _, j := range p.Jobs {
		if j.parallel == nil {
			seen[j.Name] = true
		}
	}
	var out []*Job
	for _, j := range p.Jobs {
		if j.parallel == nil {
			out = append(out, j)
			continue
		}
		spec := j.parallel
		// The jobs made count against the expansion budget: a small file of many
		// parallel jobs must not make millions.
		d.job, d.jobNode = j.Name, spec.at
		d.step(spec.total * (len(j.Variables) + 2))
		for i, name := range groups[j.Name] {
			if seen[name] {
				d.errorHint(spec.at, j.Name+".parallel", "rename one of the jobs", "parallel makes a job %q, which is defined already", name)
				continue
			}
			seen[name] = true
			c := *j
			c.Name, c.Origin, c.parallel = name, j.Name, nil
			vars := make(jobs.Variables, 0, len(j.Variables)+2+len(spec.matrix))
			vars = append(vars, j.Variables...)
			vars = append(vars, jobs.Variable{Key: "CI_NODE_INDEX", Value: strconv.Itoa(i + 1)}, jobs.Variable{Key: "CI_NODE_TOTAL", Value: strconv.Itoa(spec.total)})
			if spec.matrix != nil {
				vars = append(vars, spec.matrix[i]...)
			}
			c.Variables = vars
			out = append(out, &c)
		}
	}
	d.job, d.jobNode = "", nil
	p.Jobs = out
}

// expandNeeds replaces each need of a parallel job, named as written, by the jobs it
// expands into; the other needs stay. nil stays nil ("the earlier stages").
func expandNeeds(needs []string, opt []bool, at []node, groups map[string][]string) ([]string, []bool, []node) {
	if needs == nil {
		return nil, opt, at
	}
	out := []string{}
	var oo []bool
	var ao []node
	for i, n := range needs {
		names, ok := groups[n]
		if !ok {
			names = []string{n}
		}
		for _, x := range names {
			out, oo, ao = append(out, x), append(oo, optionalAt(opt, i)), append(ao, nodeAt(at, i))
		}
	}
	return out, oo, ao
}
