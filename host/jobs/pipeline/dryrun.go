package pipeline

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// DryRunSchema is the version of DryRun's JSON form. Fields are only ever added
// within a version; a change of meaning or a removal raises it.
const DryRunSchema = 1

// Masked is what a dry run shows instead of a masked or file variable's value.
const Masked = "[masked]"

// DryRun is the pipeline as `runner exec --dry-run` shows it: what would run, what
// would not and why. Its JSON form is documented in docs/gitlab-ci-yml.md.
type DryRun struct {
	Schema int    `json:"schema"`
	File   string `json:"file"`
	// Created is false when workflow:rules create no pipeline; Reason says why.
	Created bool   `json:"created"`
	Reason  string `json:"reason,omitempty"`
	// Name is workflow:name, expanded.
	Name string `json:"name,omitempty"`
	// WorkflowRule is the index of the workflow rule that matched, nil without one.
	WorkflowRule *int `json:"workflow_rule,omitempty"`
	// Predefined are the run's predefined variables.
	Predefined []DryVariable `json:"predefined"`
	Stages     []DryStage    `json:"stages"`
	Warnings   []string      `json:"warnings"`
}

// DryStage is a stage and its jobs, in file order.
type DryStage struct {
	Name string   `json:"name"`
	Jobs []DryJob `json:"jobs"`
}

// DryJob is one job of a dry run.
type DryJob struct {
	Name string `json:"name"`
	// ExpandedFrom is the job's name as written when parallel: made it ("test" for
	// "test 1/2" or "test: [a, b]").
	ExpandedFrom string `json:"expanded_from,omitempty"`
	// Status is "run" (it would run), "manual" (manual, not named on the command
	// line), "skipped" (not added, when: never, or it waits for a job that does not
	// run) or "not_selected" (jobs were named and it is not one of them nor needed).
	Status       string `json:"status"`
	When         string `json:"when"`
	AllowFailure bool   `json:"allow_failure"`
	// Needs are the jobs it waits for; null means every job of the earlier stages.
	Needs []string `json:"needs"`
	// DecidedBy is "rules", "only", "except" or "" (the job has none of them); Rule
	// is the index of the rule that matched and If its if in canonical form.
	DecidedBy string `json:"decided_by,omitempty"`
	Rule      *int   `json:"rule,omitempty"`
	If        string `json:"if,omitempty"`
	Reason    string `json:"reason,omitempty"`
	// Variables are the job's effective variables (global, workflow, job, rule and
	// --var ones; not the predefined ones), masked and file variables as [masked].
	Variables []DryVariable `json:"variables"`
}

// DryVariable is a variable and the value shown for it.
type DryVariable struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// NewDryRun describes a run of the parsed pipeline p, evaluated as ev and planned as
// plan (names are the jobs named on the command line, if any).
func NewDryRun(p *Pipeline, ev *Evaluation, plan *Plan, predefined jobs.Variables, names []string) *DryRun {
	dr := &DryRun{Schema: DryRunSchema, File: p.File, Created: true, Name: ev.Name, Predefined: dryVars(predefined), Stages: []DryStage{}, Warnings: []string{}}
	for _, w := range ev.Pipeline.Warnings {
		dr.Warnings = append(dr.Warnings, w.Error())
	}
	if ev.WorkflowRule >= 0 {
		r := ev.WorkflowRule
		dr.WorkflowRule = &r
	}
	running := map[string]bool{}
	for _, j := range plan.Jobs {
		running[j.Name] = true
	}
	skipped := map[string]string{}
	for _, s := range plan.Skipped {
		skipped[s.Name] = s.Reason
	}
	for _, stage := range p.Stages {
		st := DryStage{Name: stage, Jobs: []DryJob{}}
		for _, orig := range p.Jobs {
			if orig.Stage != stage {
				continue
			}
			dec := ev.Decision(orig.Name)
			j := ev.Pipeline.Job(orig.Name)
			if j == nil {
				j = orig
			}
			dj := DryJob{Name: j.Name, ExpandedFrom: j.Origin, When: j.When, AllowFailure: j.AllowFailure, Needs: j.Needs, Variables: dryVars(j.Variables)}
			if dec != nil {
				dj.DecidedBy, dj.If, dj.Reason = dec.By, dec.If, dec.Reason
				if dec.Rule >= 0 {
					r := dec.Rule
					dj.Rule = &r
				}
			}
			switch reason, isSkipped := skipped[j.Name]; {
			case dec != nil && !dec.Added:
				dj.Status = "skipped"
			case running[j.Name]:
				dj.Status = "run"
			case isSkipped && j.When == WhenManual && !slices.Contains(names, j.Name):
				dj.Status, dj.Reason = "manual", joinReason(dj.Reason, reason)
			case isSkipped:
				dj.Status, dj.Reason = "skipped", joinReason(dj.Reason, reason)
			default:
				dj.Status = "not_selected"
			}
			st.Jobs = append(st.Jobs, dj)
		}
		if len(st.Jobs) > 0 {
			dr.Stages = append(dr.Stages, st)
		}
	}
	return dr
}

