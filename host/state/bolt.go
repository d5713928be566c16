package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket layout: owners/<owner>/instances/<id> = JSON Instance, and
// owners/<owner>/meta/intents = JSON []Intent, owners/<owner>/meta/demand = JSON Demand
// (added without a schema change: older files simply have none). owners/version holds the schema version
// so that a later release can migrate the layout.
//
// Version 1 kept one pending count per owner (owners/<owner>/meta/pending = JSON
// {"count","since"}); opening such a file migrates it to one intent of an unknown run.
var (
	bucketOwners    = []byte("owners")
	bucketInstances = []byte("instances")
	bucketMeta      = []byte("meta")
	keyIntents      = []byte("intents")
	keyDemand       = []byte("demand")
	keyPendingV1    = []byte("pending")
	keyVersion      = []byte("version")
)

const schemaVersion = "2"

// ErrLocked is returned (wrapped, with the path) by OpenBolt when another process holds
// the state file's lock for longer than the timeout.
var ErrLocked = errors.New("locked by another process")

// ErrCorrupt is returned (wrapped, with the details) by a Bolt whose file turned out to
// be damaged after it was opened. OpenBolt itself does not return it: it moves a corrupt
// file aside and starts a new one (see OpenBolt).
var ErrCorrupt = errors.New("state file corrupt")

// Bolt is a Store in a bbolt file. Every Apply is one fsynced transaction.
type Bolt struct {
	db      *bolt.DB
	path    string
	warning string
	lost    bool // the file was found corrupt and moved aside: see InventoryLost

	mu     sync.Mutex
	broken error // set once bbolt panicked: the file is never touched again
}

// OpenBolt opens (creating if needed) the inventory file at path. It waits at most
// timeout for the file lock; if another process holds it, the error wraps ErrLocked.
//
// It never panics on a damaged file. The file's structure is checked before bbolt
// reads it, and every record is decoded. A file that fails (truncated, zeroed or
// flipped pages, garbage, undecodable records) is renamed to
// <path>.corrupt-<UTC time> and a new, empty file is started; Warning then says so,
// naming both paths, and InventoryLost reports it. Nothing is lost: the damaged file
// stays for inspection. Nothing leaks: with an empty inventory every instance the
// plugin lists is unvouched, and the scaler, told that the inventory was lost, deletes
// the ones its first listing shows at once. A file written by a newer schema is an
// error, not corruption: it is left alone.
func OpenBolt(path string, timeout time.Duration) (*Bolt, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory for %s: %w", path, err)
	}
	// An empty file that was there before is damage (a truncation); one this call
	// creates is new.
	_, statErr := os.Stat(path)
	f, err := lockFile(path, timeout)
	if err != nil {
		return nil, err
	}
	b, err := openLocked(path, f, timeout, statErr == nil)
	var ce *corruptError
	if !errors.As(err, &ce) {
		f.Close()
		return b, err
	}
	// Still holding the lock (bbolt may have dropped it when it gave up on the file),
	// move the damaged file aside and start a new one.
	if err := relock(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	aside := fmt.Sprintf("%s.corrupt-%s", path, time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := os.Rename(path, aside); err != nil {
		f.Close()
		return nil, fmt.Errorf("state file %s is corrupt (%v), and moving it aside failed: %w", path, ce.err, err)
	}
	f.Close()
	f, err = lockFile(path, timeout)
	if err != nil {
		return nil, err
	}
	b, err = openLocked(path, f, timeout, false)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("start a new state file %s after moving the corrupt one to %s: %w", path, aside, err)
	}
	b.warning = fmt.Sprintf("state file %s was corrupt (%v): moved it to %s and started with an empty inventory; "+
		"the instances the plugin still lists are unvouched and deleted, since nothing can vouch for their state", path, ce.err, aside)
	b.lost = true
	return b, nil
}

// corruptError marks a damaged file, as opposed to an I/O or lock failure.
type corruptError struct{ err error }

func (e *corruptError) Error() string { return e.err.Error() }
func (e *corruptError) Unwrap() error { return ErrCorrupt }

func corrupt(format string, a ...any) error { return &corruptError{err: fmt.Errorf(format, a...)} }

// lockFile opens path and takes its exclusive flock, the lock bbolt itself uses, so
// that the file is checked only while no other process can write it.
func lockFile(path string, timeout time.Duration) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock state file %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("open state file %s: %w for %s (is another runner using it?)", path, ErrLocked, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func relock(f *os.File) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("%w (is another runner using it?)", ErrLocked)
	}
	return nil
}

