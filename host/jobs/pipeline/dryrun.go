package pipeline

import (
	"context"
	"errors"
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
	// ParentNeeds are its needs:pipeline:job entries: jobs of the parent pipeline
	// whose artifacts it gets (it does not wait for them).
	ParentNeeds []DryParentNeed `json:"parent_needs,omitempty"`
	// DecidedBy is "rules", "only", "except" or "" (the job has none of them); Rule
	// is the index of the rule that matched and If its if in canonical form.
	DecidedBy string `json:"decided_by,omitempty"`
	Rule      *int   `json:"rule,omitempty"`
	If        string `json:"if,omitempty"`
	Reason    string `json:"reason,omitempty"`
	// Variables are the job's effective variables (global, workflow, job, rule and
	// --var ones; not the predefined ones), masked and file variables as [masked].
	Variables []DryVariable `json:"variables"`
	// Artifacts are what the job collects (see DryArtifact); Dependencies its
	// dependencies: when written (empty: none).
	Artifacts    []DryArtifact `json:"artifacts,omitempty"`
	Dependencies *[]string     `json:"dependencies,omitempty"`
	// Environment is the job's environment:, its name and URL expanded.
	Environment *DryEnvironment `json:"environment,omitempty"`
	// Release is the tag of the job's release: (none is created locally); Pages the
	// directory a pages job publishes (kept as an artifact, not deployed).
	Release string `json:"release,omitempty"`
	Pages   string `json:"pages,omitempty"`
	// Trigger is the job's trigger:; Child the child pipeline it would run, or
	// ChildError why it cannot be made.
	Trigger    *DryTrigger `json:"trigger,omitempty"`
	Child      *DryRun     `json:"child,omitempty"`
	ChildError string      `json:"child_error,omitempty"`
}

// DryParentNeed is a needs:pipeline:job entry, the pipeline as written.
type DryParentNeed struct {
	Pipeline  string `json:"pipeline"`
	Job       string `json:"job"`
	Artifacts bool   `json:"artifacts"`
}

// DryEnvironment is a job's environment as its CI_ENVIRONMENT_* variables say.
type DryEnvironment struct {
	Name   string `json:"name"`
	URL    string `json:"url,omitempty"`
	Action string `json:"action"`
	Tier   string `json:"tier"`
}

// DryTrigger is a trigger job's trigger:.
type DryTrigger struct {
	// Include are the child pipeline's files; Project the downstream project of a
	// multi-project trigger, which runner exec does not run.
	Include []string `json:"include,omitempty"`
	Project string   `json:"project,omitempty"`
	// Strategy is "depend" or "".
	Strategy        string `json:"strategy,omitempty"`
	ForwardYAML     bool   `json:"forward_yaml_variables"`
	ForwardPipeline bool   `json:"forward_pipeline_variables"`
}

// DryArtifact is one artifacts entry of a job: the archive or a report.
type DryArtifact struct {
	// Type is "archive" or the report type.
	Type      string   `json:"type"`
	Paths     []string `json:"paths,omitempty"`
	Exclude   []string `json:"exclude,omitempty"`
	Untracked bool     `json:"untracked,omitempty"`
	When      string   `json:"when"`
	ExpireIn  string   `json:"expire_in,omitempty"`
}

func dryArtifacts(j *Job) ([]DryArtifact, *[]string) {
	var out []DryArtifact
	for _, a := range j.Artifacts {
		t := a.Type
		if t == "" {
			t = jobs.ArtifactArchive
		}
		out = append(out, DryArtifact{Type: t, Paths: a.Paths, Exclude: a.Exclude, Untracked: a.Untracked, When: a.When, ExpireIn: a.ExpireIn})
	}
	if j.ArtifactsFrom == nil {
		return out, nil
	}
	deps := append([]string{}, j.ArtifactsFrom...)
	return out, &deps
}

