package state

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var at = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// writeInventory fills a real state file: owner "a" with n instances (enough for
// branch pages when n is large), owner "b" with two and an intent, then deletes some
// of a's so that the freelist holds pages.
func writeInventory(t testing.TB, path string, n int) {
	t.Helper()
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var put []Instance
	for i := range n {
		put = append(put, Instance{ID: fmt.Sprintf("i-%05d", i), Owner: "a", Cause: "created", State: "running", UseCount: i, CreatedAt: at})
	}
	if err := s.Apply(ctx, "a", Batch{Put: put}); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(ctx, "b", Batch{Put: []Instance{{ID: "b-1", Owner: "b"}, {ID: "b-2", Owner: "b"}},
		SetIntents: true, Intents: []Intent{{ID: "r/1", Run: "r", Count: 2, At: at}}}); err != nil {
		t.Fatal(err)
	}
	var del []string
	for i := 0; i < n; i += 7 {
		del = append(del, fmt.Sprintf("i-%05d", i))
	}
	if err := s.Apply(ctx, "a", Batch{Delete: del}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// layout is what a test needs to aim a corruption: the page size, the high-water mark
// and the pages of each type.
type layout struct {
	ps    int
	hwm   int
	pages map[string][]int
}

func pageLayout(t *testing.T, path string) layout {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l := layout{ps: db.Info().PageSize, pages: map[string][]int{}}
	err = db.View(func(tx *bolt.Tx) error {
		for id := 0; ; id++ {
			p, err := tx.Page(id)
			if err != nil {
				return err
			}
			if p == nil {
				l.hwm = id
				return nil
			}
			if p.ID == id {
				l.pages[p.Type] = append(l.pages[p.Type], id)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"meta", "freelist", "branch", "leaf"} {
		if len(l.pages[typ]) == 0 {
			t.Fatalf("test file has no %s page: %+v", typ, l.pages)
		}
	}
	return l
}

// resealMeta recomputes a meta page's checksum, so that a corruption gets past it.
func resealMeta(b []byte, off int) {
	m := b[off+pageHeaderSize:]
	h := fnv.New64a()
	h.Write(m[:metaChecksumAt])
	binary.NativeEndian.PutUint64(m[metaChecksumAt:], h.Sum64())
}

func TestOpenBoltCorruption(t *testing.T) {
	ne := binary.NativeEndian
	zero := func(b []byte, l layout, id int) { clear(b[id*l.ps : (id+1)*l.ps]) }
	elem := func(l layout, id, i int) int { return id*l.ps + pageHeaderSize + i*elemSize }
	cases := []struct {
		name    string
		corrupt func(b []byte, l layout) []byte
		intact  bool // bbolt's second meta page saves the file: nothing is moved
	}{
		{"truncated to zero", func(b []byte, l layout) []byte { return nil }, false},
		{"truncated to 100 bytes", func(b []byte, l layout) []byte { return b[:100] }, false},
		{"truncated to half", func(b []byte, l layout) []byte { return b[:len(b)/2] }, false},
		{"truncated by one page", func(b []byte, l layout) []byte { return b[:(l.hwm-1)*l.ps] }, false},
		{"first meta page zeroed", func(b []byte, l layout) []byte { zero(b, l, 0); return b }, true},
		{"both meta pages zeroed", func(b []byte, l layout) []byte { zero(b, l, 0); zero(b, l, 1); return b }, false},
		{"byte flipped in both meta pages", func(b []byte, l layout) []byte {
			b[pageHeaderSize+20] ^= 0x40
			b[l.ps+pageHeaderSize+20] ^= 0x40
			return b
		}, false},
		{"valid meta claims more pages than the file has", func(b []byte, l layout) []byte {
			for _, off := range []int{0, l.ps} {
				ne.PutUint64(b[off+pageHeaderSize+40:], uint64(l.hwm)*4)
				resealMeta(b, off)
			}
			return b
		}, false},
		{"freelist page zeroed", func(b []byte, l layout) []byte { zero(b, l, l.pages["freelist"][0]); return b }, false},
		{"freelist count overflows", func(b []byte, l layout) []byte {
			id := l.pages["freelist"][0]
			ne.PutUint16(b[id*l.ps+10:], 0xFFFF)
			ne.PutUint64(b[id*l.ps+pageHeaderSize:], 1<<40)
			return b
		}, false},
		{"freelist entry out of range", func(b []byte, l layout) []byte {
			id := l.pages["freelist"][0]
			ne.PutUint16(b[id*l.ps+10:], 1)
			ne.PutUint64(b[id*l.ps+pageHeaderSize:], 1<<50)
			return b
		}, false},
		{"branch page zeroed", func(b []byte, l layout) []byte { zero(b, l, l.pages["branch"][0]); return b }, false},
		{"branch page points at itself", func(b []byte, l layout) []byte {
			id := l.pages["branch"][0]
			ne.PutUint64(b[elem(l, id, 1)+8:], uint64(id))
			return b
		}, false},
		{"branch child far out of range", func(b []byte, l layout) []byte {
			id := l.pages["branch"][0]
			ne.PutUint64(b[elem(l, id, 0)+8:], 1<<40)
			return b
		}, false},
		{"branch flags flipped", func(b []byte, l layout) []byte { b[l.pages["branch"][0]*l.ps+8] ^= 0x20; return b }, false},
		{"leaf page zeroed", func(b []byte, l layout) []byte { zero(b, l, l.pages["leaf"][len(l.pages["leaf"])/2]); return b }, false},
		{"leaf key size huge", func(b []byte, l layout) []byte {
			id := l.pages["leaf"][len(l.pages["leaf"])/2]
			ne.PutUint32(b[elem(l, id, 0)+8:], 0xFFFFFFF0)
			return b
		}, false},
		{"leaf element count huge", func(b []byte, l layout) []byte {
			ne.PutUint16(b[l.pages["leaf"][0]*l.ps+10:], 0xFFFF)
			return b
		}, false},
		{"byte flipped inside a record", func(b []byte, l layout) []byte {
			id := l.pages["leaf"][len(l.pages["leaf"])/2]
			i := bytes.Index(b[id*l.ps:(id+1)*l.ps], []byte(`"use_count":`))
			b[id*l.ps+i] = '{'
			return b
		}, false},
		{"garbage", func(b []byte, l layout) []byte {
			r := rand.New(rand.NewPCG(1, 2))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		}, false},
		{"a text file", func(b []byte, l layout) []byte { return []byte("owners = 3\n") }, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "runner.db")
			writeInventory(t, path, 400)
			l := pageLayout(t, path)
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			damaged := c.corrupt(raw, l)
			if err := os.WriteFile(path, damaged, 0o600); err != nil {
				t.Fatal(err)
			}

			s, err := OpenBolt(path, time.Second)
			if err != nil {
				t.Fatalf("OpenBolt: %v (want the corrupt file moved aside and a new one started)", err)
			}
			defer s.Close()
			ctx := context.Background()
			got, err := s.Load(ctx, "a")
			if err != nil {
				t.Fatal(err)
			}
			asides, _ := filepath.Glob(path + ".corrupt-*")
			if c.intact {
				if s.Warning() != "" || len(asides) != 0 || (len(got.Instances) != 400 && len(got.Instances) != 400-58) {
					t.Fatalf("warning %q, moved %v, %d instances: want the file used as it is", s.Warning(), asides, len(got.Instances))
				}
				return
			}
			if len(asides) != 1 {
				t.Fatalf("files moved aside: %v", asides)
			}
			kept, err := os.ReadFile(asides[0])
			if err != nil || !bytes.Equal(kept, damaged) {
				t.Fatalf("the damaged file was not kept as it was (%v)", err)
			}
			w := s.Warning()
			for _, want := range []string{path + " was corrupt", "moved it to " + asides[0], "empty inventory", "unvouched"} {
				if !strings.Contains(w, want) {
					t.Errorf("warning %q does not say %q", w, want)
				}
			}
			if strings.Contains(w, "another runner") {
				t.Errorf("corruption blamed on another runner: %q", w)
			}
			if len(got.Instances) != 0 || len(got.Intents) != 0 {
				t.Fatalf("new inventory not empty: %+v", got)
			}
			if err := s.Apply(ctx, "a", Batch{Put: []Instance{{ID: "new"}}}); err != nil {
				t.Fatalf("new file not writable: %v", err)
			}
			s.Close()
			s2, err := OpenBolt(path, time.Second)
			if err != nil || s2.Warning() != "" {
				t.Fatalf("reopen: %v, warning %q", err, s2.Warning())
			}
			defer s2.Close()
			if got, _ := s2.Load(ctx, "a"); len(got.Instances) != 1 {
				t.Fatalf("after reopen: %+v", got)
			}
		})
	}
}

// TestOpenBoltLockedIsNotCorrupt holds the lock in a second open file description (as
// another process would) over a damaged file: the error names the lock, and the file
// is left where it is.
func TestOpenBoltLockedIsNotCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "runner.db")
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	holder, err := lockFile(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	_, err = OpenBolt(path, 100*time.Millisecond)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "is another runner using it?") {
		t.Fatalf("err = %v, want ErrLocked", err)
	}
	if asides, _ := filepath.Glob(path + ".corrupt-*"); len(asides) != 0 {
		t.Fatalf("a locked file was moved aside: %v", asides)
	}
	if raw, _ := os.ReadFile(path); string(raw) != "garbage" {
		t.Fatalf("locked file changed: %q", raw)
	}
}

func TestOpenBoltMigratesSchema1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "runner.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		owners, _ := tx.CreateBucket(bucketOwners)
		owners.Put(keyVersion, []byte("1"))
		for owner, count := range map[string]int{"a": 3, "b": 0} {
			ob, _ := owners.CreateBucket([]byte(owner))
			ib, _ := ob.CreateBucket(bucketInstances)
			rec, _ := json.Marshal(Instance{ID: owner + "-1", Owner: owner, Cause: "created"})
			ib.Put([]byte(owner+"-1"), rec)
			mb, _ := ob.CreateBucket(bucketMeta)
			mb.Put(keyPendingV1, []byte(fmt.Sprintf(`{"count":%d,"since":"2026-01-02T03:04:05Z"}`, count)))
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenBolt(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, _ := s.Load(context.Background(), "a")
	b, _ := s.Load(context.Background(), "b")
	if len(a.Instances) != 1 || len(a.Intents) != 1 || a.Intents[0].Count != 3 || !a.Intents[0].At.Equal(at) || a.Intents[0].Run != "" {
		t.Fatalf("owner a after migration: %+v", a)
	}
	if len(b.Instances) != 1 || len(b.Intents) != 0 {
		t.Fatalf("owner b after migration: %+v", b)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		if v := string(tx.Bucket(bucketOwners).Get(keyVersion)); v != schemaVersion {
			return fmt.Errorf("version %q", v)
		}
		if tx.Bucket(bucketOwners).Bucket([]byte("a")).Bucket(bucketMeta).Get(keyPendingV1) != nil {
			return errors.New("schema 1 pending record left behind")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenBoltLeavesNewerSchemaAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "runner.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		owners, _ := tx.CreateBucket(bucketOwners)
		return owners.Put(keyVersion, []byte("9"))
	})
	db.Close()
	_, err = OpenBolt(path, time.Second)
	if err == nil || !strings.Contains(err.Error(), "state schema version 9 is newer") {
		t.Fatalf("err = %v", err)
	}
	if asides, _ := filepath.Glob(path + ".corrupt-*"); len(asides) != 0 {
		t.Fatalf("a newer file was moved aside: %v", asides)
	}
}

// FuzzOpenState writes arbitrary bytes as the state file: OpenBolt, Load and Apply
// must never panic, and OpenBolt returns either a usable store or an error.
func FuzzOpenState(f *testing.F) {
	dir := f.TempDir()
	for i, n := range []int{0, 3, 60} {
		path := filepath.Join(dir, fmt.Sprint("seed", i))
		if n > 0 {
			writeInventory(f, path, n)
		} else {
			s, err := OpenBolt(path, time.Second)
			if err != nil {
				f.Fatal(err)
			}
			s.Close()
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Add([]byte{})
	f.Add([]byte("not a database"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "state.db")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenBolt(path, time.Second)
		if err != nil {
			return
		}
		defer s.Close()
		ctx := context.Background()
		for _, owner := range []string{"a", "b"} {
			if _, err := s.Load(ctx, owner); err != nil {
				t.Fatalf("Load(%s) on an opened store: %v", owner, err)
			}
		}
		b := Batch{Put: []Instance{{ID: "i-00003", Owner: "a"}, {ID: "z", Owner: "a"}}, Delete: []string{"i-00001"},
			SetIntents: true, Intents: []Intent{{ID: "x/1", Count: 1}}}
		if err := s.Apply(ctx, "a", b); err != nil {
			t.Fatalf("Apply on an opened store: %v", err)
		}
		if got, err := s.Load(ctx, "a"); err != nil || len(got.Intents) != 1 {
			t.Fatalf("Load after Apply: %+v, %v", got, err)
		}
	})
}
