// Package registrytest starts a real OCI registry (Debian's docker-registry, the CNCF
// distribution server) on 127.0.0.1 with htpasswd basic auth, for tests of plugin
// packaging and installation and of private image pulls.
package registrytest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// Binary is where Debian installs the registry.
const Binary = "/usr/bin/docker-registry"

// Registry is a running registry.
type Registry struct {
	// Addr is host:port, usable as a reference's registry part.
	Addr string
	// Storage is the registry's filesystem root (for tampering with blobs).
	Storage string
	// User and Password are the only valid credentials.
	User, Password string
}

// Start runs a registry for the duration of the test, or skips the test when the
// registry or htpasswd (apache2-utils) is not installed.
func Start(t testing.TB) *Registry {
	t.Helper()
	bin := Binary
	if _, err := os.Stat(bin); err != nil {
		p, lerr := exec.LookPath("docker-registry")
		if lerr != nil {
			t.Skipf("docker-registry not installed (apt-get install docker-registry): %v", err)
		}
		bin = p
	}
	htpasswd, err := exec.LookPath("htpasswd")
	if err != nil {
		t.Skip("htpasswd not installed (apt-get install apache2-utils)")
	}
	r := &Registry{Storage: t.TempDir(), User: "flotilla", Password: "s3cret-pass"}
	dir := t.TempDir()
	out, err := exec.Command(htpasswd, "-Bbn", r.User, r.Password).Output()
	if err != nil {
		t.Fatalf("htpasswd -Bbn: %v", err)
	}
	pwFile := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(pwFile, out, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.Addr = l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: registrytest-secret
auth:
  htpasswd:
    realm: registrytest
    path: %s
`, r.Storage, r.Addr, pwFile)
	cfgFile := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", cfgFile)
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", bin, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// Ready when /v2/ answers (401 without credentials).
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + r.Addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return r
			}
		}
		select {
		case <-done:
			t.Fatalf("docker-registry exited: %s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s not ready: %v; logs: %s", r.Addr, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BlobPath is the file holding a blob (digest "sha256:<hex>") in the registry's storage.
func (r *Registry) BlobPath(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return filepath.Join(r.Storage, "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
}
