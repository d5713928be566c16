// Package vmtest gives tests a real guest image for the qemu backend (built offline
// from Debian packages and cached, see nesting/guestimage) and the SSH pieces to reach
// its VMs. Tests that cannot run VMs here skip with a one-line reason, or fail when
// FLOTILLA_REQUIRE_VM=1 (as .ci/run sets).
//
//	imagesDir, name := vmtest.Image(t)          // config images_dir, Create's image
//	authorized, signer := vmtest.Key(t)          // config authorized_key; client key
//	out, err := vmtest.Run(ctx, vm.Addr, signer, "git --version")
package vmtest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/nesting/guestimage"
)

// RequireEnv, when set to 1, turns "cannot run VMs here" into a test failure.
const RequireEnv = "FLOTILLA_REQUIRE_VM"

// User is the guest account the authorized key logs in to.
const User = "root"

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("VMs required (%s=1): %s", RequireEnv, msg)
	}
	t.Skip(msg)
}

// Require skips (or fails under RequireEnv) the test when QEMU is missing.
func Require(t testing.TB) {
	t.Helper()
	for _, c := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(c); err != nil {
			unavailable(t, "no %s (apt-get install qemu-system-x86 qemu-utils; .ci/run does)", c)
		}
	}
}

// Image returns an images directory (private to the test) holding the default guest
// image under name. The image is built once per recipe into the user's cache (minutes
// the first time, then instant) and shared by every test and process.
func Image(t testing.TB) (imagesDir, name string) {
	t.Helper()
	Require(t)
	buildOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		if dir, err := guestimage.Cached(); err == nil {
			buildDir = dir
			return
		}
		if err := guestimage.CheckTools(); err != nil {
			buildErr = err
			return
		}
		buildDir, buildErr = guestimage.Build(ctx, guestimage.Recipe{}, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	})
	if buildErr != nil {
		unavailable(t, "no guest image: %v", buildErr)
	}
	imagesDir = t.TempDir()
	if _, err := guestimage.Install(buildDir, imagesDir, guestimage.DefaultName); err != nil {
		t.Fatal(err)
	}
	return imagesDir, guestimage.DefaultName
}

// Key returns a new ed25519 key: its authorized_keys line and a signer of it.
func Key(t testing.TB) (authorized string, signer ssh.Signer) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err = ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return string(ssh.MarshalAuthorizedKey(signer.PublicKey())), signer
}

// KeyFile returns a new ed25519 key: its authorized_keys line and the path of its
// private key (OpenSSH format) in a directory of the test, for clients configured by
// file (fleeting-plugin-nesting's vm_ssh.key_file).
func KeyFile(t testing.TB) (authorized, path string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(t.TempDir(), "vm_key")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(ssh.MarshalAuthorizedKey(sshPub)), path
}

// Run connects to the guest at addr as User until its SSH server answers (or ctx
// ends), runs cmd and returns its standard output.
func Run(ctx context.Context, addr string, signer ssh.Signer, cmd string) (string, error) {
	cfg := &ssh.ClientConfig{User: User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second}
	var last error
	for {
		c, err := ssh.Dial("tcp", addr, cfg)
		if err == nil {
			defer c.Close()
			s, err := c.NewSession()
			if err != nil {
				return "", fmt.Errorf("ssh %s: %w", addr, err)
			}
			defer s.Close()
			var out, stderr bytes.Buffer
			s.Stdout, s.Stderr = &out, &stderr
			if err := s.Run(cmd); err != nil {
				return out.String(), fmt.Errorf("ssh %s %q: %w: %s", addr, cmd, err, stderr.String())
			}
			return out.String(), nil
		}
		last = err
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("ssh %s: no answer: %w (last: %v)", addr, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
