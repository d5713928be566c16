package taskscaler

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
)

// InstanceStatus explains one instance: why it exists, what it is doing, its history.
// Its facts are the instance's record, whose Cause says why it exists: created (by a
// scale-up of this scaler), adopted (recorded before a restart), unknown (not ours;
// will be deleted); InFlight counts the acquired slots. The rest is the scaler's view.
//
// Its JSON is the /status form, which is older than the shared record: CreatedAt is
// "first_seen" there and InFlight "acquired", and the record's owner, removing and
// updated_at keys are left out (see MarshalJSON).
type InstanceStatus struct {
	state.Instance
	// Phase is the scaler's view: restoring, creating, booting, ready, removing,
	// unvouched, gone.
	Phase          string `json:"phase"`
	Restored       bool   `json:"restored,omitempty"`
	Slots          int    `json:"slots"`
	Reserved       int    `json:"reserved"`
	Healthy        bool   `json:"healthy"`
	HealthFailures int    `json:"health_failures,omitempty"`
	// HealthError is the last failed health check's error (the plugin's Heartbeat or the
	// host's probe, e.g. an SSH host key mismatch); NextHealthCheck is when an unhealthy
	// instance, or a booting one whose readiness check failed, is checked again.
	HealthError     string    `json:"health_error,omitempty"`
	NextHealthCheck time.Time `json:"next_health_check,omitzero"`
	IdleSince       time.Time `json:"idle_since,omitzero"`
	History         []Event   `json:"history"`
}

// instanceStatusFields is InstanceStatus without its JSON methods.
type instanceStatusFields InstanceStatus

// instanceStatusJSON is the /status form of InstanceStatus. In encoding/json a field
// nearer the top hides a deeper one of the same key, so the fields here rename and hide
// keys of the embedded record; a nil json.RawMessage with omitempty is left out.
type instanceStatusJSON struct {
	instanceStatusFields
	Owner     json.RawMessage `json:"owner,omitempty"`
	Removing  json.RawMessage `json:"removing,omitempty"`
	UpdatedAt json.RawMessage `json:"updated_at,omitempty"`
	CreatedAt json.RawMessage `json:"created_at,omitempty"`
	InFlight  json.RawMessage `json:"in_flight,omitempty"`
	Acquired  int             `json:"acquired"`
	FirstSeen time.Time       `json:"first_seen"`
}

// MarshalJSON writes the /status form (see InstanceStatus).
func (x InstanceStatus) MarshalJSON() ([]byte, error) {
	return json.Marshal(instanceStatusJSON{instanceStatusFields: instanceStatusFields(x), Acquired: x.InFlight, FirstSeen: x.CreatedAt})
}

// UnmarshalJSON reads the /status form (see InstanceStatus).
func (x *InstanceStatus) UnmarshalJSON(b []byte) error {
	var w instanceStatusJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*x = InstanceStatus(w.instanceStatusFields)
	x.InFlight, x.CreatedAt = w.Acquired, w.FirstSeen
	return nil
}

// PendingCreation is a recorded intent to create instances that have not appeared yet.
type PendingCreation struct {
	Count       int       `json:"count"`
	RequestedAt time.Time `json:"requested_at"`
	// Run is the scaler process that made the request. ThisRun is false for a request
	// of a previous run of the host: it does not count as capacity that is coming.
	Run     string    `json:"run"`
	ThisRun bool      `json:"this_run"`
	Expires time.Time `json:"expires"`
	Why     string    `json:"why,omitempty"`
	// Summary says it in one line, for example "waiting for 3 instances requested 2m0s
	// ago by a previous run (…)".
	Summary string `json:"summary"`
}

