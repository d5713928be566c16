package state

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Bucket layout: owners/<owner>/instances/<id> = JSON Instance, and
// owners/<owner>/meta/pending = JSON Pending. A version key lets a later release
// migrate the layout.
var (
	bucketOwners    = []byte("owners")
	bucketInstances = []byte("instances")
	bucketMeta      = []byte("meta")
	keyPending      = []byte("pending")
	keyVersion      = []byte("version")
)

const schemaVersion = "1"

// Bolt is a Store in a bbolt file. Every Apply is one fsynced transaction.
type Bolt struct {
	db   *bolt.DB
	path string
}

// OpenBolt opens (creating if needed) the inventory file at path. It waits at most
// timeout for the file lock, which another running host may hold.
func OpenBolt(path string, timeout time.Duration) (*Bolt, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory for %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("open state file %s (is another runner using it?): %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketOwners)
		if err != nil {
			return err
		}
		if v := b.Get(keyVersion); v != nil && string(v) != schemaVersion {
			return fmt.Errorf("state schema version %s is not supported (want %s)", v, schemaVersion)
		}
		return b.Put(keyVersion, []byte(schemaVersion))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise state file %s: %w", path, err)
	}
	return &Bolt{db: db, path: path}, nil
}

// Path returns the file's path.
func (s *Bolt) Path() string { return s.path }

// Load returns owner's records, sorted by ID.
func (s *Bolt) Load(_ context.Context, owner string) (Snapshot, error) {
	var snap Snapshot
	err := s.db.View(func(tx *bolt.Tx) error {
		ob := tx.Bucket(bucketOwners).Bucket([]byte(owner))
		if ob == nil {
			return nil
		}
		if ib := ob.Bucket(bucketInstances); ib != nil {
			err := ib.ForEach(func(k, v []byte) error {
				var in Instance
				if err := json.Unmarshal(v, &in); err != nil {
					return fmt.Errorf("decode instance %s: %w", k, err)
				}
				snap.Instances = append(snap.Instances, in)
				return nil
			})
			if err != nil {
				return err
			}
		}
		if mb := ob.Bucket(bucketMeta); mb != nil {
			if v := mb.Get(keyPending); v != nil {
				if err := json.Unmarshal(v, &snap.Pending); err != nil {
					return fmt.Errorf("decode pending creations: %w", err)
				}
			}
		}
		return nil
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
	err := s.db.Update(func(tx *bolt.Tx) error {
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
		if b.Pending != nil {
			mb, err := ob.CreateBucketIfNotExists(bucketMeta)
			if err != nil {
				return err
			}
			v, err := json.Marshal(b.Pending)
			if err != nil {
				return err
			}
			if err := mb.Put(keyPending, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write state of %q to %s: %w", owner, s.path, err)
	}
	return nil
}

// Close closes the file.
func (s *Bolt) Close() error { return s.db.Close() }
