package webui

import (
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// t0 is the fixture's "now".
var t0 = time.Date(2026, 3, 9, 14, 30, 0, 0, time.UTC)

const fixtureToken = "glrt-FixtureSecretToken0123456789"

// fixture is a host with one busy autoscaled runner entry: three instances (one ready
// and full, one booting with a failed readiness check, one being removed), a forecast
// policy, an open circuit breaker, decisions, jobs in every state and six hours of
// samples.
func fixture() Snapshot {
	ago := func(d time.Duration) time.Time { return t0.Add(-d) }
	st := taskscaler.Status{
		Owner: "e2e", Provider: "local", Time: t0, Policy: 1, IdleCount: 2, IdleTime: "5m0s", Mode: "forecast",
		IdleTarget: 3, IdleWhy: "forecast: 2.4 jobs expected within 1m30s, 0.6 slots freed",
		Forecast: &taskscaler.Forecast{Window: 90 * time.Second, Boot: 2 * time.Minute, BootFrom: "measured p90 of 14 boots", Rate: 0.05,
			RateFrom: "last 30m", Expected: 2.4, Freed: 0.6, Slots: 3, JobValue: 120, Jobs: 40, Late: 3},
		Tasks:     taskscaler.TaskCounts{Idle: 0, Pending: 1, Acquired: 2, Reserved: 1},
		Instances: taskscaler.InstanceCounts{Booting: 1, Running: 1, Deleting: 1},
		Required:  2, Desired: 2, CapacityPerInstance: 2, MaxInstances: 4, MaxJobs: 8,
		LastDecision: taskscaler.Decision{Time: ago(5 * time.Second), Trigger: "update", Reason: "enough capacity: 2 instances for 2 required"},
		Breaker: taskscaler.BreakerStatus{State: "open", ConsecutiveFailures: 3, OpenUntil: t0.Add(40 * time.Second),
			LastFailure: "Increase: quota exceeded for instances", LastFailureAt: ago(20 * time.Second)},
		UpdateFailing: "3 updates failed in a row since 14:29:00: list instances: timeout",
		InstanceList: []taskscaler.InstanceStatus{
			{Instance: state.Instance{ID: "inst-ready-1", Cause: "created", State: "running", UseCount: 3, InFlight: 2, CreatedAt: ago(42 * time.Minute)},
				Phase: "ready", Slots: 2, Healthy: true,
				History: []taskscaler.Event{{Time: ago(42 * time.Minute), Kind: "created", Reason: "requesting 1 instances: 1 required, 0 present"}}},
			{Instance: state.Instance{ID: "inst-booting-2", Cause: "created", State: "running", CreatedAt: ago(90 * time.Second)},
				Phase: "booting", Slots: 2, Reserved: 1, Healthy: true, HealthFailures: 2, HealthError: "ssh: handshake failed: connection refused",
				NextHealthCheck: t0.Add(5 * time.Second)},
			{Instance: state.Instance{ID: "inst-old-3", Cause: "adopted", State: "deleting", UseCount: 10, Removing: true,
				RemoveReason: "max_use_count 10 reached", CreatedAt: ago(3 * time.Hour)}, Phase: "removing", Slots: 2, Healthy: true},
		},
		Gone: []taskscaler.InstanceStatus{
			{Instance: state.Instance{ID: "inst-gone-0", Cause: "created", UseCount: 1, RemoveReason: "idle for 5m0s beyond the idle target"},
				Phase: "gone", History: []taskscaler.Event{{Time: ago(10 * time.Minute), Kind: "gone", Reason: "deleted"}}},
		},
	}
	var hist []Sample
	for i := 0; i <= 6*60*4; i++ { // 6h every 15s
		at := t0.Add(-6 * time.Hour).Add(time.Duration(i) * 15 * time.Second)
		n := (i / 40) % 4
		hist = append(hist, Sample{Time: at, Instances: taskscaler.InstanceCounts{Running: n, Booting: i / 60 % 2},
			Tasks: taskscaler.TaskCounts{Acquired: n * 2, Pending: i / 50 % 3, Idle: 1}, WaitP50: time.Duration(i%7) * time.Second,
			WaitP95: time.Duration(i%13) * time.Second, Waits: i % 5})
	}
	return Snapshot{Time: t0, Host: "s_0123456789ab", Version: "v1.2.3", Runners: []Runner{{
		Name: "e2e", Token: fixtureToken, URL: "https://gitlab.example.com/", Executor: "instance", MaxUseCount: 10,
		Policies: []taskscaler.Policy{{Periods: []string{"* * * * *"}}, {Periods: []string{"* 8-17 * * mon-fri"}, Timezone: "Europe/Berlin", Mode: "forecast"}},
		Status:   st,
		Jobs: []Job{
			{ID: 1004, Name: "queued", State: JobWaiting, Received: ago(6 * time.Second)},
			{ID: 1003, Name: "build", State: JobRunning, Instance: "inst-ready-1", Received: ago(70 * time.Second), Slot: ago(66 * time.Second)},
			{ID: 1002, Name: "test", State: JobFailed, FailureReason: "script_failure", Instance: "inst-ready-1",
				Received: ago(10 * time.Minute), Slot: ago(9*time.Minute + 58*time.Second), Finished: ago(5 * time.Minute)},
			{ID: 1001, Name: "lint", State: JobPassed, Instance: "inst-ready-1", Received: ago(20 * time.Minute), Slot: ago(20 * time.Minute), Finished: ago(19 * time.Minute)},
		},
		Decisions: []Decision{
			{Decision: taskscaler.Decision{Time: ago(45 * time.Minute), Trigger: "reserve", Wanted: 2, Requested: 1, Accepted: 1,
				Reason: "requesting 1 of 2 wanted: max_instances 4 reached"}, Last: ago(45 * time.Minute), Count: 1, Shortfall: true},
			{Decision: taskscaler.Decision{Time: ago(44 * time.Minute), Trigger: "update", Reason: "enough capacity: 2 instances for 2 required"},
				Last: ago(5 * time.Second), Count: 3},
		},
		History: hist,
	}}}
}
