package oci

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"

	"github.com/flotilla-ci/flotilla/host/internal/registrytest"
	"github.com/flotilla-ci/flotilla/host/plugins"
)

var hostPlatform = ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}

// fixture is a registry with plugins pushed, plus keys and options to install them.
type fixture struct {
	reg      *registrytest.Registry
	defaults plugins.Defaults
	remote   RemoteOptions
	key      ed25519.PrivateKey // trusted
	other    ed25519.PrivateKey // not trusted
	trusted  []ed25519.PublicKey
	work     string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	reg := registrytest.Start(t)
	f := &fixture{reg: reg, work: t.TempDir(), defaults: plugins.Defaults{Registry: reg.Addr, Repository: "flotilla/plugins"}}
	store := credentials.NewMemoryStore()
	if err := store.Put(context.Background(), reg.Addr, auth.Credential{Username: reg.User, Password: reg.Password}); err != nil {
		t.Fatal(err)
	}
	f.remote = RemoteOptions{PlainHTTP: true, Credentials: store, HTTPClient: http.DefaultClient}
	f.key = f.genKey(t, "trusted")
	f.other = f.genKey(t, "other")
	f.trusted = []ed25519.PublicKey{f.key.Public().(ed25519.PublicKey)}
	return f
}

func (f *fixture) genKey(t *testing.T, name string) ed25519.PrivateKey {
	t.Helper()
	p := filepath.Join(f.work, name+".pem")
	if _, err := GenerateKey(p); err != nil {
		t.Fatal(err)
	}
	k, err := LoadPrivateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := LoadPublicKeys([]string{p + ".pub"})
	if err != nil || !keys[0].Equal(k.Public()) {
		t.Fatalf("LoadPublicKeys(%s.pub) = %v, %v; want the generated key", p, keys, err)
	}
	return k
}

func binaryContent(name, version string, p ocispec.Platform) []byte {
	return []byte(fmt.Sprintf("#!/bin/sh\necho %s %s %s\n", name, version, platformString(p)))
}

// pkg packages name:version for the platforms into a fresh layout and returns its path.
func (f *fixture) pkg(t *testing.T, name, version string, key ed25519.PrivateKey, plats ...ocispec.Platform) string {
	t.Helper()
	if len(plats) == 0 {
		plats = []ocispec.Platform{hostPlatform, {OS: "windows", Architecture: "amd64"}}
	}
	var bins []Binary
	for _, p := range plats {
		path := filepath.Join(f.work, "bin", name, version, platformString(p), "plugin")
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, binaryContent(name, version, p), 0o755); err != nil {
			t.Fatal(err)
		}
		bins = append(bins, Binary{Platform: p, Path: path})
	}
	out := filepath.Join(f.work, "layouts", name+"-"+version)
	if _, err := Package(context.Background(), PackageOptions{Name: name, Version: version, Binaries: bins, Key: key, Output: out}); err != nil {
		t.Fatalf("Package %s:%s: %v", name, version, err)
	}
	return out
}

// publish packages and pushes name:version to the registry.
func (f *fixture) publish(t *testing.T, name, version string, key ed25519.PrivateKey, plats ...ocispec.Platform) {
	t.Helper()
	layout := f.pkg(t, name, version, key, plats...)
	ref, _, err := Push(context.Background(), layout, name, f.defaults, f.remote)
	if err != nil {
		t.Fatalf("Push %s:%s: %v", name, version, err)
	}
	if want := f.reg.Addr + "/flotilla/plugins/" + name + ":" + version; ref != want {
		t.Fatalf("Push returned %q, want %q", ref, want)
	}
}

func (f *fixture) installer(root string) *Installer {
	return &Installer{Root: root, Defaults: f.defaults, TrustedKeys: f.trusted, Remote: f.remote, Now: func() time.Time { return time.Unix(1e9, 0) }}
}

// snapshot maps every path under root to its content, to prove a failed install
// changed nothing (no partial version, no leftover temp dir).
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			m[p] = "dir"
			return nil
		}
		b, _ := os.ReadFile(p)
		m[p] = string(b)
		return nil
	})
	return m
}

