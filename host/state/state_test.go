package state

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func stores(t *testing.T) map[string]func() (Store, func() Store) {
	return map[string]func() (Store, func() Store){
		"memory": func() (Store, func() Store) {
			m := NewMemory()
			return m, func() Store { m.Close(); m.Reopen(); return m }
		},
		"bolt": func() (Store, func() Store) {
			path := filepath.Join(t.TempDir(), "state.db")
			b, err := OpenBolt(path, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			return b, func() Store {
				b.Close()
				b2, err := OpenBolt(path, time.Second)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b2.Close() })
				return b2
			}
		},
	}
}

func TestStoreRoundTrip(t *testing.T) {
	ctx := context.Background()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for name, open := range stores(t) {
		t.Run(name, func(t *testing.T) {
			s, reopen := open()
			steps := []struct {
				owner string
				b     Batch
			}{
				{"a", Batch{SetIntents: true, Intents: []Intent{{ID: "r1/1", Run: "r1", Count: 3, At: at}}}},
				{"a", Batch{Put: []Instance{{ID: "i-2", Owner: "a", Cause: "created", UseCount: 1, CreatedAt: at}, {ID: "i-1", Owner: "a", InFlight: 2}},
					SetIntents: true, Intents: []Intent{{ID: "r1/1", Run: "r1", Count: 1, At: at, Why: "idle_count"}, {ID: "r1/2", Run: "r1", Count: 2, At: at.Add(time.Minute)}}}},
				{"b", Batch{Put: []Instance{{ID: "i-9", Owner: "b"}}}},
				{"a", Batch{Put: []Instance{{ID: "i-2", Owner: "a", Cause: "created", UseCount: 5, Removing: true, RemoveReason: "idle", CreatedAt: at}}}},
				{"a", Batch{Delete: []string{"i-1", "i-unknown"}}},
				{"a", Batch{Demand: &Demand{BucketSeconds: 900, Week: []float64{1, 2.5}, WeekSeen: []int{1, 0}, Bursts: []float64{3, 1}, BootsS: []float64{61.5}, JobValueS: 700, UpdatedAt: at}}},
				{"a", Batch{Demand: &Demand{BucketSeconds: 900, Week: []float64{4, 2.5}, WeekSeen: []int{2, 0}, Bursts: []float64{3, 1}, BootsS: []float64{61.5, 58}, JobValueS: 650, UpdatedAt: at}}},
				{"a", Batch{Delete: []string{"i-none"}}}, // a batch without demand keeps it
			}
			for _, st := range steps {
				if err := s.Apply(ctx, st.owner, st.b); err != nil {
					t.Fatal(err)
				}
			}
			s = reopen()
			got, err := s.Load(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Instances) != 1 {
				t.Fatalf("instances %+v", got.Instances)
			}
			in := got.Instances[0]
			if in.ID != "i-2" || in.UseCount != 5 || !in.Removing || in.RemoveReason != "idle" || !in.CreatedAt.Equal(at) {
				t.Fatalf("record %+v", in)
			}
			if len(got.Intents) != 2 || got.Intents[0].Count != 1 || got.Intents[0].Why != "idle_count" || !got.Intents[0].At.Equal(at) ||
				got.Intents[1].ID != "r1/2" || !got.Intents[1].At.Equal(at.Add(time.Minute)) {
				t.Fatalf("intents %+v", got.Intents)
			}
			if d := got.Demand; d == nil || d.Week[0] != 4 || d.WeekSeen[0] != 2 || len(d.BootsS) != 2 || d.JobValueS != 650 || !d.UpdatedAt.Equal(at) {
				t.Fatalf("demand %+v", got.Demand)
			}
			other, _ := s.Load(ctx, "b")
			none, _ := s.Load(ctx, "nobody")
			if len(other.Instances) != 1 || other.Demand != nil || len(none.Instances) != 0 || len(none.Intents) != 0 {
				t.Fatalf("owners mixed: b=%+v nobody=%+v", other, none)
			}
		})
	}
}

func TestBoltLockedByAnotherHost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	b, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = OpenBolt(path, 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "is another runner using it?") {
		t.Fatalf("second open: %v", err)
	}
}

func TestMemoryClosed(t *testing.T) {
	m := NewMemory()
	m.Close()
	if err := m.Apply(context.Background(), "a", Batch{Delete: []string{"x"}}); err != ErrClosed {
		t.Fatalf("Apply after Close: %v", err)
	}
}
