package taskscaler

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"
)

// InstanceStatus explains one instance: why it exists, what it is doing, its history.
type InstanceStatus struct {
	ID    string `json:"id"`
	State string `json:"state"`
	// Phase is the scaler's view: restoring, creating, booting, ready, removing,
	// unvouched, gone.
	Phase string `json:"phase"`
	// Cause says why the instance exists: created (by a scale-up of this scaler),
	// adopted (recorded before a restart), unknown (not ours; will be deleted).
	Cause          string    `json:"cause"`
	Restored       bool      `json:"restored,omitempty"`
	UseCount       int       `json:"use_count"`
	Slots          int       `json:"slots"`
	Reserved       int       `json:"reserved"`
	Acquired       int       `json:"acquired"`
	Healthy        bool      `json:"healthy"`
	HealthFailures int       `json:"health_failures,omitempty"`
	FirstSeen      time.Time `json:"first_seen"`
	ReadyAt        time.Time `json:"ready_at,omitzero"`
	IdleSince      time.Time `json:"idle_since,omitzero"`
	RemoveReason   string    `json:"remove_reason,omitempty"`
	History        []Event   `json:"history"`
}

// Status is a snapshot of the scaler, marshalled by the status endpoint.
type Status struct {
	Owner    string    `json:"owner"`
	Provider string    `json:"provider"`
	Time     time.Time `json:"time"`
	// Policy is the index of the active [[runners.autoscaler.policy]] (−1: none).
	Policy     int            `json:"policy"`
	IdleCount  int            `json:"idle_count"`
	IdleTime   string         `json:"idle_time"`
	Preemptive bool           `json:"preemptive"`
	Tasks      TaskCounts     `json:"tasks"`
	Instances  InstanceCounts `json:"instance_counts"`
	Required   int            `json:"required"`
	Desired    int            `json:"desired"`
	// CapacityPerInstance, MaxInstances and MaxJobs state the pool's size both in
	// instances and in jobs (MaxJobs 0: unlimited).
	CapacityPerInstance int `json:"capacity_per_instance"`
	MaxInstances        int `json:"max_instances"`
	MaxJobs             int `json:"max_jobs"`
	// LastDecision is the most recent scaling decision; LastShortfall the most recent
	// one that created fewer instances than wanted, with the reason.
	LastDecision    Decision         `json:"last_decision"`
	LastShortfall   *Decision        `json:"last_shortfall,omitempty"`
	Breaker         BreakerStatus    `json:"breaker"`
	LastUpdate      time.Time        `json:"last_update,omitzero"`
	LastUpdateError string           `json:"last_update_error,omitempty"`
	LastStoreError  string           `json:"last_store_error,omitempty"`
	InstanceList    []InstanceStatus `json:"instances"`
	// Gone lists recently removed instances with the reason.
	Gone []InstanceStatus `json:"gone,omitempty"`
}

func (s *Scaler) instanceStatusLocked(now time.Time, in *instance) InstanceStatus {
	st := InstanceStatus{ID: in.id, State: string(in.state), Phase: in.phase.String(), Cause: in.cause, Restored: in.restored,
		UseCount: in.used, Slots: len(in.slots), Reserved: in.reserved, Acquired: in.acquired, Healthy: !in.unhealthy,
		HealthFailures: in.failures, FirstSeen: in.firstSeen, ReadyAt: in.readyAt, RemoveReason: in.removeReason,
		History: in.orderedHistory()}
	if in.phase == phaseReady && in.busy() == 0 {
		st.IdleSince = in.idleSince
	}
	return st
}

// Status returns the scaler's current state and its last decisions.
func (s *Scaler) Status() Status {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.countLocked(now)
	st := Status{Owner: s.owner, Provider: s.info.ID, Time: now, Policy: c.policy.index, IdleCount: c.policy.IdleCount,
		IdleTime: c.policy.IdleTime.String(), Preemptive: c.policy.preemptive(), Tasks: c.tasks, Instances: c.inst,
		Required: c.required, Desired: c.desired, CapacityPerInstance: s.opts.CapacityPerInstance,
		MaxInstances: s.opts.MaxInstances, MaxJobs: s.opts.MaxInstances * s.opts.CapacityPerInstance,
		LastDecision: s.lastDecision, LastShortfall: s.lastNoCreate, Breaker: s.breaker.status(now),
		LastUpdate: s.lastUpdate, LastUpdateError: s.lastUpdErr, LastStoreError: s.lastStoreErr,
		Gone: slices.Clone(s.gone)}
	for _, in := range s.instances {
		st.InstanceList = append(st.InstanceList, s.instanceStatusLocked(now, in))
	}
	slices.SortFunc(st.InstanceList, func(a, b InstanceStatus) int { return strings.Compare(a.ID, b.ID) })
	return st
}

// Explain answers "why does instance X exist" (or why it went): its cause, state and
// history. ok is false for an ID the scaler never saw or forgot long ago.
func (s *Scaler) Explain(id string) (InstanceStatus, bool) {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if in, ok := s.instances[id]; ok {
		return s.instanceStatusLocked(now, in), true
	}
	for i := len(s.gone) - 1; i >= 0; i-- {
		if s.gone[i].ID == id {
			return s.gone[i], true
		}
	}
	return InstanceStatus{}, false
}