// NoPipeline describes a run that workflow:rules stopped.
func NoPipeline(p *Pipeline, err *NoPipelineError, predefined jobs.Variables) *DryRun {
	return &DryRun{Schema: DryRunSchema, File: p.File, Reason: err.Error(), Predefined: dryVars(predefined), Stages: []DryStage{}, Warnings: []string{}}
}

func joinReason(a, b string) string {
	if a == "" || a == "no rules" {
		return b
	}
	return a + "; " + b
}

func dryVars(vs jobs.Variables) []DryVariable {
	out := []DryVariable{}
	eff := vs.Effective()
	for _, v := range eff {
		val := v.Value
		if v.Masked || v.File {
			val = Masked
		}
		out = append(out, DryVariable{v.Key, val})
	}
	return out
}

// WriteText writes the dry run for people.
func (dr *DryRun) WriteText(w io.Writer) {
	if !dr.Created {
		fmt.Fprintf(w, "No pipeline: %s\n", dr.Reason)
		return
	}
	title := "Pipeline " + dr.File
	if dr.Name != "" {
		title += fmt.Sprintf(" %q", dr.Name)
	}
	if dr.WorkflowRule != nil {
		title += fmt.Sprintf(" (workflow:rules[%d] matched)", *dr.WorkflowRule)
	}
	fmt.Fprintln(w, title)
	var pre []string
	for _, v := range dr.Predefined {
		if v.Name != "CI_COMMIT_MESSAGE" {
			pre = append(pre, v.Name+"="+v.Value)
		}
	}
	fmt.Fprintf(w, "Predefined: %s\n", strings.Join(pre, " "))
	width := 0
	for _, s := range dr.Stages {
		for _, j := range s.Jobs {
			width = max(width, len(j.Name))
		}
	}
	for _, s := range dr.Stages {
		fmt.Fprintf(w, "\nstage %s\n", s.Name)
		for _, j := range s.Jobs {
			line := fmt.Sprintf("  %-*s  %-12s when: %s", width, j.Name, j.Status, j.When)
			if j.AllowFailure {
				line += ", allow_failure"
			}
			if j.ExpandedFrom != "" {
				line += ", parallel: " + j.ExpandedFrom
			}
			switch {
			case j.Needs == nil:
			case len(j.Needs) == 0:
				line += ", needs: []"
			default:
				line += ", needs: " + strings.Join(j.Needs, ", ")
			}
			fmt.Fprintln(w, line)
			if j.Reason != "" && j.Reason != "no rules" {
				fmt.Fprintf(w, "  %-*s  %s\n", width, "", j.Reason)
			}
			if j.Status != "skipped" && len(j.Variables) > 0 {
				var vs []string
				for _, v := range j.Variables {
					vs = append(vs, v.Name+"="+v.Value)
				}
				fmt.Fprintf(w, "  %-*s  variables: %s\n", width, "", strings.Join(vs, " "))
			}
		}
	}
}
