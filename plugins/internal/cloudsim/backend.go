package cloudsim

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
)

// Endpoint is where a running VM serves SSH, when its backend serves anything.
type Endpoint struct {
	Host    string // e.g. 127.0.0.1
	Port    int
	HostKey string // authorized_keys form: "ssh-ed25519 AAAA…"
}

// BackendVM is what a Backend learns about a VM that has finished booting.
type BackendVM struct {
	ID    string
	Group string
	Index int // 1 for the first VM the cloud created
	cloud *Cloud
}

// KeyPushed reports whether key (authorized_keys form) was pushed for user on this VM
// with Cloud.PushSSHKey and is still valid. It must not be called while the Cloud is
// inside Backend.Start or Stop.
func (b BackendVM) KeyPushed(user, key string) bool {
	return b.cloud != nil && b.cloud.keyPushed(b.ID, user, key)
}

// Backend serves running VMs. Start is called when a VM turns running and Stop when a
// running VM starts terminating; both run with the Cloud locked, so they must be quick
// and must not call the Cloud (authentication callbacks later may, via KeyPushed).
type Backend interface {
	Start(vm BackendVM) (Endpoint, error)
	Stop(id string) error
}

// RecordBackend serves nothing: VMs are records with fake addresses.
type RecordBackend struct{}

// Start returns no endpoint, so the VM keeps its fake addresses.
func (*RecordBackend) Start(BackendVM) (Endpoint, error) { return Endpoint{}, nil }

// Stop does nothing.
func (*RecordBackend) Stop(string) error { return nil }

// SSHBackend makes every running VM a real SSH server on 127.0.0.1: exec sessions run
// `/bin/sh -c` as the test's user in the VM's own directory under Dir, with exit status
// and signals; keepalives are answered and direct-tcpip forwarding to loopback works.
// A client authenticates as User with one of AuthorizedKeys, or with a key pushed for
// the VM (Cloud.PushSSHKey), or with Password when it is set.
type SSHBackend struct {
	// Dir holds one working directory per VM (e.g. t.TempDir()).
	Dir string
	// User is the login name accepted; empty accepts any name.
	User string
	// AuthorizedKeys are the static client keys accepted (the "key pair" the group's
	// launch template names).
	AuthorizedKeys []ssh.PublicKey
	// Password, when set, is accepted too.
	Password string

	mu      sync.Mutex
	servers map[string]*vmServer
}

// NewClientKey returns a new ed25519 client key: its public half for AuthorizedKeys and
// its private half in OpenSSH PEM form for a connector configuration.
func NewClientKey() (ssh.PublicKey, []byte, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "cloudsim client")
	if err != nil {
		return nil, nil, fmt.Errorf("encode ed25519 key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, nil, fmt.Errorf("ed25519 signer: %w", err)
	}
	return signer.PublicKey(), pem.EncodeToMemory(block), nil
}

// Start starts the VM's SSH server on a free loopback port.
func (b *SSHBackend) Start(vm BackendVM) (Endpoint, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Endpoint{}, fmt.Errorf("vm %s: host key: %w", vm.ID, err)
	}
	hostKey, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return Endpoint{}, fmt.Errorf("vm %s: host key: %w", vm.ID, err)
	}
	dir := filepath.Join(b.Dir, vm.ID)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Endpoint{}, fmt.Errorf("vm %s: create work directory: %w", vm.ID, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return Endpoint{}, fmt.Errorf("vm %s: listen on 127.0.0.1: %w", vm.ID, err)
	}
	cfg := &ssh.ServerConfig{ServerVersion: "SSH-2.0-cloudsim"}
	cfg.AddHostKey(hostKey)
	cfg.PublicKeyCallback = func(md ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
		if b.User == "" || md.User() == b.User {
			for _, k := range b.AuthorizedKeys {
				if string(k.Marshal()) == string(key.Marshal()) {
					return &ssh.Permissions{}, nil
				}
			}
		}
		if vm.KeyPushed(md.User(), string(ssh.MarshalAuthorizedKey(key))) {
			return &ssh.Permissions{}, nil
		}
		return nil, fmt.Errorf("public key %s is not authorized for user %q", ssh.FingerprintSHA256(key), md.User())
	}
	if b.Password != "" {
		cfg.PasswordCallback = func(md ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if (b.User == "" || md.User() == b.User) && string(pw) == b.Password {
				return &ssh.Permissions{}, nil
			}
			return nil, fmt.Errorf("wrong user or password")
		}
	}
	s := &vmServer{ln: ln, cfg: cfg, dir: dir, conns: map[net.Conn]bool{}}
	go s.serve()
	b.mu.Lock()
	if b.servers == nil {
		b.servers = map[string]*vmServer{}
	}
	b.servers[vm.ID] = s
	b.mu.Unlock()
	port := ln.Addr().(*net.TCPAddr).Port
	return Endpoint{Host: "127.0.0.1", Port: port, HostKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKey.PublicKey())))}, nil
}

// Stop closes the VM's listener and every connection to it, killing its commands, as
// a terminated machine would.
func (b *SSHBackend) Stop(id string) error {
	b.mu.Lock()
	s := b.servers[id]
	delete(b.servers, id)
	b.mu.Unlock()
	if s == nil {
		return nil
	}
	s.close()
	return nil
}

// Addr returns the address of a running VM's server, for tests.
func (e Endpoint) Addr() string { return net.JoinHostPort(e.Host, strconv.Itoa(e.Port)) }

func trimKey(k string) string {
	f := strings.Fields(k)
	if len(f) >= 2 {
		return f[0] + " " + f[1]
	}
	return strings.TrimSpace(k)
}
