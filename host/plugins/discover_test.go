package plugins

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// installFake creates <root>/<registry>/<repo>/<name>/<version>/plugin.
func installFake(t *testing.T, root, repoPath, version string, mode os.FileMode) string {
	t.Helper()
	dir := filepath.Join(root, filepath.FromSlash(repoPath), version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, BinaryName())
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeExe(t testing.TB, dir, name string, mode os.FileMode) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestResolve(t *testing.T) {
	root := t.TempDir()
	bin1, bin2 := t.TempDir(), t.TempDir()
	const gl = BuiltinRegistry + "/" + BuiltinRepository
	aws100 := installFake(t, root, gl+"/aws", "1.0.0", 0o755)
	aws120 := installFake(t, root, gl+"/aws", "1.2.0", 0o755)
	aws200 := installFake(t, root, gl+"/aws", "2.0.0", 0o755)
	installFake(t, root, gl+"/aws", "3.0.0-rc.1", 0o755)
	installFake(t, root, gl+"/aws", "4.0.0", 0o644) // not executable: ignored
	os.MkdirAll(filepath.Join(root, gl, "aws", ".install-123"), 0o755)
	mirror := installFake(t, root, "mirror.example:5000/ci/aws", "1.5.0", 0o755)
	vsphere := installFake(t, root, BuiltinRegistry+"/santhanuv/fleeting-plugin-vmware-vsphere", "0.1.0", 0o755)
	installFake(t, root, gl+"/local", "1.0.0", 0o755)
	pathGC := writeExe(t, bin2, "fleeting-plugin-googlecloud", 0o755)
	pathLiteral := writeExe(t, bin1, "my-provider", 0o755)
	writeExe(t, bin1, "fleeting-plugin-noexec", 0o644)
	pathPrefixed := writeExe(t, bin2, "fleeting-plugin-azure", 0o755)
	writeExe(t, bin1, "azure", 0o755) // loses: fleeting-plugin-azure is searched across all of PATH first
	fileValue := writeExe(t, t.TempDir(), "custom", 0o755)
	pathFlotilla := writeExe(t, bin2, "flotilla-plugin-both", 0o755)
	writeExe(t, bin1, "fleeting-plugin-both", 0o755) // loses: Flotilla's own prefix is searched first
	installFake(t, root, GitLabRegistry+"/"+GitLabRepository+"/gitlab-only", "1.0.0", 0o755)

	path := []string{bin1, bin2}
	tests := []struct {
		name, value  string
		opts         Options
		wantPath     string
		wantVersion  string
		wantSource   Source
		wantEmbedded bool
		wantMissing  []string // substrings of the not-found message
		wantErr      string
	}{
		{name: "latest skips prerelease and non-executable", value: "aws", wantPath: aws200, wantVersion: "2.0.0", wantSource: SourceInstalled},
		{name: "explicit latest", value: "aws:latest", wantPath: aws200, wantVersion: "2.0.0", wantSource: SourceInstalled},
		{name: "major", value: "aws:1", wantPath: aws120, wantVersion: "1.2.0", wantSource: SourceInstalled},
		{name: "major.minor", value: "aws:1.0", wantPath: aws100, wantVersion: "1.0.0", wantSource: SourceInstalled},
		{name: "exact", value: "aws:1.0.0", wantPath: aws100, wantVersion: "1.0.0", wantSource: SourceInstalled},
		{name: "exact prerelease", value: "aws:3.0.0-rc.1", wantVersion: "3.0.0-rc.1", wantSource: SourceInstalled},
		{name: "full reference", value: gl + "/aws:1.2", wantPath: aws120, wantVersion: "1.2.0", wantSource: SourceInstalled},
		{name: "repository form", value: "santhanuv/fleeting-plugin-vmware-vsphere", wantPath: vsphere, wantVersion: "0.1.0", wantSource: SourceInstalled},
		{name: "configured default registry", value: "aws", opts: Options{Defaults: Defaults{Registry: "mirror.example:5000", Repository: "ci"}}, wantPath: mirror, wantVersion: "1.5.0", wantSource: SourceInstalled},
		{name: "env default registry", value: "aws", opts: Options{Getenv: envOf(map[string]string{EnvRegistry: "mirror.example:5000", EnvRepository: "ci"})}, wantPath: mirror, wantVersion: "1.5.0", wantSource: SourceInstalled},
		{name: "embedded wins for local", value: "local", wantEmbedded: true, wantSource: SourceEmbedded},
		{name: "local with constraint is a reference", value: "local:1", wantVersion: "1.0.0", wantSource: SourceInstalled},
		{name: "PATH prefixed name", value: "googlecloud", wantPath: pathGC, wantSource: SourcePath},
		{name: "PATH full binary name", value: "fleeting-plugin-googlecloud", wantPath: pathGC, wantSource: SourcePath},
		{name: "PATH literal name that is a script is skipped", value: "my-provider", wantMissing: []string{
			"found " + pathLiteral + ": not a Flotilla plugin (a script run by \"/bin/sh\", not a plugin binary; it was not started)"}},
		{name: "prefixed name anywhere on PATH beats literal", value: "azure", wantPath: pathPrefixed, wantSource: SourcePath},
		{name: "PATH prefixed only", value: "fleeting-plugin-azure", wantPath: pathPrefixed, wantSource: SourcePath},
		{name: "file path", value: fileValue, wantPath: fileValue, wantSource: SourceFile},
		{name: "no installed match", value: "aws:5", wantMissing: []string{
			filepath.Join(root, gl, "aws") + ` (no installed version matches "5"; installed: 3.0.0-rc.1, 2.0.0, 1.2.0, 1.0.0)`}},
		{name: "missing everywhere", value: "hetzner", wantMissing: []string{
			filepath.Join(root, gl, "hetzner") + " (not installed)",
			"PATH " + bin1 + " (no plugin named flotilla-plugin-hetzner or fleeting-plugin-hetzner or hetzner)",
			"PATH " + bin2 + " (no plugin named flotilla-plugin-hetzner or fleeting-plugin-hetzner or hetzner)"}},
		{name: "not executable on PATH", value: "noexec", wantMissing: []string{"PATH " + bin1 + " (no plugin named flotilla-plugin-noexec or fleeting-plugin-noexec or noexec)"}},
		{name: "Flotilla prefix beats GitLab's", value: "both", wantPath: pathFlotilla, wantSource: SourcePath},
		{name: "GitLab's registry is not the default", value: "gitlab-only", wantMissing: []string{
			filepath.Join(root, gl, "gitlab-only") + " (not installed)"}},
		{name: "relative PATH entry skipped", value: "nothing", opts: Options{Path: []string{"rel/bin"}}, wantMissing: []string{`PATH entry "rel/bin" (skipped: not absolute)`}},
		{name: "missing file path", value: "/nonexistent/plugin", wantMissing: []string{"/nonexistent/plugin (does not exist)"}},
		{name: "bad reference with colon", value: "aws:v1", wantErr: "constraint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			opts.Root = root
			if opts.Path == nil {
				opts.Path = path
			}
			if opts.Getenv == nil {
				opts.Getenv = envOf(nil)
			}
			got, err := Resolve(tt.value, opts)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errors.Is(err, ErrPluginNotFound) {
					t.Fatalf("Resolve(%q) error = %v, want a parse error containing %q", tt.value, err, tt.wantErr)
				}
				return
			case tt.wantMissing != nil:
				if !errors.Is(err, ErrPluginNotFound) {
					t.Fatalf("Resolve(%q) = %+v, %v; want ErrPluginNotFound", tt.value, got, err)
				}
				for _, s := range tt.wantMissing {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q\ndoes not mention %q", err, s)
					}
				}
				return
			case err != nil:
				t.Fatalf("Resolve(%q): %v", tt.value, err)
			}
			if tt.wantPath != "" && got.Path != tt.wantPath {
				t.Errorf("Path = %q, want %q", got.Path, tt.wantPath)
			}
			if got.Version != tt.wantVersion || got.Source != tt.wantSource || got.Embedded != tt.wantEmbedded {
				t.Errorf("Resolve(%q) = %+v, want version %q source %q embedded %v", tt.value, got, tt.wantVersion, tt.wantSource, tt.wantEmbedded)
			}
		})
	}
}