// Status is a snapshot of the scaler, marshalled by the status endpoint.
type Status struct {
	Owner    string    `json:"owner"`
	Provider string    `json:"provider"`
	Time     time.Time `json:"time"`
	// Run identifies this scaler process in the intents it records.
	Run string `json:"run"`
	// Policy is the index of the active [[runners.autoscaler.policy]] (−1: none).
	Policy     int    `json:"policy"`
	IdleCount  int    `json:"idle_count"`
	IdleTime   string `json:"idle_time"`
	Preemptive bool   `json:"preemptive"`
	// Mode is the active policy's kind ("fixed" or "forecast"); IdleTarget its idle
	// slots now and IdleWhy how it got there; Forecast is set for a forecast policy.
	Mode       string         `json:"mode"`
	IdleTarget int            `json:"idle_target"`
	IdleWhy    string         `json:"idle_why"`
	Forecast   *Forecast      `json:"forecast,omitempty"`
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
	LastDecision    Decision      `json:"last_decision"`
	LastShortfall   *Decision     `json:"last_shortfall,omitempty"`
	Breaker         BreakerStatus `json:"breaker"`
	LastUpdate      time.Time     `json:"last_update,omitzero"`
	LastUpdateError string        `json:"last_update_error,omitempty"`
	// UpdateFailing describes a run of consecutive failed Updates (empty when the last
	// one succeeded).
	UpdateFailing  string `json:"update_failing,omitempty"`
	LastStoreError string `json:"last_store_error,omitempty"`
	// StoreWarning says the state file was found corrupt and moved aside at start.
	StoreWarning string `json:"store_warning,omitempty"`
	// Pending lists the creation intents not yet seen in an Update, oldest first.
	Pending      []PendingCreation `json:"pending,omitempty"`
	InstanceList []InstanceStatus  `json:"instances"`
	// Gone lists recently removed instances with the reason.
	Gone []InstanceStatus `json:"gone,omitempty"`
	// Coordination is set when several runner managers share the pool (docs/ha.md):
	// who they are, which one leads, and who holds which slot.
	Coordination *Coordination `json:"coordination,omitempty"`
}

// Coordination is the state of a pool shared by several runner managers.
type Coordination struct {
	// Backend names the coordination service ("etcd").
	Backend string `json:"backend"`
	// Self is this manager's ID (its system ID); Leader the manager making the
	// scaling decisions ("" while none is elected).
	Self   string `json:"self"`
	Leader string `json:"leader"`
	// Connected is false while this manager has no session with the service: it
	// takes no jobs then.
	Connected bool `json:"connected"`
	// StatusFrom says, on a manager that does not lead, when the leader last
	// published the pool's state shown with this status.
	StatusFrom time.Time      `json:"status_from,omitzero"`
	Managers   []ManagerEntry `json:"managers"`
	Slots      []SlotHolder   `json:"slots"`
	// Error is set when the coordination state could not be read.
	Error string `json:"error,omitempty"`
}

