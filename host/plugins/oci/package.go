package oci

import (
	"archive/tar"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/errdef"

	"github.com/flotilla-ci/flotilla/host/plugins"
)

// epoch is the creation time recorded in manifests so that packaging the same
// binaries twice yields the same digests (reproducible artifacts, idempotent pushes).
const epoch = "1970-01-01T00:00:00Z"

// Binary is one built plugin binary and the platform it runs on.
type Binary struct {
	Platform ocispec.Platform
	Path     string
}

// PackageOptions describe one plugin version to package.
type PackageOptions struct {
	Name    string
	Version string
	// Binaries holds one entry per platform.
	Binaries []Binary
	// Key signs the index; nil packages an unsigned artifact.
	Key ed25519.PrivateKey
	// Output is an OCI image layout directory (created or added to), or a tarball
	// when it ends in ".tar".
	Output string
}

// Package builds the multi-platform plugin artifact into an OCI image layout (or
// tarball), tags it with the version, signs it when a key is given, and returns the
// index descriptor.
func Package(ctx context.Context, opts PackageOptions) (ocispec.Descriptor, error) {
	var none ocispec.Descriptor
	if _, err := plugins.ParseReference(opts.Name, plugins.Defaults{}); err != nil || strings.ContainsAny(opts.Name, "/:") {
		return none, fmt.Errorf("package: --name %q: want a plain plugin name such as \"aws\" (lowercase, digits, . _ -)", opts.Name)
	}
	v, err := plugins.ParseVersion(opts.Version)
	if err != nil || v.String() != opts.Version {
		return none, fmt.Errorf("package: --version: %v; tags are semver without a leading v, e.g. 1.2.3", err)
	}
	if len(opts.Binaries) == 0 {
		return none, fmt.Errorf("package: no binaries; lay them out as dist/<os>/<arch>/plugin or pass --binary os/arch=path")
	}
	layoutDir, isTar := opts.Output, strings.HasSuffix(opts.Output, ".tar")
	if isTar {
		tmp, err := os.MkdirTemp(filepath.Dir(opts.Output), ".package-")
		if err != nil {
			return none, fmt.Errorf("package: %w", err)
		}
		defer os.RemoveAll(tmp)
		layoutDir = tmp
	}
	store, err := oci.NewWithContext(ctx, layoutDir)
	if err != nil {
		return none, fmt.Errorf("package: open layout %s: %w", layoutDir, err)
	}
	index, err := buildIndex(ctx, store, opts)
	if err != nil {
		return none, err
	}
	if opts.Key != nil {
		if _, err := Sign(ctx, store, index, opts.Name, opts.Version, opts.Key); err != nil {
			return none, fmt.Errorf("package: %w", err)
		}
	}
	if err := store.Tag(ctx, index, opts.Version); err != nil {
		return none, fmt.Errorf("package: tag %s: %w", opts.Version, err)
	}
	if isTar {
		if err := writeTar(layoutDir, opts.Output); err != nil {
			return none, fmt.Errorf("package: %w", err)
		}
	}
	return index, nil
}

