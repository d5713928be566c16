package oci

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content/oci"

	"github.com/flotilla-ci/flotilla/host/plugins"
)

func openLayoutRW(t *testing.T, dir string) *oci.Store {
	t.Helper()
	s, err := oci.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// offlineFixture is a fixture without a registry: packaging and offline installs
// need none.
func offlineFixture(t *testing.T) *fixture {
	f := &fixture{work: t.TempDir(), defaults: plugins.Defaults{Registry: "registry.example", Repository: "plugins"}}
	f.key = f.genKey(t, "trusted")
	f.other = f.genKey(t, "other")
	f.trusted = []ed25519.PublicKey{f.key.Public().(ed25519.PublicKey)}
	return f
}

func TestOfflineInstall(t *testing.T) {
	f := offlineFixture(t)
	ctx := context.Background()
	layout := f.pkg(t, "aws", "1.2.0", f.key)
	// A second version in the same layout: offline sources can hold several.
	if _, err := Package(ctx, PackageOptions{Name: "aws", Version: "1.3.0", Key: f.key, Output: layout,
		Binaries: []Binary{{Platform: hostPlatform, Path: writeTemp(t, binaryContent("aws", "1.3.0", hostPlatform))}}}); err != nil {
		t.Fatal(err)
	}
	tarball := filepath.Join(f.work, "aws.tar")
	if _, err := Package(ctx, PackageOptions{Name: "aws", Version: "1.2.0", Key: f.key, Output: tarball,
		Binaries: []Binary{{Platform: hostPlatform, Path: writeTemp(t, binaryContent("aws", "1.2.0", hostPlatform))}}}); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(f.work, "bundle")
	os.MkdirAll(bundle, 0o755)
	copyFile(t, tarball, filepath.Join(bundle, "aws.tar"))

	tests := []struct {
		name, offline, value, want string
	}{
		{"layout dir picks latest", layout, "aws", "1.3.0"},
		{"layout dir with constraint", layout, "aws:1.2", "1.2.0"},
		{"tarball", tarball, "aws", "1.2.0"},
		{"directory of <name>.tar", bundle, "aws:1", "1.2.0"},
		{"full reference from another registry", tarball, "mirror.example/x/aws:1.2.0", "1.2.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			in := &Installer{Root: root, Defaults: f.defaults, TrustedKeys: f.trusted, Offline: tt.offline}
			r, err := in.Install(ctx, tt.value)
			if err != nil {
				t.Fatalf("Install(%q) offline from %s: %v", tt.value, tt.offline, err)
			}
			got, _ := os.ReadFile(r.Path)
			if r.Version != tt.want || !bytes.Equal(got, binaryContent("aws", tt.want, hostPlatform)) || !r.Metadata.Signature.Verified {
				t.Fatalf("Install = %+v (binary %q); want %s verified", r, got, tt.want)
			}
			if !strings.HasPrefix(r.Metadata.Origin, "offline:") {
				t.Errorf("Origin = %q", r.Metadata.Origin)
			}
			if _, err := plugins.Resolve(tt.value, plugins.Options{Root: root, Defaults: f.defaults, Path: []string{}}); err != nil {
				t.Errorf("Resolve after offline install: %v", err)
			}
		})
	}

	t.Run("tampered layout blob", func(t *testing.T) {
		bad := f.pkg(t, "gcp", "1.0.0", f.key)
		sum := sha256.Sum256(binaryContent("gcp", "1.0.0", hostPlatform))
		blob := filepath.Join(bad, "blobs", "sha256", hex.EncodeToString(sum[:]))
		if err := os.WriteFile(blob, bytes.ToUpper(binaryContent("gcp", "1.0.0", hostPlatform)), 0o644); err != nil {
			t.Fatal(err)
		}
		root := t.TempDir()
		_, err := (&Installer{Root: root, TrustedKeys: f.trusted, Offline: bad}).Install(ctx, "gcp")
		if err == nil || !strings.Contains(err.Error(), "verify binary digest sha256:"+hex.EncodeToString(sum[:])) {
			t.Fatalf("Install from tampered layout = %v; want a digest error", err)
		}
		if entries, _ := os.ReadDir(root); len(entries) != 0 {
			t.Fatalf("tampered install left %d entries in the root", len(entries))
		}
	})

	t.Run("layout of another plugin", func(t *testing.T) {
		_, err := (&Installer{Root: t.TempDir(), TrustedKeys: f.trusted, AllowUnsigned: true, Offline: tarball}).Install(ctx, "azure")
		if err == nil || !strings.Contains(err.Error(), `artifact is plugin "aws", not "azure"`) {
			t.Fatalf("Install azure from an aws layout = %v", err)
		}
	})

	t.Run("missing offline source", func(t *testing.T) {
		_, err := (&Installer{Root: t.TempDir(), Offline: bundle}).Install(ctx, "azure")
		if err == nil || !strings.Contains(err.Error(), "no OCI layout for \"azure\"") {
			t.Fatalf("Install with no azure layout = %v", err)
		}
	})
}

