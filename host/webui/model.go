// Package webui is the operator's page of `runner run`: a read-only, server-rendered
// HTML page per host that shows, for every [[runners]] entry, its pool of instances, the
// policy in force and why, the circuit breaker, the last scaling decisions, the recent
// jobs and charts of the last hours. It needs no JavaScript and loads nothing from
// elsewhere (inline CSS, SVG and a few lines of script, for air-gapped networks); with
// JavaScript it updates in place from Server-Sent Events at /events.
//
// The page shows what a taskscaler.Status says plus what a Recorder keeps of the past
// (jobs, decisions, samples); Handler serves it and decides who may see it.
package webui

import (
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// Snapshot is everything the page shows at one moment.
type Snapshot struct {
	// Time is when the snapshot was taken: ages and run times are relative to it.
	Time time.Time
	// Host names this runner host (its system ID); Version is the runner's version.
	Host, Version string
	// Draining is set while the runner finishes its jobs and takes no new ones.
	Draining bool
	// Runners are the [[runners]] entries being served, in config order.
	Runners []Runner
}

// Runner is one [[runners]] entry on the page.
type Runner struct {
	Name string
	// Token is the runner authentication token. The page shows only its short form
	// (gitlab.ShortToken), as the metrics and logs do.
	Token string
	// URL is GitLab's address; the page drops any user info and query from it.
	URL      string
	Executor string
	// MaxUseCount is max_use_count: jobs an instance runs before it is replaced (0: no
	// limit).
	MaxUseCount int
	// Policies are the entry's [[runners.autoscaler.policy]] tables, so that the page can
	// show the periods of the one in force (Status.Policy is its index).
	Policies []taskscaler.Policy
	// Status is the pool's taskscaler status.
	Status taskscaler.Status
	// Jobs, Decisions and History are what the entry's Recorder kept (see Recorder.Past).
	Jobs      []Job
	Decisions []Decision
	History   []Sample
}

// Job states on the page.
const (
	JobWaiting = "waiting" // received from GitLab, no slot yet
	JobRunning = "running"
	JobPassed  = "passed"
	JobFailed  = "failed"
)

// Job is one job of a runner entry, from the moment GitLab handed it over.
type Job struct {
	ID   int64
	Name string
	// State is JobWaiting, JobRunning, JobPassed or JobFailed; FailureReason is GitLab's
	// failure_reason of a failed job.
	State         string
	FailureReason string
	// Instance is the instance whose slot the job got ("" before that).
	Instance string
	// Received is when the job request returned the job, Slot when the job got its slot
	// (zero if it has none), Finished when its final state was known.
	Received, Slot, Finished time.Time
}

// Wait is how long the job waited from its request to its slot, up to now if it is
// still waiting, or to its end if it never got one.
func (j Job) Wait(now time.Time) time.Duration {
	switch {
	case !j.Slot.IsZero():
		return j.Slot.Sub(j.Received)
	case !j.Finished.IsZero():
		return j.Finished.Sub(j.Received)
	}
	return now.Sub(j.Received)
}

// RunTime is how long the job has run on its slot (0 if it never got one).
func (j Job) RunTime(now time.Time) time.Duration {
	switch {
	case j.Slot.IsZero():
		return 0
	case !j.Finished.IsZero():
		return j.Finished.Sub(j.Slot)
	}
	return now.Sub(j.Slot)
}

// Decision is a scaling decision as the Recorder keeps it: the taskscaler makes one on
// every update, so a run of decisions with the same outcome is kept once, with the
// time of the last and how many there were.
type Decision struct {
	taskscaler.Decision
	// Last is when the same outcome was seen last; Count how many decisions had it.
	Last  time.Time
	Count int
	// Shortfall is set when the decision requested fewer instances than it wanted.
	Shortfall bool
}

// Sample is the state of a pool at one time, for the charts.
type Sample struct {
	Time      time.Time
	Instances taskscaler.InstanceCounts
	Tasks     taskscaler.TaskCounts
	// WaitP50 and WaitP95 are percentiles of the job waits of the Recorder's wait window
	// (jobs still waiting count with their wait so far); Waits is how many there were
	// (0: no job, the percentiles mean nothing).
	WaitP50, WaitP95 time.Duration
	Waits            int
}
