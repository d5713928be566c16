package webui

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// The templates see view structs of display strings, made here from a Snapshot, so
// that what the page shows is decided (and tested) in Go and the templates stay plain.

type pageView struct {
	Updated  string
	Host     string
	Version  string
	Draining bool
	Runners  []runnerView
}

type runnerView struct {
	// ID prefixes the element ids of the runner's sections ("r0-pool", …).
	ID                         string
	Name, Token, URL, Executor string
	Policy                     policyView
	Breaker                    taskscaler.BreakerStatus
	BreakerOpenUntil           string
	BreakerLastFailureAt       string
	Warnings                   []string
	Capacity                   string
	Counts                     string
	PoolSize                   string // "1 instance", "3 instances"
	// Shared says, for a pool several runner managers share, who they are and which
	// one leads.
	Shared    string
	Instances []instanceView
	Gone      []instanceView
	Jobs      []jobView
	Decisions []decisionView
	Charts    []chartView
}

type policyView struct {
	Which      string // "policy 2 of 3" or why there is none
	Periods    string
	Mode       string
	IdleTarget string
	IdleWhy    string
	IdleTime   string
	Preemptive bool
	Forecast   []kv
}

type kv struct{ K, V string }

type instanceView struct {
	ID, Phase, PluginState, Cause string
	Age                           string
	InUse, Slots, Reserved        int
	Used                          string // "3 of 10 jobs" or "3 jobs (no max_use_count)"
	Healthy                       bool
	Health                        string
	Idle                          string
	Removing                      string
	When                          string // gone: when
	History                       []eventView
}

type eventView struct{ Time, Kind, Reason string }

type jobView struct {
	ID                    int64
	Name, State, Received string
	Wait, Run             string
	Instance, Reason      string
}

type decisionView struct {
	Time, Repeats, Trigger string
	Outcome                string
	Reason, Error          string
	Shortfall              bool
}

func view(s Snapshot, span time.Duration) pageView {
	p := pageView{Updated: timeOfDay(s.Time) + " " + s.Time.Format("MST"), Host: s.Host, Version: s.Version, Draining: s.Draining}
	for i, r := range s.Runners {
		p.Runners = append(p.Runners, runnerOf(fmt.Sprintf("r%d", i), r, s.Time, span))
	}
	return p
}

// sharedOf describes the managers of a shared pool and its leader.
func sharedOf(co *taskscaler.Coordination) string {
	leader := co.Leader
	switch {
	case leader == "":
		leader = "none elected"
	case leader == co.Self:
		leader += " (this manager)"
	}
	var held []string
	for _, m := range co.Managers {
		held = append(held, fmt.Sprintf("%s %d", m.ID, m.Jobs))
	}
	out := fmt.Sprintf("Shared through %s by %s; leader %s", co.Backend, plural(len(co.Managers), "manager"), leader)
	if len(held) > 0 {
		out += "; slots held: " + strings.Join(held, ", ")
	}
	return out
}

func coordinationWarnings(co *taskscaler.Coordination) []string {
	var out []string
	if !co.Connected {
		out = append(out, "this manager is not connected to "+co.Backend+": it takes no jobs until it is")
	}
	if co.Error != "" {
		out = append(out, co.Error)
	}
	return out
}