func TestPackageReproducibleAndValidated(t *testing.T) {
	f := offlineFixture(t)
	ctx := context.Background()
	bin := writeTemp(t, []byte("x"))
	mk := func(out string) ocispec.Descriptor {
		d, err := Package(ctx, PackageOptions{Name: "aws", Version: "1.0.0", Key: f.key, Output: out,
			Binaries: []Binary{{Platform: hostPlatform, Path: bin}, {Platform: ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, Path: bin}}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	a, b := mk(filepath.Join(f.work, "a")), mk(filepath.Join(f.work, "b.tar"))
	if a.Digest != b.Digest {
		t.Fatalf("same inputs packaged to %s and %s; want one digest", a.Digest, b.Digest)
	}
	bad := []struct {
		opts PackageOptions
		want string
	}{
		{PackageOptions{Name: "AWS", Version: "1.0.0", Binaries: []Binary{{Platform: hostPlatform, Path: bin}}}, "--name"},
		{PackageOptions{Name: "aws", Version: "v1.0.0", Binaries: []Binary{{Platform: hostPlatform, Path: bin}}}, "--version"},
		{PackageOptions{Name: "aws", Version: "1.0.0"}, "no binaries"},
		{PackageOptions{Name: "aws", Version: "1.0.0", Binaries: []Binary{{Platform: hostPlatform, Path: bin}, {Platform: hostPlatform, Path: bin}}}, "two binaries"},
	}
	for _, tt := range bad {
		tt.opts.Output = filepath.Join(t.TempDir(), "out")
		if _, err := Package(ctx, tt.opts); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Package(%+v) = %v; want %q", tt.opts, err, tt.want)
		}
	}
}

func TestBinariesFromDist(t *testing.T) {
	dist := t.TempDir()
	for _, p := range []string{"linux/amd64/plugin", "linux/armv7/plugin", "windows/amd64/plugin.exe", "darwin/arm64/README"} {
		os.MkdirAll(filepath.Join(dist, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dist, p), []byte("b"), 0o755)
	}
	bins, err := BinariesFromDist(dist)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range bins {
		got = append(got, platformString(b.Platform))
	}
	if strings.Join(got, " ") != "linux/amd64 linux/arm/v7 windows/amd64" {
		t.Fatalf("BinariesFromDist = %v", got)
	}
	if _, err := BinariesFromDist(t.TempDir()); err == nil {
		t.Fatal("empty dist dir accepted")
	}
}

func TestReadPassword(t *testing.T) {
	for in, want := range map[string]string{"pw\n": "pw", "pw\r\n": "pw", "pw": "pw", "pw\n\n": "pw\n", "p w\r": "p w"} {
		if got, _ := ReadPassword(strings.NewReader(in)); got != want {
			t.Errorf("ReadPassword(%q) = %q, want %q", in, got, want)
		}
	}
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "plugin")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
