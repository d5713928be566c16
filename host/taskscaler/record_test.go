package taskscaler

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// TestRestoredInstanceExplainsItsRecord ties the one instance record together: what
// the scaler stored is what a restarted scaler explains (in Go and on the /status
// wire), what its ready function is given, and what it stores again.
func TestRestoredInstanceExplainsItsRecord(t *testing.T) {
	opts := Options{CapacityPerInstance: 1, MaxUseCount: 3, Policies: []Policy{{IdleCount: 3, IdleTime: time.Hour}}}
	e := newEnv(t, fake.Options{}, opts)
	e.reconcile(2)
	used := e.acquire("used").InstanceID()
	e.clk.Advance(time.Minute)
	busy := e.acquire("busy").InstanceID()
	e.s.Release("used")
	var removing string
	for _, in := range e.s.Status().InstanceList {
		if in.Phase == "ready" && in.ID != used && in.ID != busy {
			removing = in.ID
		}
	}
	e.g.SetState(removing, provider.StateDeleting)
	e.clk.Advance(time.Minute)
	e.reconcile(1)

	// The host dies. What it stored is what the next scaler starts from.
	e.s.cancel()
	snap, err := e.store.Load(context.Background(), e.s.Owner())
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]state.Instance{}
	for _, rec := range snap.Instances {
		stored[rec.ID] = rec
	}
	for id, check := range map[string]func(state.Instance) bool{
		used: func(r state.Instance) bool {
			return r.UseCount == 1 && r.InFlight == 0 && !r.ReadyAt.IsZero() && !r.Removing
		},
		busy: func(r state.Instance) bool { return r.UseCount == 1 && r.InFlight == 1 && !r.Removing },
		removing: func(r state.Instance) bool {
			return r.Removing && r.RemoveReason != "" && r.State == provider.StateDeleting
		},
	} {
		if rec, ok := stored[id]; !ok || !check(rec) {
			t.Fatalf("stored record of %s: %+v (found %v)", id, rec, ok)
		}
	}

	infos := map[string]InstanceInfo{}
	opts.Ready = func(_ context.Context, in InstanceInfo) error { infos[in.ID] = in; return nil }
	e.start(opts)
	srv := httptest.NewServer(e.s)
	defer srv.Close()
	for id, rec := range stored {
		// No job of the dead process is in flight now (it decides the instance's fate
		// instead), and readiness is checked again in this run.
		want := rec
		want.InFlight, want.ReadyAt = 0, time.Time{}
		st, ok := e.s.Explain(id)
		if !ok || st.Instance != want || st.Phase != "restoring" || !st.Restored {
			t.Errorf("explain %s after restart:\n got %+v (phase %s, restored %v)\nwant %+v", id, st.Instance, st.Phase, st.Restored, want)
		}
		// The /status form carries the same facts, less the store's bookkeeping.
		want.Owner, want.Removing, want.UpdatedAt = "", false, time.Time{}
		resp, err := http.Get(srv.URL + "?instance=" + id)
		if err != nil {
			t.Fatal(err)
		}
		var wire InstanceStatus
		err = json.NewDecoder(resp.Body).Decode(&wire)
		resp.Body.Close()
		if err != nil || wire.Instance != want {
			t.Errorf("/status?instance=%s after restart (%v):\n got %+v\nwant %+v", id, err, wire.Instance, want)
		}
	}

	e.clk.Advance(time.Minute)
	e.reconcile(1)
	rec := stored[used]
	info, ok := infos[used]
	if !ok || info.Cause != CauseAdopted || !info.Restored || info.UseCount != rec.UseCount || !info.CreatedAt.Equal(rec.CreatedAt) {
		t.Fatalf("ready function of the adopted instance got %+v (called %v), stored %+v", info, ok, rec)
	}
	if st, _ := e.s.Explain(used); st.Phase != "ready" || !st.CreatedAt.Equal(rec.CreatedAt) || st.UseCount != rec.UseCount {
		t.Fatalf("adopted instance: %+v", st)
	}
	snap, err = e.store.Load(context.Background(), e.s.Owner())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(snap.Instances, func(r state.Instance) bool { return r.ID == used })
	if i < 0 {
		t.Fatalf("the adopted instance %s is not stored: %+v", used, snap.Instances)
	}
	if again := snap.Instances[i]; again.Cause != CauseAdopted || again.UseCount != rec.UseCount || !again.CreatedAt.Equal(rec.CreatedAt) ||
		!again.ReadyAt.Equal(e.clk.Now()) || !again.UpdatedAt.Equal(e.clk.Now()) {
		t.Fatalf("record of the adopted instance written by the new scaler: %+v (first stored %+v)", again, rec)
	}
}