func sameSnapshot(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, v := range after {
		if bv, ok := before[p]; !ok {
			t.Errorf("failed install left %s", p)
		} else if bv != v {
			t.Errorf("failed install changed %s", p)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("failed install removed %s", p)
		}
	}
}

func TestRegistryInstall(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, v := range []string{"1.0.0", "1.1.0", "1.2.0", "2.0.0", "2.1.0-rc.1"} {
		f.publish(t, "aws", v, f.key)
	}

	t.Run("constraints", func(t *testing.T) {
		tests := []struct{ value, want string }{
			{"aws", "2.0.0"},
			{"aws:latest", "2.0.0"},
			{"aws:1", "1.2.0"},
			{"aws:1.1", "1.1.0"},
			{"aws:1.0.0", "1.0.0"},
			{"aws:2.1.0-rc.1", "2.1.0-rc.1"},
			{"flotilla/plugins/aws:1", "1.2.0"},
			{f.reg.Addr + "/flotilla/plugins/aws:1.1", "1.1.0"},
		}
		for _, tt := range tests {
			t.Run(tt.value, func(t *testing.T) {
				root := t.TempDir()
				var progress bytes.Buffer
				in := f.installer(root)
				in.Progress = &progress
				res, err := in.Install(ctx, tt.value)
				if err != nil {
					t.Fatalf("Install(%q): %v", tt.value, err)
				}
				if res.Version != tt.want || res.AlreadyInstalled {
					t.Fatalf("Install(%q) = version %q already %v, want %q freshly", tt.value, res.Version, res.AlreadyInstalled, tt.want)
				}
				got, err := os.ReadFile(res.Path)
				if err != nil || !bytes.Equal(got, binaryContent("aws", tt.want, hostPlatform)) {
					t.Fatalf("installed binary = %q, %v; want the %s build", got, err, platformString(hostPlatform))
				}
				if fi, _ := os.Stat(res.Path); fi.Mode().Perm()&0o100 == 0 {
					t.Errorf("installed binary mode %v is not executable", fi.Mode())
				}
				m := res.Metadata
				if !m.Signature.Verified || m.Signature.KeyID != KeyID(f.trusted[0]) || m.Origin != "registry" || m.Platform != platformString(hostPlatform) {
					t.Errorf("metadata = %+v", m)
				}
				if !strings.Contains(progress.String(), "downloaded "+f.reg.Addr+"/flotilla/plugins/aws:"+tt.want) {
					t.Errorf("progress output %q lacks the completion line", progress.String())
				}
				// Discovery finds exactly what was installed, with no PATH.
				r, err := plugins.Resolve(tt.value, plugins.Options{Root: root, Defaults: f.defaults, Path: []string{}})
				if err != nil || r.Path != res.Path || r.Metadata == nil || !r.Metadata.Signature.Verified {
					t.Fatalf("Resolve(%q) = %+v, %v; want %s", tt.value, r, err, res.Path)
				}
			})
		}
	})

	t.Run("idempotent reinstall", func(t *testing.T) {
		root := t.TempDir()
		first, err := f.installer(root).Install(ctx, "aws:1")
		if err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, root)
		for _, upgrade := range []bool{false, true} {
			in := f.installer(root)
			in.Upgrade = upgrade
			again, err := in.Install(ctx, "aws:1")
			if err != nil || !again.AlreadyInstalled || again.Path != first.Path {
				t.Fatalf("reinstall (upgrade=%v) = %+v, %v; want already installed at %s", upgrade, again, err, first.Path)
			}
		}
		sameSnapshot(t, before, snapshot(t, root))
	})

	t.Run("upgrade", func(t *testing.T) {
		root := t.TempDir()
		f.publish(t, "upg", "1.0.0", f.key)
		if r, err := f.installer(root).Install(ctx, "upg:1"); err != nil || r.Version != "1.0.0" {
			t.Fatalf("install = %+v, %v", r, err)
		}
		f.publish(t, "upg", "1.1.0", f.key)
		if r, err := f.installer(root).Install(ctx, "upg:1"); err != nil || r.Version != "1.0.0" || !r.AlreadyInstalled {
			t.Fatalf("install without --upgrade = %+v, %v; want 1.0.0 kept", r, err)
		}
		in := f.installer(root)
		in.Upgrade = true
		r, err := in.Install(ctx, "upg:1")
		if err != nil || r.Version != "1.1.0" || r.AlreadyInstalled {
			t.Fatalf("install --upgrade = %+v, %v; want 1.1.0", r, err)
		}
		got, _ := plugins.InstalledVersions(root, mustRef(t, "upg", f.defaults))
		if strings.Join(got, ",") != "1.1.0,1.0.0" {
			t.Fatalf("installed versions = %v; want both, the old one untouched", got)
		}
	})

	t.Run("upgrade replaces a moved tag", func(t *testing.T) {
		root := t.TempDir()
		f.publish(t, "moved", "1.0.0", f.key)
		first, err := f.installer(root).Install(ctx, "moved")
		if err != nil {
			t.Fatal(err)
		}
		// Republish 1.0.0 with other bytes (the tag now points at a new index).
		layout := f.pkg(t, "moved", "1.0.0", f.key, hostPlatform)
		if _, _, err := Push(ctx, layout, "moved", f.defaults, f.remote); err != nil {
			t.Fatal(err)
		}
		in := f.installer(root)
		in.Upgrade = true
		second, err := in.Install(ctx, "moved")
		if err != nil || second.AlreadyInstalled || second.Path != first.Path || second.Metadata.IndexDigest == first.Metadata.IndexDigest {
			t.Fatalf("upgrade of a moved tag = %+v, %v; want a fresh install over %s", second, err, first.Path)
		}
		m, err := plugins.ReadMetadata(filepath.Dir(second.Path))
		if err != nil || m.IndexDigest != second.Metadata.IndexDigest {
			t.Fatalf("metadata on disk = %+v, %v", m, err)
		}
		entries, _ := os.ReadDir(root)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("upgrade left %s in the root", e.Name())
			}
		}
	})

	t.Run("file path needs no install", func(t *testing.T) {
		bin := writeTemp(t, []byte("#!/bin/sh\n"))
		r, err := f.installer(t.TempDir()).Install(ctx, bin)
		if err != nil || r.Path != bin || !r.AlreadyInstalled {
			t.Fatalf("Install(%s) = %+v, %v", bin, r, err)
		}
		if _, err := f.installer(t.TempDir()).Install(ctx, "/nonexistent/plugin"); !errors.Is(err, plugins.ErrPluginNotFound) {
			t.Fatalf("Install of a missing path = %v", err)
		}
	})

	t.Run("unsigned allowed only explicitly", func(t *testing.T) {
		f.publish(t, "nosig", "1.0.0", nil)
		root := t.TempDir()
		_, err := f.installer(root).Install(ctx, "nosig")
		if !errors.Is(err, ErrUnsigned) || !strings.Contains(err.Error(), "--allow-unsigned") {
			t.Fatalf("Install unsigned = %v; want ErrUnsigned naming --allow-unsigned", err)
		}
		in := f.installer(root)
		in.AllowUnsigned = true
		r, err := in.Install(ctx, "nosig")
		if err != nil || r.Metadata.Signature.Verified || !strings.Contains(r.Metadata.Signature.Note, "allow-unsigned") {
			t.Fatalf("Install --allow-unsigned = %+v, %v", r, err)
		}
	})

	t.Run("no trusted key", func(t *testing.T) {
		in := f.installer(t.TempDir())
		in.TrustedKeys = nil
		if _, err := in.Install(ctx, "aws"); !errors.Is(err, ErrNoTrustedKeys) {
			t.Fatalf("Install with no keys = %v; want ErrNoTrustedKeys", err)
		}
	})

	// Each failure starts from a good installed version of the same plugin and must
	// leave the root byte-for-byte as it was.
	failures := []struct {
		name    string
		plugin  string
		prepare func(t *testing.T) // publishes the bad version
		modify  func(in *Installer)
		value   string
		want    string
		is      error
	}{
		{name: "wrong platform", plugin: "plat",
			prepare: func(t *testing.T) {
				f.publish(t, "plat", "1.1.0", f.key, ocispec.Platform{OS: "plan9", Architecture: "386"})
			},
			want: "has no binary for " + platformString(hostPlatform) + " (available: plan9/386)"},
		{name: "tampered blob", plugin: "tamper",
			prepare: func(t *testing.T) {
				f.publish(t, "tamper", "1.1.0", f.key)
				sum := sha256.Sum256(binaryContent("tamper", "1.1.0", hostPlatform))
				p := f.reg.BlobPath("sha256:" + hex.EncodeToString(sum[:]))
				if err := os.WriteFile(p, bytes.ToUpper(binaryContent("tamper", "1.1.0", hostPlatform)), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: "verify binary digest"},
		{name: "untrusted signer", plugin: "untrusted",
			prepare: func(t *testing.T) { f.publish(t, "untrusted", "1.1.0", f.other) },
			want:    "is not trusted", is: ErrBadSignature},
		{name: "signature replayed for another version", plugin: "replay",
			prepare: func(t *testing.T) {
				layout := f.pkg(t, "replay", "1.1.0", nil)
				store := openLayoutRW(t, layout)
				idx, err := store.Resolve(ctx, "1.1.0")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := Sign(ctx, store, idx, "replay", "1.0.0", f.key); err != nil {
					t.Fatal(err)
				}
				if _, _, err := Push(ctx, layout, "replay", f.defaults, f.remote); err != nil {
					t.Fatal(err)
				}
			},
			want: "signs replay 1.0.0", is: ErrBadSignature},
		{name: "unsigned", plugin: "unsigned", prepare: func(t *testing.T) { f.publish(t, "unsigned", "1.1.0", nil) }, is: ErrUnsigned},
		{name: "missing tag", plugin: "aws", value: "aws:9", want: `matches "9" (available: 2.1.0-rc.1, 2.0.0, 1.2.0, 1.1.0, 1.0.0)`},
		{name: "registry down", plugin: "aws", value: "127.0.0.1:1/flotilla/plugins/aws", want: "connection refused"},
		{name: "wrong credentials", plugin: "aws",
			modify: func(in *Installer) {
				s := credentials.NewMemoryStore()
				s.Put(ctx, f.reg.Addr, auth.Credential{Username: f.reg.User, Password: "wrong"})
				in.Remote.Credentials = s
			},
			want: "401"},
		{name: "no credentials", plugin: "aws", modify: func(in *Installer) { in.Remote.Credentials = credentials.NewMemoryStore() }, want: "credential not found"},
	}
	for _, tt := range failures {
		t.Run("fails: "+tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.plugin != "aws" {
				f.publish(t, tt.plugin, "1.0.0", f.key)
			}
			if _, err := f.installer(root).Install(ctx, tt.plugin+":1.0.0"); err != nil {
				t.Fatalf("installing the good version: %v", err)
			}
			if tt.prepare != nil {
				tt.prepare(t)
			}
			before := snapshot(t, root)
			in := f.installer(root)
			in.Upgrade = true
			if tt.modify != nil {
				tt.modify(in)
			}
			value := tt.value
			if value == "" {
				value = tt.plugin + ":1"
			}
			_, err := in.Install(ctx, value)
			if err == nil {
				t.Fatalf("Install(%q) succeeded", value)
			}
			if !strings.Contains(err.Error(), tt.want) || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("Install(%q) = %v; want %q (%v)", value, err, tt.want, tt.is)
			}
			sameSnapshot(t, before, snapshot(t, root))
			r, err := plugins.Resolve(tt.plugin, plugins.Options{Root: root, Defaults: f.defaults, Path: []string{}})
			if err != nil || r.Version != "1.0.0" {
				t.Fatalf("after the failure Resolve = %+v, %v; want the good 1.0.0", r, err)
			}
		})
	}

	t.Run("login", func(t *testing.T) {
		dockerDir := t.TempDir()
		t.Setenv("DOCKER_CONFIG", dockerDir)
		cfgPath := filepath.Join(dockerDir, "config.json")
		o := RemoteOptions{PlainHTTP: true, HTTPClient: http.DefaultClient}
		if _, err := Login(ctx, f.reg.Addr, f.reg.User, "wrong", o); err == nil || !strings.Contains(err.Error(), "401") {
			t.Fatalf("Login with a wrong password = %v; want 401", err)
		}
		if _, err := os.Stat(cfgPath); err == nil {
			t.Fatal("failed login wrote credentials")
		}
		mech, err := Login(ctx, f.reg.Addr, f.reg.User, f.reg.Password, o)
		if err != nil || mech != "config file "+cfgPath {
			t.Fatalf("Login = %q, %v; want config file %s", mech, err, cfgPath)
		}
		b, _ := os.ReadFile(cfgPath)
		if !strings.Contains(string(b), `"auths"`) || !strings.Contains(string(b), f.reg.Addr) {
			t.Fatalf("config.json after login = %s", b)
		}
		// Install with no explicit store reads the Docker config just written.
		in := f.installer(t.TempDir())
		in.Remote = o
		if _, err := in.Install(ctx, "aws:1.0.0"); err != nil {
			t.Fatalf("Install with credentials from %s: %v", cfgPath, err)
		}
		// A configured credential helper is honoured: a real helper program on PATH
		// (the docker-credential-* protocol: "store" gets the JSON credential on
		// stdin, "get" prints it back) receives the credentials instead of the file.
		helperDir := t.TempDir()
		helper := "#!/bin/sh\ncase \"$1\" in\nstore) cat > " + helperDir + "/cred.json ;;\nget) cat " + helperDir + "/cred.json ;;\nerase) rm -f " + helperDir + "/cred.json ;;\nesac\n"
		if err := os.WriteFile(filepath.Join(helperDir, "docker-credential-flotillatest"), []byte(helper), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", helperDir+string(os.PathListSeparator)+os.Getenv("PATH"))
		os.WriteFile(cfgPath, []byte(`{"credHelpers":{"`+f.reg.Addr+`":"flotillatest"}}`), 0o600)
		mech, err = Login(ctx, f.reg.Addr, f.reg.User, f.reg.Password, o)
		if err != nil || mech != "credential helper docker-credential-flotillatest" {
			t.Fatalf("Login with credHelpers = %q, %v", mech, err)
		}
		stored, _ := os.ReadFile(filepath.Join(helperDir, "cred.json"))
		if !strings.Contains(string(stored), f.reg.Password) {
			t.Fatalf("helper received %q; want the credential", stored)
		}
		if b, _ := os.ReadFile(cfgPath); strings.Contains(string(b), f.reg.Password) || strings.Contains(string(b), "auth\"") {
			t.Fatalf("credentials leaked into config.json: %s", b)
		}
		in = f.installer(t.TempDir())
		in.Remote = o
		if _, err := in.Install(ctx, "aws:1.1.0"); err != nil {
			t.Fatalf("Install with credentials from the helper: %v", err)
		}
	})

	t.Run("sign remote", func(t *testing.T) {
		f.publish(t, "late", "1.0.0", nil)
		if _, _, err := SignRemote(ctx, "late:1.0.0", f.defaults, f.key, f.remote); err != nil {
			t.Fatal(err)
		}
		r, err := f.installer(t.TempDir()).Install(ctx, "late")
		if err != nil || !r.Metadata.Signature.Verified {
			t.Fatalf("install after SignRemote = %+v, %v", r, err)
		}
	})
}

func mustRef(t *testing.T, s string, d plugins.Defaults) plugins.Reference {
	t.Helper()
	r, err := plugins.ParseReference(s, d)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