func buildIndex(ctx context.Context, store content.Storage, opts PackageOptions) (ocispec.Descriptor, error) {
	var none ocispec.Descriptor
	seen := map[string]bool{}
	var manifests []ocispec.Descriptor
	for _, b := range opts.Binaries {
		key := platformString(b.Platform)
		if seen[key] {
			return none, fmt.Errorf("package: two binaries for %s", key)
		}
		seen[key] = true
		data, err := os.ReadFile(b.Path)
		if err != nil {
			return none, fmt.Errorf("package: read binary for %s: %w", key, err)
		}
		layer := content.NewDescriptorFromBytes(BinaryMediaType, data)
		layer.Annotations = map[string]string{ocispec.AnnotationTitle: binaryFileName(b.Platform.OS)}
		if err := pushIfAbsent(ctx, store, layer, data); err != nil {
			return none, fmt.Errorf("package: push binary for %s: %w", key, err)
		}
		m, err := oras.PackManifest(ctx, store, oras.PackManifestVersion1_1, ArtifactType, oras.PackManifestOptions{
			Layers:              []ocispec.Descriptor{layer},
			ManifestAnnotations: map[string]string{annotationCreated: epoch},
		})
		if err != nil {
			return none, fmt.Errorf("package: manifest for %s: %w", key, err)
		}
		p := b.Platform
		m.Platform = &p
		manifests = append(manifests, m)
	}
	sort.Slice(manifests, func(i, j int) bool {
		return platformString(*manifests[i].Platform) < platformString(*manifests[j].Platform)
	})
	idx := ocispec.Index{
		Versioned:    specsVersioned(),
		MediaType:    ocispec.MediaTypeImageIndex,
		ArtifactType: ArtifactType,
		Manifests:    manifests,
		Annotations:  map[string]string{AnnotationTitle: opts.Name, AnnotationVersion: opts.Version},
	}
	data, err := json.Marshal(idx)
	if err != nil {
		return none, fmt.Errorf("package: encode index: %w", err)
	}
	desc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageIndex, data)
	desc.ArtifactType = ArtifactType
	desc.Annotations = idx.Annotations
	if err := pushIfAbsent(ctx, store, desc, data); err != nil {
		return none, fmt.Errorf("package: push index: %w", err)
	}
	return desc, nil
}

// BinariesFromDist finds binaries laid out as <dir>/<os>/<arch>/plugin (plugin.exe on
// Windows), the layout GitLab's release scripts use; arch "armv7" means arm/v7.
func BinariesFromDist(dir string) ([]Binary, error) {
	var out []Binary
	oses, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read dist dir: %w", err)
	}
	for _, o := range oses {
		if !o.IsDir() {
			continue
		}
		arches, err := os.ReadDir(filepath.Join(dir, o.Name()))
		if err != nil {
			return nil, fmt.Errorf("read dist dir: %w", err)
		}
		for _, a := range arches {
			p := filepath.Join(dir, o.Name(), a.Name(), binaryFileName(o.Name()))
			if _, err := os.Stat(p); err != nil {
				continue
			}
			plat := ocispec.Platform{OS: o.Name(), Architecture: a.Name()}
			if rest, ok := strings.CutPrefix(a.Name(), "arm"); ok && strings.HasPrefix(rest, "v") {
				plat.Architecture, plat.Variant = "arm", rest
			}
			out = append(out, Binary{Platform: plat, Path: p})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no binaries under %s: want %s/<os>/<arch>/plugin", dir, dir)
	}
	return out, nil
}

// ParsePlatform parses "os/arch[/variant]".
func ParsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return ocispec.Platform{}, fmt.Errorf("platform %q: want os/arch or os/arch/variant, e.g. linux/amd64", s)
	}
	p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func platformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func binaryFileName(goos string) string {
	if goos == "windows" {
		return "plugin.exe"
	}
	return "plugin"
}

func pushIfAbsent(ctx context.Context, dst content.Pusher, desc ocispec.Descriptor, data []byte) error {
	if e, ok := dst.(content.ReadOnlyStorage); ok {
		if found, err := e.Exists(ctx, desc); err == nil && found {
			return nil
		}
	}
	err := dst.Push(ctx, desc, strings.NewReader(string(data)))
	if errors.Is(err, errdef.ErrAlreadyExists) {
		return nil
	}
	return err
}

func pushBlob(ctx context.Context, dst content.Pusher, mediaType string, data []byte) (ocispec.Descriptor, error) {
	desc := content.NewDescriptorFromBytes(mediaType, data)
	return desc, pushIfAbsent(ctx, dst, desc, data)
}

// writeTar writes the layout directory dir as a tarball at dst, atomically and
// reproducibly (sorted entries, zero times).
func writeTar(dir, dst string) error {
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".tar-")
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	defer os.Remove(tmp.Name())
	tw := tar.NewWriter(tmp)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		hdr.ModTime, hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = zeroTime, 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = tmp.Close()
	} else {
		tmp.Close()
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("write %s: %w", dst, err)
	}
	return nil
}
