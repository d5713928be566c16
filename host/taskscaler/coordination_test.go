package taskscaler

import (
	"strings"
	"testing"
	"time"
)

func TestWriteReportCoordination(t *testing.T) {
	at := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		co   Coordination
		want []string
	}{
		{"leader and slots", Coordination{Backend: "etcd", Self: "s_2", Leader: "s_1", Connected: true, StatusFrom: at,
			Managers: []ManagerEntry{{ID: "s_1", Host: "a", PID: 10, Since: at, Jobs: 1, IsLeader: true}, {ID: "s_2", Host: "b", PID: 11, Since: at}},
			Slots:    []SlotHolder{{Instance: "local-x", Slot: 1, Manager: "s_1", Key: "job-7", Since: at}}},
			[]string{"shared through etcd: this manager s_2; leader s_1", "published it at 2026-12-05T10:00:00Z",
				"manager s_1", "leader   host a pid 10, 1 slots held", "follower host b", "slot local-x/1 held by s_1 for job-7"}},
		{"cut off, no leader", Coordination{Backend: "etcd", Self: "s_3", Error: "read the coordination state from etcd: context deadline exceeded"},
			[]string{"(NOT CONNECTED: takes no jobs); leader none elected", "coordination error: read the coordination state"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b strings.Builder
			co := c.co
			if err := WriteReport(&b, Report{Scalers: []Status{{Owner: "o", Coordination: &co}}}); err != nil {
				t.Fatal(err)
			}
			for _, w := range c.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("report lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}