// artifactsText is the artifacts line of the text form.
func (dj DryJob) artifactsText() string {
	var parts []string
	for _, a := range dj.Artifacts {
		p := a.Type + " " + strings.Join(a.Paths, " ")
		if a.Untracked {
			p += " +untracked"
		}
		if len(a.Exclude) > 0 {
			p += " exclude " + strings.Join(a.Exclude, " ")
		}
		if a.Type == jobs.ArtifactArchive {
			p += " (when " + a.When
			if a.ExpireIn != "" {
				p += ", expire_in " + a.ExpireIn
			}
			p += ")"
		}
		parts = append(parts, p)
	}
	text := strings.Join(parts, "; ")
	if dj.Dependencies != nil {
		if text != "" {
			text += "; "
		}
		text += "dependencies: [" + strings.Join(*dj.Dependencies, ", ") + "]"
	}
	return text
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
			dj := DryJob{Name: j.Name, ExpandedFrom: j.Origin, When: j.When, AllowFailure: j.AllowFailure, Needs: j.Needs, Variables: dryVars(j.Variables), Pages: j.Pages}
			dj.Artifacts, dj.Dependencies = dryArtifacts(j)
			for _, n := range j.ParentNeeds {
				dj.ParentNeeds = append(dj.ParentNeeds, DryParentNeed{Pipeline: n.Pipeline, Job: n.Job, Artifacts: n.Artifacts})
			}
			if j.Release != nil {
				dj.Release = j.Release.TagName
			}
			if e := j.Environment; e != nil {
				vs := j.Variables
				name, _ := vs.Get("CI_ENVIRONMENT_NAME")
				url, _ := vs.Get("CI_ENVIRONMENT_URL")
				tier, _ := vs.Get("CI_ENVIRONMENT_TIER")
				if dec == nil || !dec.Added {
					name, url, tier = e.Name, e.URL, e.Tier
				}
				dj.Environment = &DryEnvironment{Name: name, URL: url, Action: e.Action, Tier: tier}
			}
			if t := j.Trigger; t != nil {
				dt := &DryTrigger{Project: t.Project, ForwardYAML: t.ForwardYAML, ForwardPipeline: t.ForwardPipeline}
				for _, ti := range t.Include {
					dt.Include = append(dt.Include, ti.String())
				}
				if t.Depend {
					dt.Strategy = "depend"
				}
				dj.Trigger = dt
			}
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

// AddChildren adds to the dry run the child pipeline of each trigger job that is in
// the pipeline (evaluated as ev), made with o as NewChild makes it, and theirs in
// turn; a child that cannot be made shows why.
func (dr *DryRun) AddChildren(ctx context.Context, ev *Evaluation, o ChildOptions) {
	o.Parent = ev.Pipeline
	for si := range dr.Stages {
		for ji := range dr.Stages[si].Jobs {
			dj := &dr.Stages[si].Jobs[ji]
			j := ev.Pipeline.Job(dj.Name)
			if j == nil || j.Trigger == nil || j.Trigger.Project != "" || dj.Status == "skipped" {
				continue
			}
			ch, err := NewChild(ctx, j, o)
			var none *NoPipelineError
			switch {
			case errors.As(err, &none):
				dj.Child = NoPipeline(ch.Pipeline, none, ch.Env.Predefined)
				dj.ChildError = err.Error()
			case ch != nil && ch.Plan != nil:
				dj.Child = NewDryRun(ch.Pipeline, ch.Evaluation, ch.Plan, ch.Env.Predefined, nil)
				dj.Child.AddChildren(ctx, ch.Evaluation, ch.Options)
				if err != nil {
					dj.ChildError = err.Error()
				}
			case err != nil:
				dj.ChildError = err.Error()
			}
		}
	}
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
			if e := j.Environment; e != nil {
				line += fmt.Sprintf(", environment: %s (%s, %s)", e.Name, e.Action, e.Tier)
			}
			if j.Release != "" {
				line += ", release: " + j.Release + " (not created)"
			}
			if j.Pages != "" {
				line += ", pages: " + j.Pages + " (not deployed)"
			}
			if t := j.Trigger; t != nil {
				if t.Project != "" {
					line += ", trigger: project " + t.Project
				} else {
					line += ", trigger: " + strings.Join(t.Include, ", ")
				}
				if t.Strategy != "" {
					line += ", strategy: " + t.Strategy
				}
			}
			needs := slices.Clone(j.Needs)
			for _, n := range j.ParentNeeds {
				needs = append(needs, n.Job+" (parent pipeline)")
			}
			switch {
			case j.Needs == nil:
			case len(needs) == 0:
				line += ", needs: []"
			default:
				line += ", needs: " + strings.Join(needs, ", ")
			}
			fmt.Fprintln(w, line)
			if j.Reason != "" && j.Reason != "no rules" {
				fmt.Fprintf(w, "  %-*s  %s\n", width, "", j.Reason)
			}
			if a := j.artifactsText(); a != "" {
				fmt.Fprintf(w, "  %-*s  artifacts: %s\n", width, "", a)
			}
			if j.Status != "skipped" && len(j.Variables) > 0 {
				var vs []string
				for _, v := range j.Variables {
					vs = append(vs, v.Name+"="+v.Value)
				}
				fmt.Fprintf(w, "  %-*s  variables: %s\n", width, "", strings.Join(vs, " "))
			}
			if j.ChildError != "" {
				fmt.Fprintf(w, "  %-*s  child pipeline: %s\n", width, "", j.ChildError)
			}
			if j.Child != nil {
				var b strings.Builder
				j.Child.WriteText(&b)
				fmt.Fprintf(w, "  %-*s  child pipeline of %s:\n", width, "", j.Name)
				for _, l := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
					if l != "" {
						l = "      " + l
					}
					fmt.Fprintln(w, l)
				}
			}
		}
	}
}