// guard runs fn, turning a panic or a memory fault inside bbolt into an error.
func guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = corrupt("bbolt failed on the file: %v", r)
		}
	}()
	return fn()
}

// openLocked checks, opens, migrates and verifies the file f (open and locked) at path.
// Corruption is reported as a *corruptError. f stays open: bbolt gets its own
// duplicate of the descriptor, which shares the lock.
func openLocked(path string, f *os.File, timeout time.Duration, existed bool) (*Bolt, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	if existed || info.Size() > 0 {
		if err := validateFile(f, info.Size()); err != nil {
			return nil, &corruptError{err: err}
		}
	}
	var db *bolt.DB
	err = guard(func() error {
		var err error
		db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout, OpenFile: func(string, int, os.FileMode) (*os.File, error) {
			fd, err := syscall.Dup(int(f.Fd()))
			if err != nil {
				return nil, err
			}
			return os.NewFile(uintptr(fd), path), nil
		}})
		return err
	})
	if err != nil {
		var ce *corruptError
		if errors.As(err, &ce) || !errors.Is(err, bolt.ErrTimeout) {
			// The lock is ours, so any failure to read the file is the file's fault.
			return nil, &corruptError{err: err}
		}
		return nil, fmt.Errorf("open state file %s: %w (is another runner using it?)", path, ErrLocked)
	}
	b := &Bolt{db: db, path: path}
	// Records are checked before anything is written, so that a damaged file is moved
	// aside exactly as it was found.
	if err := guard(b.verify); err != nil {
		db.Close()
		return nil, err
	}
	if err := guard(b.initialise); err != nil {
		db.Close()
		var ce *corruptError
		switch {
		case errors.As(err, &ce):
			return nil, err
		case errors.Is(err, bolt.ErrIncompatibleValue):
			return nil, &corruptError{err: err}
		}
		return nil, fmt.Errorf("initialise state file %s: %w", path, err)
	}
	return b, nil
}

// errNewerSchema is a file written by a later release: not corruption, left alone.
type errNewerSchema struct{ version string }

func (e errNewerSchema) Error() string {
	return fmt.Sprintf("state schema version %s is newer than this runner supports (%s): upgrade the runner, or move the file away", e.version, schemaVersion)
}

// initialise creates the top bucket, checks the schema version and migrates version 1.
// A file already at the current version is not written to.
func (s *Bolt) initialise() error {
	version, exists := "", false
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketOwners); b != nil {
			version, exists = string(b.Get(keyVersion)), true
		}
		return nil
	})
	if err != nil || (exists && version == schemaVersion) {
		return err
	}
	if version != "" && version != "1" {
		return errNewerSchema{version}
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketOwners)
		if err != nil {
			return err
		}
		if version == "1" {
			if err := migrateV1(b); err != nil {
				return err
			}
		}
		return b.Put(keyVersion, []byte(schemaVersion))
	})
}

// migrateV1 turns each owner's pending count into one intent. The run that made it is
// unknown, so a scaler never counts it as capacity that is coming (see taskscaler).
func migrateV1(owners *bolt.Bucket) error {
	return owners.ForEachBucket(func(name []byte) error {
		mb := owners.Bucket(name).Bucket(bucketMeta)
		if mb == nil {
			return nil
		}
		v := mb.Get(keyPendingV1)
		if v == nil {
			return nil
		}
		var p struct {
			Count int       `json:"count"`
			Since time.Time `json:"since"`
		}
		if err := json.Unmarshal(v, &p); err != nil {
			return corrupt("owner %q: decode pending creations (schema 1): %v", name, err)
		}
		var intents []Intent
		if p.Count > 0 {
			intents = append(intents, Intent{ID: "schema-1/pending", Count: p.Count, At: p.Since,
				Why: "pending creations recorded by a runner with state schema 1"})
		}
		raw, err := json.Marshal(intents)
		if err != nil {
			return err
		}
		if err := mb.Put(keyIntents, raw); err != nil {
			return err
		}
		return mb.Delete(keyPendingV1)
	})
}

// verify decodes every record, so that damage inside a record is found now and not in
// the middle of a restart's adoption.
func (s *Bolt) verify() error {
	return s.db.View(func(tx *bolt.Tx) error {
		owners := tx.Bucket(bucketOwners)
		if owners == nil {
			return nil
		}
		return owners.ForEachBucket(func(name []byte) error {
			_, err := readOwner(owners.Bucket(name))
			if err != nil {
				return corrupt("owner %q: %v", name, err)
			}
			return nil
		})
	})
}