func runnerOf(id string, r Runner, now time.Time, span time.Duration) runnerView {
	st := r.Status
	v := runnerView{ID: id, Name: r.Name, Token: gitlab.ShortToken(r.Token), URL: safeURL(r.URL), Executor: r.Executor,
		Policy: policyOf(r, st), Breaker: st.Breaker}
	if v.Name == "" {
		v.Name = "(unnamed)"
	}
	if !st.Breaker.OpenUntil.IsZero() {
		v.BreakerOpenUntil = timeOfDay(st.Breaker.OpenUntil)
	}
	if !st.Breaker.LastFailureAt.IsZero() {
		v.BreakerLastFailureAt = timeOfDay(st.Breaker.LastFailureAt)
	}
	for _, w := range []string{st.StoreWarning, st.UpdateFailing, prefixed("last update error: ", st.LastUpdateError),
		prefixed("last state file error: ", st.LastStoreError)} {
		if w != "" {
			v.Warnings = append(v.Warnings, w)
		}
	}
	for _, p := range st.Pending {
		v.Warnings = append(v.Warnings, p.Summary)
	}
	if co := st.Coordination; co != nil {
		v.Shared, v.Warnings = sharedOf(co), append(v.Warnings, coordinationWarnings(co)...)
	}
	maxInst, maxJobs := "no max_instances", "unlimited"
	if st.MaxInstances > 0 {
		maxInst, maxJobs = fmt.Sprintf("max %d instances", st.MaxInstances), strconv.Itoa(st.MaxJobs)
	}
	v.Capacity = fmt.Sprintf("%s per instance, %s (%s jobs)", plural(st.CapacityPerInstance, "job"), maxInst, maxJobs)
	t, in := st.Tasks, st.Instances
	v.Counts = fmt.Sprintf("%d running, %d waiting, %d reserved, %d idle slots; instances: %d required, %d desired",
		t.Acquired, t.Pending, t.Reserved, t.Idle, st.Required, st.Desired)
	if in.Requested > 0 {
		v.Counts += fmt.Sprintf(", %d requested", in.Requested)
	}
	for _, x := range st.InstanceList {
		v.Instances = append(v.Instances, instanceOf(x, r.MaxUseCount, now))
	}
	v.PoolSize = plural(len(v.Instances), "instance")
	for i := len(st.Gone) - 1; i >= 0; i-- {
		g := instanceOf(st.Gone[i], r.MaxUseCount, now)
		if h := st.Gone[i].History; len(h) > 0 {
			g.When = timeOfDay(h[len(h)-1].Time)
		}
		v.Gone = append(v.Gone, g)
	}
	for _, j := range r.Jobs {
		jv := jobView{ID: j.ID, Name: j.Name, State: j.State, Received: timeOfDay(j.Received), Wait: shortDuration(j.Wait(now)),
			Run: "–", Instance: j.Instance, Reason: j.FailureReason}
		if !j.Slot.IsZero() {
			jv.Run = shortDuration(j.RunTime(now))
		}
		v.Jobs = append(v.Jobs, jv)
	}
	for i := len(r.Decisions) - 1; i >= 0; i-- {
		d := r.Decisions[i]
		dv := decisionView{Time: timeOfDay(d.Time), Trigger: d.Trigger, Reason: d.Reason, Error: d.Error, Shortfall: d.Shortfall}
		switch {
		case d.Wanted == 0:
			dv.Outcome = "no new instance"
		case d.Requested == d.Wanted:
			dv.Outcome = "requested " + plural(d.Requested, "instance")
		default:
			dv.Outcome = fmt.Sprintf("requested %d of %d wanted", d.Requested, d.Wanted)
		}
		if d.Requested > 0 {
			dv.Outcome += fmt.Sprintf(", %d accepted", d.Accepted)
		}
		if d.Count > 1 {
			dv.Repeats = fmt.Sprintf("×%d until %s", d.Count, timeOfDay(d.Last))
		}
		v.Decisions = append(v.Decisions, dv)
	}
	v.Charts = charts(id, r.History, now, span)
	return v
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

func policyOf(r Runner, st taskscaler.Status) policyView {
	p := policyView{Mode: st.Mode, IdleWhy: st.IdleWhy, IdleTime: st.IdleTime, Preemptive: st.Preemptive}
	if p.Mode == "" {
		p.Mode = "fixed"
	}
	p.IdleTarget = fmt.Sprintf("%d idle slots", st.IdleTarget)
	if c := st.CapacityPerInstance; c > 0 {
		p.IdleTarget += fmt.Sprintf(" (%d instances)", (st.IdleTarget+c-1)/c)
	}
	switch {
	case st.Policy < 0 || st.Policy >= len(r.Policies):
		p.Which = "no policy's periods contain this minute: no idle capacity kept"
		if len(r.Policies) == 0 {
			p.Which = "no [[runners.autoscaler.policy]]: no idle capacity kept"
		}
	default:
		pol := r.Policies[st.Policy]
		p.Which = fmt.Sprintf("policy %d of %d", st.Policy+1, len(r.Policies))
		periods := pol.Periods
		if len(periods) == 0 {
			periods = []string{"* * * * *"}
		}
		p.Periods = strings.Join(periods, ", ")
		if pol.Timezone != "" {
			p.Periods += " (" + pol.Timezone + ")"
		} else {
			p.Periods += " (the host's time zone)"
		}
	}
	if f := st.Forecast; f != nil {
		p.Forecast = []kv{
			{"window", fmt.Sprintf("%s (boot %s from %s, less target_wait)", shortDuration(f.Window), shortDuration(f.Boot), f.BootFrom)},
			{"arrivals", fmt.Sprintf("%.2f jobs/min (%s)", f.Rate*60, f.RateFrom)},
			{"expected in the window", fmt.Sprintf("%.1f jobs, %.1f slots freed", f.Expected, f.Freed)},
			{"idle slots wanted", strconv.Itoa(f.Slots)},
			{"job value", fmt.Sprintf("%.0f instance-seconds", f.JobValue)},
			{"recent jobs", fmt.Sprintf("%d, %d later than the target", f.Jobs, f.Late)},
		}
		if f.Unreachable {
			p.Forecast = append(p.Forecast, kv{"target", "unreachable: more recent jobs are late than it allows, at the highest job value"})
		}
	}
	return p
}

func instanceOf(x taskscaler.InstanceStatus, maxUse int, now time.Time) instanceView {
	v := instanceView{ID: x.ID, Phase: x.Phase, PluginState: string(x.State), Cause: x.Cause, InUse: x.InFlight, Slots: x.Slots,
		Reserved: x.Reserved, Healthy: x.Healthy, Removing: x.RemoveReason}
	if !x.CreatedAt.IsZero() {
		v.Age = shortDuration(now.Sub(x.CreatedAt))
	}
	if maxUse > 0 {
		v.Used = fmt.Sprintf("%d of %d", x.UseCount, maxUse)
	} else {
		v.Used = fmt.Sprintf("%d (no max_use_count)", x.UseCount)
	}
	switch {
	case x.HealthError != "":
		check := "health"
		if x.Phase == "booting" {
			check = "readiness"
		}
		v.Health = fmt.Sprintf("%d %s check failures: %s", x.HealthFailures, check, x.HealthError)
		if !x.NextHealthCheck.IsZero() {
			v.Health += "; next check " + timeOfDay(x.NextHealthCheck)
		}
	case x.Healthy:
		v.Health = "healthy"
	default:
		v.Health = "unhealthy"
	}
	if !x.IdleSince.IsZero() {
		v.Idle = "idle for " + shortDuration(now.Sub(x.IdleSince))
	}
	for _, e := range x.History {
		v.History = append(v.History, eventView{Time: timeOfDay(e.Time), Kind: e.Kind, Reason: e.Reason})
	}
	return v
}

func charts(id string, hist []Sample, now time.Time, span time.Duration) []chartView {
	count := func(f func(Sample) int) func(Sample) (float64, bool) {
		return func(s Sample) (float64, bool) { return float64(f(s)), true }
	}
	wait := func(f func(Sample) time.Duration) func(Sample) (float64, bool) {
		return func(s Sample) (float64, bool) { return f(s).Seconds(), s.Waits > 0 }
	}
	return []chartView{
		buildChart(id+"-chart-instances", "Instances by state", hist, now, span, true, "", []seriesDef{
			{"running", "s-ready", count(func(s Sample) int { return s.Instances.Running })},
			{"booting", "s-booting", count(func(s Sample) int { return s.Instances.Booting })},
			{"requested or creating", "s-creating", count(func(s Sample) int { return s.Instances.Requested + s.Instances.Creating })},
			{"deleting", "s-deleting", count(func(s Sample) int { return s.Instances.Deleting + s.Instances.Unvouched })},
		}),
		buildChart(id+"-chart-demand", "Demand (jobs and slots)", hist, now, span, false, "", []seriesDef{
			{"jobs running", "s-ready", count(func(s Sample) int { return s.Tasks.Acquired })},
			{"jobs waiting for a slot", "s-deleting", count(func(s Sample) int { return s.Tasks.Pending })},
			{"idle slots", "s-idle", count(func(s Sample) int { return s.Tasks.Idle })},
		}),
		buildChart(id+"-chart-wait", "Job wait for a slot", hist, now, span, false, "s", []seriesDef{
			{"p50", "s-ready", wait(func(s Sample) time.Duration { return s.WaitP50 })},
			{"p95", "s-creating", wait(func(s Sample) time.Duration { return s.WaitP95 })},
		}),
	}
}

// safeURL is GitLab's address without user info, query or fragment.
func safeURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return ""
	}
	u.User, u.RawQuery, u.Fragment, u.ForceQuery = nil, "", "", false
	return u.String()
}

// timeOfDay prints a time of day as the page shows it.
func timeOfDay(t time.Time) string { return t.Format("15:04:05") }

// shortDuration prints d as a person reads it: 0.4s, 12s, 3m05s, 2h04m, 3d4h.
func shortDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < 10*time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}