func TestResolveReadsMetadata(t *testing.T) {
	root := t.TempDir()
	p := installFake(t, root, BuiltinRegistry+"/"+BuiltinRepository+"/aws", "1.0.0", 0o755)
	want := InstallMetadata{Reference: BuiltinRegistry + "/" + BuiltinRepository + "/aws:1.0.0", Version: "1.0.0",
		Signature: SignatureRecord{Verified: true, KeyID: "SHA256:abc"}}
	if err := WriteMetadata(filepath.Dir(p), want); err != nil {
		t.Fatal(err)
	}
	got, err := Resolve("aws", Options{Root: root, Path: []string{}, Getenv: envOf(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if got.Metadata == nil || got.Metadata.Signature != want.Signature || got.Metadata.Reference != want.Reference {
		t.Fatalf("Metadata = %+v, want %+v", got.Metadata, want)
	}
}

func TestInstallDir(t *testing.T) {
	got, err := InstallDir(envOf(map[string]string{EnvPluginPath: "/opt/plugins", "HOME": "/home/u"}))
	if err != nil || got != "/opt/plugins" {
		t.Fatalf("InstallDir with %s = %q, %v", EnvPluginPath, got, err)
	}
	got, err = InstallDir(envOf(map[string]string{"HOME": "/home/u"}))
	if err != nil || got != filepath.Join("/home/u", ".config", "fleeting", "plugins") {
		t.Fatalf("InstallDir default = %q, %v", got, err)
	}
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// BenchmarkResolve measures discovery with many installed versions and a long PATH,
// the work the runner does each time it (re)launches a plugin.
func BenchmarkResolve(b *testing.B) {
	root := b.TempDir()
	for i := 0; i < 50; i++ {
		dir := filepath.Join(root, BuiltinRegistry, BuiltinRepository, "aws", fmt.Sprintf("1.%d.0", i))
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, BinaryName()), []byte("x"), 0o755)
	}
	var path []string
	for i := 0; i < 20; i++ {
		path = append(path, b.TempDir())
	}
	writeExe(b, path[19], "fleeting-plugin-gcp", 0o755)
	for _, bc := range []struct{ name, value string }{{"installed", "aws:1"}, {"PATH", "gcp"}} {
		b.Run(bc.name, func(b *testing.B) {
			opts := Options{Root: root, Path: path, Getenv: envOf(nil)}
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := Resolve(bc.value, opts); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "µs/resolve")
		})
	}
}