func readOwner(ob *bolt.Bucket) (Snapshot, error) {
	var snap Snapshot
	for _, name := range [][]byte{bucketInstances, bucketMeta} {
		if ob.Bucket(name) == nil && ob.Get(name) != nil {
			return Snapshot{}, fmt.Errorf("%q is a value, not a bucket", name)
		}
	}
	if ib := ob.Bucket(bucketInstances); ib != nil {
		err := ib.ForEach(func(k, v []byte) error {
			var in Instance
			if err := json.Unmarshal(v, &in); err != nil {
				return fmt.Errorf("decode instance %q: %w", k, err)
			}
			snap.Instances = append(snap.Instances, in)
			return nil
		})
		if err != nil {
			return Snapshot{}, err
		}
	}
	if mb := ob.Bucket(bucketMeta); mb != nil {
		if v := mb.Get(keyIntents); v != nil {
			if err := json.Unmarshal(v, &snap.Intents); err != nil {
				return Snapshot{}, fmt.Errorf("decode creation intents: %w", err)
			}
		}
		if v := mb.Get(keyDemand); v != nil {
			snap.Demand = new(Demand)
			if err := json.Unmarshal(v, snap.Demand); err != nil {
				return Snapshot{}, fmt.Errorf("decode demand history: %w", err)
			}
		}
	}
	return snap, nil
}

// Path returns the file's path.
func (s *Bolt) Path() string { return s.path }

// Warning is non-empty when OpenBolt found the file corrupt, moved it aside and
// started a new one; it names both paths. The scaler logs it and shows it in status.
func (s *Bolt) Warning() string { return s.warning }

// InventoryLost reports that OpenBolt found the file corrupt, moved it aside and
// started with an empty inventory (state.InventoryLoss).
func (s *Bolt) InventoryLost() bool { return s.lost }

// run runs one transaction under guard; a panic inside bbolt marks the store broken,
// since its locks and pages can no longer be trusted.
func (s *Bolt) run(fn func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return s.broken
	}
	err := guard(fn)
	var ce *corruptError
	if errors.As(err, &ce) {
		s.broken = fmt.Errorf("%w; restart the runner to move the file aside and start a new one", err)
		return s.broken
	}
	return err
}

// Load returns owner's records, sorted by ID.
func (s *Bolt) Load(_ context.Context, owner string) (Snapshot, error) {
	var snap Snapshot
	err := s.run(func() error {
		return s.db.View(func(tx *bolt.Tx) error {
			ob := tx.Bucket(bucketOwners).Bucket([]byte(owner))
			if ob == nil {
				return nil
			}
			var err error
			snap, err = readOwner(ob)
			return err
		})
	})
	if err != nil {
		return Snapshot{}, fmt.Errorf("load state of %q from %s: %w", owner, s.path, err)
	}
	return snap, nil
}

// Apply writes b in one transaction.
func (s *Bolt) Apply(_ context.Context, owner string, b Batch) error {
	if b.Empty() {
		return nil
	}
	err := s.run(func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			ob, err := tx.Bucket(bucketOwners).CreateBucketIfNotExists([]byte(owner))
			if err != nil {
				return err
			}
			ib, err := ob.CreateBucketIfNotExists(bucketInstances)
			if err != nil {
				return err
			}
			for _, in := range b.Put {
				v, err := json.Marshal(in)
				if err != nil {
					return err
				}
				if err := ib.Put([]byte(in.ID), v); err != nil {
					return err
				}
			}
			for _, id := range b.Delete {
				if err := ib.Delete([]byte(id)); err != nil {
					return err
				}
			}
			meta := func(key []byte, val any) error {
				mb, err := ob.CreateBucketIfNotExists(bucketMeta)
				if err != nil {
					return err
				}
				v, err := json.Marshal(val)
				if err != nil {
					return err
				}
				return mb.Put(key, v)
			}
			if b.SetIntents {
				if err := meta(keyIntents, b.Intents); err != nil {
					return err
				}
			}
			if b.Demand != nil {
				if err := meta(keyDemand, b.Demand); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("write state of %q to %s: %w", owner, s.path, err)
	}
	return nil
}

// Close closes the file. A store broken by a bbolt panic is left as it is: its locks
// cannot be trusted, and the process releases the file when it exits.
func (s *Bolt) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return nil
	}
	return s.db.Close()
}