// ManagerEntry is one live runner manager of a shared pool.
type ManagerEntry struct {
	ID       string    `json:"id"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Version  string    `json:"version,omitempty"`
	Since    time.Time `json:"since"`
	Jobs     int       `json:"jobs"`
	IsLeader bool      `json:"leader"`
}

// SlotHolder is one held slot of a shared pool: which manager holds it, for which
// acquisition key, since when.
type SlotHolder struct {
	Instance string    `json:"instance"`
	Slot     int       `json:"slot"`
	Manager  string    `json:"manager"`
	Key      string    `json:"key"`
	Since    time.Time `json:"since"`
}

func (s *Scaler) instanceStatusLocked(now time.Time, in *instance) InstanceStatus {
	st := InstanceStatus{Instance: in.Instance, Phase: in.phase.String(), Restored: in.restored, Reserved: in.reserved,
		Healthy: !in.unhealthy, HealthFailures: in.failures, History: in.orderedHistory(), Slots: s.opts.CapacityPerInstance}
	if in.unhealthy || in.readyRetry {
		st.HealthError, st.NextHealthCheck = in.lastHealthErr, in.nextCheck
	}
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
	st := Status{Owner: s.owner, Provider: s.info.ID, Time: now, Policy: c.policy.index, IdleCount: c.policy.settings.IdleCount,
		IdleTime: c.policy.IdleTime().String(), Preemptive: c.policy.Preemptive(), Tasks: c.tasks, Instances: c.inst,
		Mode: c.policy.mode(), IdleTarget: c.target, IdleWhy: c.why.Why, Forecast: c.why.Forecast,
		Required: c.required, Desired: c.desired, CapacityPerInstance: s.opts.CapacityPerInstance,
		MaxInstances: s.opts.MaxInstances, MaxJobs: satMul(s.opts.MaxInstances, s.opts.CapacityPerInstance),
		LastDecision: s.lastDecision, LastShortfall: s.lastNoCreate, Breaker: s.breaker.status(now),
		LastUpdate: s.lastUpdate, LastUpdateError: s.lastUpdErr, LastStoreError: s.lastStoreErr,
		StoreWarning: s.storeWarning, Run: s.run, Pending: s.pendingLocked(now),
		Gone: slices.Clone(s.gone)}
	if s.updFailures > 0 {
		st.UpdateFailing = s.updateFailingLocked(now)
	}
	for _, in := range s.instances {
		st.InstanceList = append(st.InstanceList, s.instanceStatusLocked(now, in))
	}
	slices.SortFunc(st.InstanceList, func(a, b InstanceStatus) int { return strings.Compare(a.ID, b.ID) })
	return st
}

func (s *Scaler) pendingLocked(now time.Time) []PendingCreation {
	var out []PendingCreation
	for _, it := range s.intents {
		p := PendingCreation{Count: it.Count, RequestedAt: it.At, Run: it.Run, ThisRun: it.Run == s.run,
			Expires: it.At.Add(s.opts.PendingCreationTimeout), Why: it.Why}
		ago := now.Sub(it.At).Round(time.Second)
		if p.ThisRun {
			p.Summary = fmt.Sprintf("waiting for %d instances requested %s ago by this run (written off at %s if they do not appear)",
				it.Count, ago, p.Expires.UTC().Format(time.RFC3339))
		} else {
			p.Summary = fmt.Sprintf("waiting for %d instances requested %s ago by a previous run (%s): not counted as capacity, so scale-up "+
				"goes on; adopted as created if they appear, written off at %s", it.Count, ago, runName(it.Run), p.Expires.UTC().Format(time.RFC3339))
		}
		out = append(out, p)
	}
	return out
}

// pendingSummaryLocked says in one line what creations are pending, this run's and
// previous runs' (Status.Pending has them one by one).
func (s *Scaler) pendingSummaryLocked(now time.Time) string {
	if len(s.intents) == 0 {
		return ""
	}
	var mine, theirs int
	var mineAt, theirsAt time.Time
	for _, it := range s.intents { // oldest first
		if it.Run == s.run {
			if mine == 0 {
				mineAt = it.At
			}
			mine += it.Count
			continue
		}
		if theirs == 0 {
			theirsAt = it.At
		}
		theirs += it.Count
	}
	var parts []string
	if mine > 0 {
		parts = append(parts, fmt.Sprintf("waiting for %d instances requested %s ago by this run", mine, now.Sub(mineAt).Round(time.Second)))
	}
	if theirs > 0 {
		parts = append(parts, fmt.Sprintf("waiting for %d instances requested %s ago by a previous run (not counted as capacity)",
			theirs, now.Sub(theirsAt).Round(time.Second)))
	}
	return strings.Join(parts, "; ")
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

// StatusSource is what the status endpoint asks of a scaler (a *Scaler, or a pool that
// owns one).
type StatusSource interface {
	Status() Status
	Explain(id string) (InstanceStatus, bool)
}

// StatusHandler serves the Report of the scalers list returns (it is called per
// request, so scalers may come and go). With ?instance=ID it serves that instance's
// InstanceStatus from whichever scaler knows it, or 404.
func StatusHandler(list func() []StatusSource) http.Handler {
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
		fmt.Fprintf(&b, "  instances: required %d, desired %d; requested %d, creating %d, booting %d, running %d, deleting %d, unvouched %d",
			st.Required, st.Desired, in.Requested, in.Creating, in.Booting, in.Running, in.Deleting, in.Unvouched)
		if in.Unconfirmed > 0 {
			fmt.Fprintf(&b, "; %d requested by a previous run, unconfirmed", in.Unconfirmed)
		}
		b.WriteString("\n")
		if st.StoreWarning != "" {
			fmt.Fprintf(&b, "  warning: %s\n", st.StoreWarning)
		}
		if st.UpdateFailing != "" {
			fmt.Fprintf(&b, "  plugin failing: %s\n", st.UpdateFailing)
		}
		for _, p := range st.Pending {
			fmt.Fprintf(&b, "  pending: %s\n", p.Summary)
		}
		fmt.Fprintf(&b, "  circuit breaker: %s", st.Breaker.State)
		if st.Breaker.LastFailure != "" {
			fmt.Fprintf(&b, " (%d consecutive failures; last: %s)", st.Breaker.ConsecutiveFailures, st.Breaker.LastFailure)
		}
		b.WriteString("\n")
		if st.IdleWhy != "" {
			fmt.Fprintf(&b, "  idle target (%s policy): %s\n", st.Mode, st.IdleWhy)
		}
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
			fmt.Fprintf(&b, "  %-24s %-9s %-9s cause=%-8s used=%d jobs=%d/%d healthy=%v", x.ID, x.Phase, x.State, x.Cause, x.UseCount, x.InFlight, x.Slots, x.Healthy)
			if x.HealthError != "" {
				check := "health"
				if x.Phase == "booting" {
					check = "readiness"
				}
				fmt.Fprintf(&b, " (%d %s check failures", x.HealthFailures, check)
				if !x.NextHealthCheck.IsZero() {
					fmt.Fprintf(&b, ", next at %s", x.NextHealthCheck.UTC().Format(time.RFC3339))
				}
				fmt.Fprintf(&b, ": %s)", x.HealthError)
			}
			if x.RemoveReason != "" {
				fmt.Fprintf(&b, " removing: %s", x.RemoveReason)
			}
			b.WriteString("\n")
		}
		if co := st.Coordination; co != nil {
			writeCoordination(&b, co)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeCoordination prints the managers of a shared pool, its leader and who holds
// which slot.
func writeCoordination(b *strings.Builder, co *Coordination) {
	leader := co.Leader
	if leader == "" {
		leader = "none elected"
	}
	fmt.Fprintf(b, "  shared through %s: this manager %s", co.Backend, co.Self)
	if !co.Connected {
		b.WriteString(" (NOT CONNECTED: takes no jobs)")
	}
	fmt.Fprintf(b, "; leader %s\n", leader)
	if !co.StatusFrom.IsZero() {
		fmt.Fprintf(b, "  pool state as the leader published it at %s\n", co.StatusFrom.UTC().Format(time.RFC3339))
	}
	if co.Error != "" {
		fmt.Fprintf(b, "  coordination error: %s\n", co.Error)
	}
	for _, m := range co.Managers {
		role := "follower"
		if m.IsLeader {
			role = "leader"
		}
		fmt.Fprintf(b, "  manager %-16s %-8s host %s pid %d, %d slots held, up since %s\n", m.ID, role, m.Host, m.PID, m.Jobs, m.Since.UTC().Format(time.RFC3339))
	}
	for _, sl := range co.Slots {
		fmt.Fprintf(b, "  slot %s/%d held by %s for %s since %s\n", sl.Instance, sl.Slot, sl.Manager, sl.Key, sl.Since.UTC().Format(time.RFC3339))
	}
}

// WriteInstance prints one instance's explanation: why it exists and its history.
func WriteInstance(w io.Writer, x InstanceStatus) error {
	var b strings.Builder
	fmt.Fprintf(&b, "instance %s: %s (plugin state %s), cause %s", x.ID, x.Phase, x.State, x.Cause)
	if x.Restored {
		b.WriteString(", restored after a restart")
	}
	fmt.Fprintf(&b, "\n  used %d times, %d of %d slots acquired, %d reserved, healthy %v\n", x.UseCount, x.InFlight, x.Slots, x.Reserved, x.Healthy)
	if x.HealthError != "" {
		fmt.Fprintf(&b, "  health: %d consecutive failures, next check at %s: %s\n", x.HealthFailures,
			x.NextHealthCheck.UTC().Format(time.RFC3339), x.HealthError)
	}
	if x.RemoveReason != "" {
		fmt.Fprintf(&b, "  removal: %s\n", x.RemoveReason)
	}
	for _, e := range x.History {
		fmt.Fprintf(&b, "  %s  %-20s %s\n", e.Time.UTC().Format(time.RFC3339), e.Kind, e.Reason)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
