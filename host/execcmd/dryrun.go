package execcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/pipeline"
)

var varName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// parseVars reads --var NAME=VALUE flags.
func parseVars(kvs []string) (jobs.Variables, error) {
	var out jobs.Variables
	for _, kv := range kvs {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !varName.MatchString(name) {
			return nil, fmt.Errorf("--var %q: expected NAME=VALUE, NAME of letters, digits and _ not starting with a digit", kv)
		}
		out = append(out, jobs.Variable{Key: name, Value: value})
	}
	return out, nil
}

// pipelineSources are GitLab's values of CI_PIPELINE_SOURCE.
var pipelineSources = []string{"push", "web", "schedule", "api", "trigger", "pipeline", "parent_pipeline",
	"merge_request_event", "external", "external_pull_request_event", "chat", "webide",
	"ondemand_dast_scan", "ondemand_dast_validation", "security_orchestration_policy"}

func checkSource(s string) error {
	if s == "" || slices.Contains(pipelineSources, s) {
		return nil
	}
	return fmt.Errorf("--source %q: use one of GitLab's pipeline sources: %s", s, strings.Join(pipelineSources, ", "))
}

// pipelineIDs are the local counters behind CI_PIPELINE_ID (one per machine) and
// CI_PIPELINE_IID (one per project directory), kept in a small JSON file.
type pipelineIDs struct {
	path, project string
	mu            sync.Mutex // take is called by the trigger jobs of a running pipeline
	state         struct {
		LastID   int            `json:"last_id"`
		LastIIDs map[string]int `json:"last_iids"`
	}
}

// next returns the next IDs without taking them: a dry run or a refused run shows
// them but leaves the counters alone.
func (p *pipelineIDs) next() (id, iid int) {
	if data, err := os.ReadFile(p.path); err == nil {
		_ = json.Unmarshal(data, &p.state) // a damaged file starts the counters again
	}
	if p.state.LastIIDs == nil {
		p.state.LastIIDs = map[string]int{}
	}
	return p.state.LastID + 1, p.state.LastIIDs[p.project] + 1
}

// take returns the next IDs and takes them: a child pipeline's.
func (p *pipelineIDs) take() (id, iid int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id, iid = p.next()
	p.commit()
	return id, iid
}

// commit takes the IDs next returned. A failure to record them only means the next
// run shows the same numbers, which is not worth failing a run for.
func (p *pipelineIDs) commit() {
	p.state.LastID++
	p.state.LastIIDs[p.project]++
	data, err := json.Marshal(p.state)
	if err != nil || os.MkdirAll(filepath.Dir(p.path), 0o755) != nil {
		return
	}
	tmp := p.path + ".tmp"
	if os.WriteFile(tmp, data, 0o644) == nil {
		_ = os.Rename(tmp, p.path)
	}
}

// evaluate applies the pipeline's workflow, rules, only and except, then plans it.
// With a nil Evaluation the run stops with code and err; a workflow that creates no
// pipeline is code 0 (and, for a dry run, the *pipeline.NoPipelineError).
func evaluate(p *pipeline.Pipeline, env pipeline.Env, o Options) (*pipeline.Evaluation, *pipeline.Plan, int, error) {
	ev, err := p.Evaluate(env)
	var none *pipeline.NoPipelineError
	if errors.As(err, &none) {
		if o.DryRun {
			return nil, nil, 0, none
		}
		fmt.Fprintln(o.Stderr, "runner exec:", err)
		return nil, nil, 0, nil
	}
	if err != nil {
		return nil, nil, ExitInvalid, err
	}
	for _, n := range o.Jobs {
		if d := ev.Decision(n); d != nil && !d.Added {
			return nil, nil, ExitInvalid, fmt.Errorf("%s: job %q is not in the pipeline: %s", p.File, n, d.Reason)
		}
	}
	plan, err := ev.Pipeline.Plan(o.Jobs...)
	if err != nil {
		return nil, nil, ExitInvalid, err
	}
	return ev, plan, 0, nil
}

// dryRun prints what would run, with the child pipelines of trigger jobs.
func dryRun(ctx context.Context, o Options, p *pipeline.Pipeline, ev *pipeline.Evaluation, plan *pipeline.Plan, env pipeline.Env, children pipeline.ChildOptions, warnings []string, err error) error {
	var dr *pipeline.DryRun
	var none *pipeline.NoPipelineError
	if errors.As(err, &none) {
		dr = pipeline.NoPipeline(p, none, env.Predefined)
	} else {
		dr = pipeline.NewDryRun(p, ev, plan, env.Predefined, o.Jobs)
		dr.AddChildren(ctx, ev, children)
	}
	dr.Warnings = append(dr.Warnings, warnings...)
	if !o.JSON {
		dr.WriteText(o.Stdout)
		return nil
	}
	enc := json.NewEncoder(o.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(dr); err != nil {
		return fmt.Errorf("write the plan: %w", err)
	}
	return nil
}

// addPredefined gives every job the run's predefined variables, before its own.
// CI_PROJECT_DIR is left to the executor, which sets it to the job's build directory.
func addPredefined(js []*pipeline.Job, predefined jobs.Variables) {
	pre := slices.DeleteFunc(slices.Clone(predefined), func(v jobs.Variable) bool { return v.Key == "CI_PROJECT_DIR" })
	for _, j := range js {
		j.Variables = slices.Concat(pre, j.Variables)
	}
}