// TestInstanceStatusJSONForm pins the /status form of an instance, which is older than
// the record it embeds: first_seen and acquired for the record's created_at and
// in_flight, and none of the store's owner, removing and updated_at.
func TestInstanceStatusJSONForm(t *testing.T) {
	rec := state.Instance{ID: "i-1", Owner: "https://gitlab.example|42", Cause: CauseAdopted, State: provider.StateRunning,
		UseCount: 3, InFlight: 1, Removing: true, RemoveReason: "idle", CreatedAt: t0, ReadyAt: t0.Add(time.Minute),
		UpdatedAt: t0.Add(2 * time.Minute)}
	cases := []struct {
		name string
		in   InstanceStatus
		want map[string]any
	}{
		{"every field", InstanceStatus{Instance: rec, Phase: "removing", Restored: true, Slots: 2, Reserved: 1,
			HealthFailures: 2, HealthError: "probe: refused", NextHealthCheck: t0.Add(3 * time.Minute),
			IdleSince: t0.Add(4 * time.Minute), History: []Event{{Time: t0, Kind: "created", Reason: "scale-up"}}},
			map[string]any{"id": "i-1", "state": "running", "phase": "removing", "cause": "adopted", "restored": true,
				"use_count": 3.0, "slots": 2.0, "reserved": 1.0, "acquired": 1.0, "healthy": false, "health_failures": 2.0,
				"health_error": "probe: refused", "next_health_check": "2026-03-02T12:03:00Z", "first_seen": "2026-03-02T12:00:00Z",
				"ready_at": "2026-03-02T12:01:00Z", "idle_since": "2026-03-02T12:04:00Z", "remove_reason": "idle",
				"history": []any{map[string]any{"time": "2026-03-02T12:00:00Z", "kind": "created", "reason": "scale-up"}}}},
		{"only what is always sent", InstanceStatus{Instance: state.Instance{ID: "i-2", State: provider.StateCreating,
			Cause: CauseCreated, CreatedAt: t0}, Phase: "creating", Healthy: true},
			map[string]any{"id": "i-2", "state": "creating", "phase": "creating", "cause": "created", "use_count": 0.0,
				"slots": 0.0, "reserved": 0.0, "acquired": 0.0, "healthy": true, "first_seen": "2026-03-02T12:00:00Z", "history": nil}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := json.Marshal(c.in)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("JSON\n got %v\nwant %v", got, c.want)
			}
			var back InstanceStatus
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			want := c.in
			want.Owner, want.Removing, want.UpdatedAt = "", false, time.Time{}
			if !reflect.DeepEqual(back, want) {
				t.Errorf("decoded\n got %+v\nwant %+v", back, want)
			}
		})
	}
	// Inside a Status, as /status serves it, the same form.
	b, err := json.Marshal(Status{InstanceList: []InstanceStatus{{Instance: rec}}})
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Instances []map[string]any }
	if err := json.Unmarshal(b, &st); err != nil || len(st.Instances) != 1 || st.Instances[0]["first_seen"] == nil || st.Instances[0]["owner"] != nil {
		t.Fatalf("status %s (%v)", b, err)
	}
}
