package taskscaler

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/state"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/fake"
)

// A plugin of the first fleeting generation has no Heartbeat. The host answers as
// GitLab's does: its instances count as healthy, and the probe (connecting to the
// instance) is what judges them.
func TestGroupWithoutHeartbeat(t *testing.T) {
	var probes atomic.Int32
	e := &env{t: t, clk: clock.NewFake(t0), g: fake.New(fake.Options{}), store: state.NewMemory()}
	s, err := New(context.Background(), fake.FirstGeneration(e.g), Options{Clock: e.clk, Store: e.store, Manual: true,
		Logger: quiet(), Owner: "https://gitlab.example|42", FailureThreshold: 1, HeartbeatInterval: time.Minute,
		Policies: []Policy{{IdleCount: 1, IdleTime: time.Hour}},
		Probe:    func(context.Context, InstanceInfo) error { probes.Add(1); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	e.s = s
	t.Cleanup(func() { s.cancel() })

	e.reconcile(2)
	if st := e.s.Status(); st.Tasks.Idle != 1 || st.Tasks.Unhealthy != 0 {
		t.Fatalf("an instance of a plugin without Heartbeat is not ready and healthy: %+v", st.Tasks)
	}
	if probes.Load() == 0 {
		t.Fatal("readiness did not probe the instance: without Heartbeat, connecting is its only health check")
	}
	id := e.live()[0]
	e.clk.Advance(time.Minute)
	e.reconcile(1)
	if in, _ := e.s.Explain(id); in.Phase != "ready" {
		t.Fatalf("after the heartbeat interval: %+v", in)
	}

}