// ServeHTTP serves Status as JSON; with ?instance=ID it serves Explain(ID).
func (s *Scaler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if id := r.URL.Query().Get("instance"); id != "" {
		st, ok := s.Explain(id)
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_ = enc.Encode(map[string]string{"error": "instance " + id + " is not known to this scaler"})
			return
		}
		_ = enc.Encode(st)
		return
	}
	_ = enc.Encode(s.Status())
}

// Report is what the status endpoint serves for a whole host: one Status per scaler.
type Report struct {
	Scalers []Status `json:"scalers"`
}

// StatusHandler serves the Report of the scalers list returns (it is called per
// request, so scalers may come and go). With ?instance=ID it serves that instance's
// InstanceStatus from whichever scaler knows it, or 404.
func StatusHandler(list func() []*Scaler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		scalers := list()
		if id := r.URL.Query().Get("instance"); id != "" {
			for _, s := range scalers {
				if st, ok := s.Explain(id); ok {
					_ = enc.Encode(st)
					return
				}
			}
			w.WriteHeader(http.StatusNotFound)
			_ = enc.Encode(map[string]string{"error": "instance " + id + " is not known to any scaler"})
			return
		}
		rep := Report{Scalers: []Status{}}
		for _, s := range scalers {
			rep.Scalers = append(rep.Scalers, s.Status())
		}
		_ = enc.Encode(rep)
	})
}

// WriteReport prints a Report for people: per scaler the capacity in jobs and in
// instances, the slot counts, the breaker, the last decision and why the last
// shortfall happened, then one line per instance.
func WriteReport(w io.Writer, rep Report) error {
	var b strings.Builder
	for i, st := range rep.Scalers {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "scaler %s (provider %s) at %s\n", st.Owner, st.Provider, st.Time.UTC().Format(time.RFC3339))
		maxJobs := "unlimited"
		if st.MaxInstances > 0 {
			maxJobs = fmt.Sprint(st.MaxJobs)
		}
		fmt.Fprintf(&b, "  capacity: %d jobs per instance, max %s jobs; policy %d: idle_count %d jobs (= %d instances), idle_time %s, preemptive %v\n",
			st.CapacityPerInstance, maxJobs, st.Policy, st.IdleCount, ceilDiv(st.IdleCount, st.CapacityPerInstance), st.IdleTime, st.Preemptive)
		fmt.Fprintf(&b, "  jobs: %s,pending:%d,reserved:%d\n", st.Tasks, st.Tasks.Pending, st.Tasks.Reserved)
		in := st.Instances
		fmt.Fprintf(&b, "  instances: required %d, desired %d; requested %d, creating %d, booting %d, running %d, deleting %d, unvouched %d\n",
			st.Required, st.Desired, in.Requested, in.Creating, in.Booting, in.Running, in.Deleting, in.Unvouched)
		fmt.Fprintf(&b, "  circuit breaker: %s", st.Breaker.State)
		if st.Breaker.LastFailure != "" {
			fmt.Fprintf(&b, " (%d consecutive failures; last: %s)", st.Breaker.ConsecutiveFailures, st.Breaker.LastFailure)
		}
		b.WriteString("\n")
		if !st.LastDecision.Time.IsZero() {
			fmt.Fprintf(&b, "  last decision (%s, %s): %s\n", st.LastDecision.Trigger, st.LastDecision.Time.UTC().Format(time.RFC3339), st.LastDecision.Reason)
		}
		if d := st.LastShortfall; d != nil {
			fmt.Fprintf(&b, "  why fewer instances were created than wanted (%s): %s\n", d.Time.UTC().Format(time.RFC3339), d.Reason)
		}
		if st.LastUpdateError != "" {
			fmt.Fprintf(&b, "  last update error: %s\n", st.LastUpdateError)
		}
		for _, x := range st.InstanceList {
			fmt.Fprintf(&b, "  %-24s %-9s %-9s cause=%-8s used=%d jobs=%d/%d healthy=%v", x.ID, x.Phase, x.State, x.Cause, x.UseCount, x.Acquired, x.Slots, x.Healthy)
			if x.RemoveReason != "" {
				fmt.Fprintf(&b, " removing: %s", x.RemoveReason)
			}
			b.WriteString("\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteInstance prints one instance's explanation: why it exists and its history.
func WriteInstance(w io.Writer, x InstanceStatus) error {
	var b strings.Builder
	fmt.Fprintf(&b, "instance %s: %s (plugin state %s), cause %s", x.ID, x.Phase, x.State, x.Cause)
	if x.Restored {
		b.WriteString(", restored after a restart")
	}
	fmt.Fprintf(&b, "\n  used %d times, %d of %d slots acquired, %d reserved, healthy %v\n", x.UseCount, x.Acquired, x.Slots, x.Reserved, x.Healthy)
	if x.RemoveReason != "" {
		fmt.Fprintf(&b, "  removal: %s\n", x.RemoveReason)
	}
	for _, e := range x.History {
		fmt.Fprintf(&b, "  %s  %-20s %s\n", e.Time.UTC().Format(time.RFC3339), e.Kind, e.Reason)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func ceilDiv(a, b int) int {
	if b <= 0 {
		return 0
	}
	return (a + b - 1) / b
}
