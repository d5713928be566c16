package connector

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
)

// HostKeyStore keeps the host key first seen for each instance (trust on first use), so
// that a later connection to the same instance ID with a different key is refused.
type HostKeyStore interface {
	// Lookup returns the pinned key for the instance, or nil if none is pinned.
	Lookup(instance string) (ssh.PublicKey, error)
	// Pin records key for the instance, replacing any earlier pin.
	Pin(instance string, key ssh.PublicKey) error
	// Forget removes the instance's pin (the instance is gone).
	Forget(instance string) error
	// String describes where pins live, for error messages.
	String() string
}

// MemoryHostKeyStore is a HostKeyStore that lives as long as the process.
type MemoryHostKeyStore struct {
	mu   sync.Mutex
	keys map[string]ssh.PublicKey
}

// NewMemoryHostKeyStore returns an empty in-memory store.
func NewMemoryHostKeyStore() *MemoryHostKeyStore {
	return &MemoryHostKeyStore{keys: map[string]ssh.PublicKey{}}
}

// Lookup implements HostKeyStore.
func (s *MemoryHostKeyStore) Lookup(instance string) (ssh.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys[instance], nil
}

// Pin implements HostKeyStore.
func (s *MemoryHostKeyStore) Pin(instance string, key ssh.PublicKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[instance] = key
	return nil
}

// Forget implements HostKeyStore.
func (s *MemoryHostKeyStore) Forget(instance string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, instance)
	return nil
}

// String implements HostKeyStore.
func (s *MemoryHostKeyStore) String() string {
	return "the host's memory (restart the runner to clear it)"
}

// FileHostKeyStore is a HostKeyStore kept in a file, so that pins survive a restart of
// the host. Each line is "<instance-id> <key in authorized_keys form>"; the file is
// rewritten atomically (temporary file + rename) on every change. One process should own
// a file at a time.
type FileHostKeyStore struct {
	path string
	mu   sync.Mutex
	keys map[string]ssh.PublicKey
}

// OpenFileHostKeyStore loads the store at path; a missing file is an empty store. A
// malformed line is an error naming the file and line.
func OpenFileHostKeyStore(path string) (*FileHostKeyStore, error) {
	s := &FileHostKeyStore{path: path, keys: map[string]ssh.PublicKey{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open host key store: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		id, rest, ok := strings.Cut(text, " ")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want \"<instance-id> <key-type> <base64-key>\", got %q; fix or delete the line", path, line, text)
		}
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(rest))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: instance %q: %v; fix or delete the line", path, line, id, err)
		}
		s.keys[id] = key
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read host key store %s: %w", path, err)
	}
	return s, nil
}

// Lookup implements HostKeyStore.
func (s *FileHostKeyStore) Lookup(instance string) (ssh.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.keys[instance], nil
}

// Pin implements HostKeyStore.
func (s *FileHostKeyStore) Pin(instance string, key ssh.PublicKey) error {
	if strings.ContainsAny(instance, " \t\r\n") || instance == "" || strings.HasPrefix(instance, "#") {
		return fmt.Errorf("pin host key: instance ID %q cannot be stored in %s (empty, whitespace or leading #)", instance, s.path)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.keys[instance]
	s.keys[instance] = key
	if err := s.save(); err != nil {
		if old == nil {
			delete(s.keys, instance)
		} else {
			s.keys[instance] = old
		}
		return err
	}
	return nil
}

// Forget implements HostKeyStore.
func (s *FileHostKeyStore) Forget(instance string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.keys[instance]
	if !ok {
		return nil
	}
	delete(s.keys, instance)
	if err := s.save(); err != nil {
		s.keys[instance] = old
		return err
	}
	return nil
}

// String implements HostKeyStore.
func (s *FileHostKeyStore) String() string { return s.path }

func (s *FileHostKeyStore) save() error {
	ids := make([]string, 0, len(s.keys))
	for id := range s.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b bytes.Buffer
	b.WriteString("# Flotilla: SSH host keys pinned on first use, one instance per line.\n")
	b.WriteString("# Delete an instance's line if it was legitimately re-created with a new key.\n")
	for _, id := range ids {
		b.WriteString(id + " ")
		b.Write(ssh.MarshalAuthorizedKey(s.keys[id])) // ends with "\n"
	}
	dir := filepath.Dir(s.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save host key store: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".hostkeys-*")
	if err != nil {
		return fmt.Errorf("save host key store: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b.Bytes()); err != nil {
		tmp.Close()
		return fmt.Errorf("save host key store %s: %w", s.path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save host key store %s: %w", s.path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save host key store %s: %w", s.path, err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("save host key store %s: %w", s.path, err)
	}
	return nil
}

// hostKeyVerifier builds the callback for one dial. It also returns the host key
// algorithms to ask for when the expected key is known, so that a server with several
// host keys presents the one we can check.
type hostKeyVerifier struct {
	instance string
	addr     string
	want     ssh.PublicKey
	pinned   bool
	store    HostKeyStore
	failed   error // set when the callback rejected the key
}

func newHostKeyVerifier(instance, addr string, reported []byte, store HostKeyStore) (*hostKeyVerifier, error) {
	v := &hostKeyVerifier{instance: instance, addr: addr, store: store}
	if len(bytes.TrimSpace(reported)) > 0 {
		key, _, _, _, err := ssh.ParseAuthorizedKey(reported)
		if err != nil {
			return nil, fmt.Errorf("the plugin reported a host key that cannot be parsed (%v); it must be in authorized_keys form (\"ssh-ed25519 AAAA…\")", err)
		}
		v.want = key
		return v, nil
	}
	key, err := store.Lookup(instance)
	if err != nil {
		return nil, fmt.Errorf("look up pinned host key: %w", err)
	}
	v.want, v.pinned = key, key != nil
	return v, nil
}

func (v *hostKeyVerifier) algorithms() []string {
	if v.want == nil {
		return nil
	}
	switch v.want.Type() {
	case ssh.KeyAlgoRSA:
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521:
		return []string{v.want.Type()}
	}
	return nil
}

func (v *hostKeyVerifier) check(_ string, _ net.Addr, key ssh.PublicKey) error {
	if v.want != nil {
		if bytes.Equal(v.want.Marshal(), key.Marshal()) {
			return nil
		}
		v.failed = &HostKeyError{Instance: v.instance, Addr: v.addr, Want: v.want, Got: key, Pinned: v.pinned, Store: v.store.String()}
		return v.failed
	}
	if err := v.store.Pin(v.instance, key); err != nil {
		v.failed = err
		return err
	}
	return nil
}
