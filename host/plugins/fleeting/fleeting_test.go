package fleeting

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"

	"github.com/flotilla-ci/flotilla/host/internal/registrytest"
	"github.com/flotilla-ci/flotilla/host/plugins"
	"github.com/flotilla-ci/flotilla/host/plugins/oci"
)

func writeFile(t *testing.T, path, s string, mode os.FileMode) string {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestInstallAndList(t *testing.T) {
	reg := registrytest.Start(t)
	ctx := context.Background()
	work := t.TempDir()
	keyPath := filepath.Join(work, "key.pem")
	if _, err := oci.GenerateKey(keyPath); err != nil {
		t.Fatal(err)
	}
	key, err := oci.LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	store := credentials.NewMemoryStore()
	store.Put(ctx, reg.Addr, auth.Credential{Username: reg.User, Password: reg.Password})
	remote := oci.RemoteOptions{PlainHTTP: true, Credentials: store, HTTPClient: http.DefaultClient}
	defaults := plugins.Defaults{Registry: reg.Addr, Repository: "ci/plugins"}
	for _, v := range []string{"1.0.0", "1.1.0"} {
		bin := writeFile(t, filepath.Join(work, "bin", v), "#!/bin/sh\necho aws "+v+"\n", 0o755)
		layout := filepath.Join(work, "aws-"+v)
		if _, err := oci.Package(ctx, oci.PackageOptions{Name: "aws", Version: v, Key: key, Output: layout,
			Binaries: []oci.Binary{{Platform: ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}, Path: bin}}}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := oci.Push(ctx, layout, "aws", defaults, remote); err != nil {
			t.Fatal(err)
		}
	}
	pathDir := t.TempDir()
	pathPlugin := writeFile(t, filepath.Join(pathDir, "fleeting-plugin-hetzner"), "#!/bin/sh\n", 0o755)

	cfgPath := writeFile(t, filepath.Join(work, "config.toml"), fmt.Sprintf(`
concurrent = 4
[fleeting]
registry = %q
repository = "ci/plugins"
public_keys = [%q]

[[runners]]
  name = "docker-aws"
  executor = "docker-autoscaler"
  [runners.autoscaler]
    plugin = "aws:1"
    max_instances = 3

[[runners]]
  name = "shell"
  executor = "shell"

[[runners]]
  token = "glrt-abcdefghijkl"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
`, reg.Addr, keyPath+".pub"), 0o644)
	cfg, err := LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	env := func(string) string { return "" }
	installed := filepath.Join(root, reg.Addr, "ci", "plugins", "aws", "1.1.0", plugins.BinaryName())

	var stdout, stderr bytes.Buffer
	if err := Install(ctx, cfg, InstallOptions{Root: root, Remote: remote, Getenv: env}, &stdout, &stderr); err != nil {
		t.Fatalf("Install: %v\nstderr: %s", err, stderr.String())
	}
	want := "runner: docker-aws, plugin: aws:1, path: " + installed + "\n" +
		"runner: glrt-abc, plugin: local, path: (embedded)\n"
	if stdout.String() != want {
		t.Fatalf("install stdout =\n%s\nwant\n%s", stdout.String(), want)
	}
	if !strings.Contains(stderr.String(), "downloaded "+reg.Addr+"/ci/plugins/aws:1.1.0") {
		t.Errorf("install stderr lacks progress: %q", stderr.String())
	}

	// Idempotent: the same lines, nothing downloaded.
	stdout.Reset()
	stderr.Reset()
	if err := Install(ctx, cfg, InstallOptions{Root: root, Remote: remote, Getenv: env}, &stdout, &stderr); err != nil || stdout.String() != want || stderr.Len() != 0 {
		t.Fatalf("second Install = %v, stdout %q, stderr %q", err, stdout.String(), stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	if err := List(cfg, ListOptions{Root: root, Path: []string{pathDir}, Getenv: env}, &stdout, &stderr); err != nil {
		t.Fatalf("List: %v; stderr %s", err, stderr.String())
	}
	pub, _ := oci.LoadPublicKeys([]string{keyPath + ".pub"})
	wantList := "runner: docker-aws, plugin: aws:1, path: " + installed + ", version: 1.1.0, signature: verified (" + oci.KeyID(pub[0]) + ")\n" +
		"runner: glrt-abc, plugin: local, path: (embedded), version: built-in, signature: n/a (built into the runner)\n"
	if stdout.String() != wantList {
		t.Fatalf("list stdout =\n%s\nwant\n%s", stdout.String(), wantList)
	}

	// A runner whose plugin cannot be installed: error line on stderr, the others
	// still succeed, and the result is ErrFailed (exit 1).
	cfg.Runners = append(cfg.Runners,
		Runner{Name: "missing", Autoscaler: &Autoscaler{Plugin: "nothere"}},
		Runner{Name: "onpath", Autoscaler: &Autoscaler{Plugin: "hetzner"}})
	stdout.Reset()
	stderr.Reset()
	err = Install(ctx, cfg, InstallOptions{Root: root, Remote: remote, Getenv: env}, &stdout, &stderr)
	if !errors.Is(err, ErrFailed) {
		t.Fatalf("Install with a missing plugin = %v; want ErrFailed", err)
	}
	if !strings.HasPrefix(stderr.String(), "runner: missing, plugin: nothere, install/update error:: list versions of "+reg.Addr+"/ci/plugins/nothere") {
		t.Fatalf("stderr = %q", stderr.String())
	}
	if !strings.Contains(stdout.String(), "runner: docker-aws, plugin: aws:1, path: "+installed+"\n") {
		t.Fatalf("stdout = %q; the good runner must still be reported", stdout.String())
	}

	stdout.Reset()
	stderr.Reset()
	err = List(cfg, ListOptions{Root: root, Path: []string{pathDir}, Getenv: env}, &stdout, &stderr)
	if !errors.Is(err, ErrFailed) || !strings.HasPrefix(stderr.String(), `runner: missing, plugin: nothere, error: plugin not found: "nothere": looked in `) {
		t.Fatalf("List with a missing plugin = %v, stderr %q", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "runner: onpath, plugin: hetzner, path: "+pathPlugin+", version: unknown, signature: none") {
		t.Fatalf("list stdout = %q; want the PATH plugin", stdout.String())
	}
}

func TestInstallNothing(t *testing.T) {
	var stdout, stderr bytes.Buffer
	cfg := Config{Runners: []Runner{{Name: "shell"}}}
	if err := Install(context.Background(), cfg, InstallOptions{Root: t.TempDir()}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if stdout.Len() != 0 || stderr.String() != NoPluginsMessage+"\n" {
		t.Fatalf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
}

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, filepath.Join(dir, "config.toml"), "[[runners]]\nname = \"a\"\n[runners.autoscaler]\nplugin = 5\n", 0o644)
	_, err := LoadConfig(p)
	if err == nil || !strings.HasPrefix(err.Error(), p+":4:") {
		t.Fatalf("LoadConfig = %v; want %s:4:…", err, p)
	}
	if _, err := LoadConfig(filepath.Join(dir, "nope.toml")); err == nil || !strings.Contains(err.Error(), "read config") {
		t.Fatalf("LoadConfig missing = %v", err)
	}
}
