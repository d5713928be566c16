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
				{"a", Batch{Pending: &Pending{Count: 3, Since: at}}},
				{"a", Batch{Put: []Instance{{ID: "i-2", Owner: "a", Cause: "created", UseCount: 1, CreatedAt: at}, {ID: "i-1", Owner: "a", InFlight: 2}},
					Pending: &Pending{Count: 1, Since: at}}},
				{"b", Batch{Put: []Instance{{ID: "i-9", Owner: "b"}}}},
				{"a", Batch{Put: []Instance{{ID: "i-2", Owner: "a", Cause: "created", UseCount: 5, Removing: true, RemoveReason: "idle", CreatedAt: at}}}},
				{"a", Batch{Delete: []string{"i-1", "i-unknown"}}},
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
			if got.Pending.Count != 1 || !got.Pending.Since.Equal(at) {
				t.Fatalf("pending %+v", got.Pending)
			}
			other, _ := s.Load(ctx, "b")
			none, _ := s.Load(ctx, "nobody")
			if len(other.Instances) != 1 || len(none.Instances) != 0 || none.Pending.Count != 0 {
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
