package simulate

import (
	"fmt"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// preemptive reports whether policy p runs in preemptive mode: as set, else GitLab's
// default (idle_count > 0) for a fixed policy and off for a forecast one, as the
// taskscaler decides.
func preemptive(p taskscaler.Policy) bool {
	if p.PreemptiveMode != nil {
		return *p.PreemptiveMode
	}
	return p.IdleCount > 0 && p.Mode != taskscaler.ModeForecast
}

// PeakHourlyJobs is the most jobs that arrive within any one hour of the trace.
// jobs must be sorted by arrival.
func PeakHourlyJobs(jobs []Job) int { return PeakJobsWithin(jobs, time.Hour) }

// PeakJobsWithin is the most jobs that arrive within any window of length d (a
// sliding window, half-open). jobs must be sorted by arrival.
func PeakJobsWithin(jobs []Job, d time.Duration) int {
	peak, from := 0, 0
	for to, j := range jobs {
		for jobs[from].Arrival <= j.Arrival-d {
			from++
		}
		peak = max(peak, to-from+1)
	}
	return peak
}

// jobsN is "1 job" or "n jobs".
func jobsN(n int) string {
	if n == 1 {
		return "1 job"
	}
	return fmt.Sprintf("%d jobs", n)
}

// capPerHour is the most jobs per hour that preemptive mode lets start on new
// capacity with idle idle slots: the runner asks GitLab for a job only while an idle
// slot is ready, and a used slot is replaced one boot later.
func capPerHour(idle int, boot time.Duration) float64 {
	return float64(idle) * float64(time.Hour) / float64(boot)
}

// CapWarnings warns, before a run, about each fixed policy in preemptive mode whose
// throughput cap (idle_count jobs per median boot on new capacity) is far below the
// trace's busiest hour. With max_use_count = 1 every job needs new capacity, so a cap
// below the busiest hour warns; with reuse, freed slots take jobs too, so the cap
// warns below half of it. An idle_count of 0 in preemptive mode starts no job at all.
// A policy's periods are not considered: a warning says what happens while the policy
// is active.
func CapWarnings(jobs []Job, p Params) []string {
	boot := p.Boot.Quantile(0.5)
	if boot <= 0 || len(jobs) == 0 {
		return nil
	}
	peak := PeakHourlyJobs(jobs)
	var out []string
	for i, pol := range p.Scaler.Policies {
		if !preemptive(pol) || pol.Mode == taskscaler.ModeForecast {
			continue
		}
		if pol.IdleCount == 0 {
			out = append(out, fmt.Sprintf("warning: policy[%d]: preemptive_mode = true with idle_count = 0: the runner asks GitLab for a job only while an idle slot is ready, and this policy keeps none, so no job starts while it is active (set preemptive_mode = false or idle_count > 0)", i))
			continue
		}
		c := capPerHour(pol.IdleCount, boot)
		switch {
		case p.Scaler.MaxUseCount == 1 && c < float64(peak):
			out = append(out, fmt.Sprintf("warning: policy[%d]: preemptive mode with idle_count = %d and max_use_count = 1 starts at most %s per %s boot (%.0f jobs/h), below the trace's busiest hour of %d jobs: the rest pile up in GitLab's queue (set preemptive_mode = false, raise idle_count, or use mode = \"forecast\")",
				i, pol.IdleCount, jobsN(pol.IdleCount), boot, c, peak))
		case p.Scaler.MaxUseCount != 1 && 2*c < float64(peak):
			out = append(out, fmt.Sprintf("warning: policy[%d]: preemptive mode with idle_count = %d starts at most %s on new capacity per %s boot (%.0f jobs/h), far below the trace's busiest hour of %d jobs: jobs beyond the free slots wait in GitLab's queue (set preemptive_mode = false, raise idle_count, or use mode = \"forecast\")",
				i, pol.IdleCount, jobsN(pol.IdleCount), boot, c, peak))
		}
	}
	return out
}

// queueWarnings explains a material GitLab queue time after a run: one where the 95th
// percentile of the time jobs waited without a reservation is at least a median boot
// (or a second with an instant boot), that is longer than a runner that asked for
// every job would have made them wait for a new instance.
func queueWarnings(r *Result, jobs []Job, p Params) []string {
	boot := p.Boot.Quantile(0.5)
	if r.QueueWaitP95S < max(boot.Seconds(), 1) {
		return nil
	}
	sec := func(s float64) string {
		return time.Duration(s * float64(time.Second)).Round(100 * time.Millisecond).String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "warning: %d of %d jobs waited in GitLab's queue before the runner asked for them (p50 %s, p95 %s, max %s).",
		r.QueuedJobs, r.Jobs, sec(r.QueueWaitP50S), sec(r.QueueWaitP95S), sec(r.QueueWaitMaxS))
	var capped []string
	for i, pol := range p.Scaler.Policies {
		if !preemptive(pol) {
			continue
		}
		s := fmt.Sprintf("policy[%d] idle_count = %d", i, pol.IdleCount)
		switch {
		case pol.Mode == taskscaler.ModeForecast:
			s = fmt.Sprintf("policy[%d]: a forecast policy with preemptive_mode = true, its forecast idle slots", i)
		case boot > 0:
			s += fmt.Sprintf(": %d per %s boot, %.0f jobs/h", pol.IdleCount, boot, capPerHour(pol.IdleCount, boot))
		}
		capped = append(capped, s)
	}
	if len(capped) > 0 {
		burst := ""
		if boot > 0 {
			burst = fmt.Sprintf(" and up to %d within one boot", PeakJobsWithin(jobs, boot))
		}
		fmt.Fprintf(&b, " Preemptive mode caps throughput: the runner asks GitLab for a job only while an idle slot is ready, so at most idle_count jobs start on new capacity per boot time (%s), while the trace brings %d jobs in its busiest hour%s. Set preemptive_mode = false, raise idle_count, or use mode = \"forecast\".",
			strings.Join(capped, "; "), r.PeakHourlyJobs, burst)
	}
	full := p.Scaler.MaxInstances > 0 && r.MaxInstancesSeen >= p.Scaler.MaxInstances
	if full {
		fmt.Fprintf(&b, " All max_instances = %d instances were in use at the peak: raise max_instances.", p.Scaler.MaxInstances)
	}
	if len(capped) == 0 && !full {
		b.WriteString(" The scaler refused their reservations: see reservation_throttling.")
	}
	return []string{b.String()}
}
