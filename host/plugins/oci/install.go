package oci

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry"

	"github.com/flotilla-ci/flotilla/host/plugins"
)

// maxBinarySize bounds a plugin download; a larger layer is refused before fetching.
const maxBinarySize = 1 << 30

// Installer installs plugins into the layout that plugins.Resolve reads.
type Installer struct {
	// Root is the install root (plugins.InstallDir).
	Root string
	// Defaults complete partial references.
	Defaults plugins.Defaults
	// TrustedKeys verify signatures.
	TrustedKeys []ed25519.PublicKey
	// AllowUnsigned installs artifacts without a signature (or with no key to check
	// it against). A signature that fails to verify is refused regardless.
	AllowUnsigned bool
	// Upgrade resolves against the source even when a matching version is installed.
	Upgrade bool
	// Platform to install for; zero means this host's.
	Platform ocispec.Platform
	// Remote configures registry access.
	Remote RemoteOptions
	// Offline, when set, installs from this OCI layout directory or tarball (or a
	// directory of <name> layouts / <name>.tar files) instead of a registry.
	Offline string
	// Progress receives the download progress; nil is silent.
	Progress io.Writer
	// Now stamps the install metadata; nil means time.Now.
	Now func() time.Time
}

// Result describes one install.
type Result struct {
	// Path of the installed binary; empty for the embedded plugin.
	Path    string
	Version string
	// AlreadyInstalled is true when nothing had to be downloaded.
	AlreadyInstalled bool
	Embedded         bool
	Metadata         plugins.InstallMetadata
}

// Install installs the plugin that value references. On any error the previous
// installation (if any) is untouched.
func (in *Installer) Install(ctx context.Context, value string) (Result, error) {
	if value == plugins.EmbeddedName {
		return Result{Embedded: true, AlreadyInstalled: true}, nil
	}
	if in.Root == "" {
		root, err := plugins.InstallDir(nil)
		if err != nil {
			return Result{}, err
		}
		in.Root = root
	}
	if plugins.IsPathValue(value) {
		// A binary named by path is managed by whoever put it there: nothing to
		// install, but it must exist.
		r, err := plugins.Resolve(value, plugins.Options{Root: in.Root})
		if err != nil {
			return Result{}, err
		}
		return Result{Path: r.Path, AlreadyInstalled: true}, nil
	}
	ref, err := plugins.ParseReference(value, in.Defaults)
	if err != nil {
		return Result{}, err
	}
	if !in.Upgrade {
		if vs, err := plugins.InstalledVersions(in.Root, ref); err == nil {
			if v, ok := ref.Constraint.Select(vs); ok {
				return in.existing(ref, v), nil
			}
		}
	}
	var src source
	origin := "registry"
	if in.Offline != "" {
		s, path, err := openOffline(ctx, in.Offline, ref.Name)
		if err != nil {
			return Result{}, err
		}
		src, origin = s, "offline:"+path
	} else {
		repo, err := OpenRepository(ref, in.Remote)
		if err != nil {
			return Result{}, err
		}
		src = repo
	}
	where := ref.Registry + "/" + ref.Repo()
	if in.Offline != "" {
		where = strings.TrimPrefix(origin, "offline:")
	}
	tags, err := registry.Tags(ctx, src)
	if err != nil {
		return Result{}, fmt.Errorf("list versions of %s: %w", where, err)
	}
	v, ok := ref.Constraint.Select(tags)
	if !ok {
		avail := plugins.SortVersions(tags)
		if len(avail) == 0 {
			return Result{}, fmt.Errorf("no version of %s matches %q: no versions published", where, ref.Constraint)
		}
		return Result{}, fmt.Errorf("no version of %s matches %q (available: %s)", where, ref.Constraint, strings.Join(avail, ", "))
	}
	index, err := src.Resolve(ctx, v.String())
	if err != nil {
		return Result{}, fmt.Errorf("resolve %s: %w", ref.WithVersion(v), err)
	}
	dir := plugins.VersionDir(in.Root, ref, v)
	if m, err := plugins.ReadMetadata(dir); err == nil && m.IndexDigest == index.Digest.String() {
		if _, err := os.Stat(filepath.Join(dir, plugins.BinaryName())); err == nil {
			return in.existing(ref, v), nil
		}
	}
	return in.download(ctx, src, origin, ref, v, index)
}

func (in *Installer) existing(ref plugins.Reference, v plugins.Version) Result {
	dir := plugins.VersionDir(in.Root, ref, v)
	r := Result{Path: filepath.Join(dir, plugins.BinaryName()), Version: v.String(), AlreadyInstalled: true}
	if m, err := plugins.ReadMetadata(dir); err == nil {
		r.Metadata = m
	}
	return r
}

func (in *Installer) platform() ocispec.Platform {
	if in.Platform.OS != "" {
		return in.Platform
	}
	return ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
}

func (in *Installer) download(ctx context.Context, src source, origin string, ref plugins.Reference, v plugins.Version, index ocispec.Descriptor) (Result, error) {
	name := ref.WithVersion(v)
	if index.MediaType != ocispec.MediaTypeImageIndex {
		return Result{}, notAPlugin(name, index, nil)
	}
	raw, err := content.FetchAll(ctx, src, index)
	if err != nil {
		return Result{}, fmt.Errorf("fetch index of %s: %w", name, err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(raw, &idx); err != nil {
		return Result{}, fmt.Errorf("decode index of %s: %w", name, err)
	}
	// What it is comes before whether it is signed: an artifact that is no Flotilla
	// plugin at all is refused as such, not as "unsigned".
	if idx.ArtifactType != ArtifactType {
		return Result{}, notAPlugin(name, index, &idx)
	}
	if t := idx.Annotations[AnnotationTitle]; t != "" && t != ref.Name {
		return Result{}, fmt.Errorf("%s: artifact is plugin %q, not %q", name, t, ref.Name)
	}
	if t := idx.Annotations[AnnotationVersion]; t != "" && t != v.String() {
		return Result{}, fmt.Errorf("%s: artifact is version %q, not %q", name, t, v)
	}

	sig := plugins.SignatureRecord{}
	keyID, verr := Verify(ctx, src, index, ref.Name, v.String(), in.TrustedKeys)
	switch {
	case verr == nil:
		sig = plugins.SignatureRecord{Verified: true, KeyID: keyID}
	case errors.Is(verr, ErrBadSignature):
		return Result{}, fmt.Errorf("verify %s: %w", name, verr)
	case (errors.Is(verr, ErrUnsigned) || errors.Is(verr, ErrNoTrustedKeys)) && in.AllowUnsigned:
		sig.Note = verr.Error() + "; installed with --allow-unsigned"
	case errors.Is(verr, ErrUnsigned) || errors.Is(verr, ErrNoTrustedKeys):
		return Result{}, fmt.Errorf("verify %s: %w; configure a trusted key ([fleeting] public_keys or %s) or pass --allow-unsigned", name, verr, EnvPublicKeys)
	default:
		return Result{}, fmt.Errorf("verify %s: %w", name, verr)
	}

	plat := in.platform()
	var mdesc *ocispec.Descriptor
	var have []string
	for i, m := range idx.Manifests {
		if m.Platform == nil {
			continue
		}
		have = append(have, platformString(*m.Platform))
		if m.Platform.OS == plat.OS && m.Platform.Architecture == plat.Architecture &&
			(plat.Variant == "" || m.Platform.Variant == "" || m.Platform.Variant == plat.Variant) {
			mdesc = &idx.Manifests[i]
			break
		}
	}
	if mdesc == nil {
		return Result{}, fmt.Errorf("%s has no binary for %s (available: %s)", name, platformString(plat), strings.Join(have, ", "))
	}
	mraw, err := content.FetchAll(ctx, src, *mdesc)
	if err != nil {
		return Result{}, fmt.Errorf("fetch %s manifest of %s: %w", platformString(plat), name, err)
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(mraw, &man); err != nil {
		return Result{}, fmt.Errorf("decode %s manifest of %s: %w", platformString(plat), name, err)
	}
	var layer *ocispec.Descriptor
	for i, l := range man.Layers {
		if l.MediaType == BinaryMediaType {
			layer = &man.Layers[i]
			break
		}
	}
	if layer == nil {
		return Result{}, fmt.Errorf("%s manifest of %s has no %s layer", platformString(plat), name, BinaryMediaType)
	}
	if layer.Size > maxBinarySize || layer.Size < 0 {
		return Result{}, fmt.Errorf("%s: binary of %d bytes exceeds the %d byte limit", name, layer.Size, maxBinarySize)
	}

	// Stage in the root itself (same filesystem, so the final rename is atomic); a
	// dot name can never be a registry, so discovery never sees a half install.
	if err := os.MkdirAll(in.Root, 0o755); err != nil {
		return Result{}, fmt.Errorf("install %s: %w", name, err)
	}
	tmp, err := os.MkdirTemp(in.Root, ".install-")
	if err != nil {
		return Result{}, fmt.Errorf("install %s: %w", name, err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed into place
	if err := in.fetchBinary(ctx, src, *layer, filepath.Join(tmp, plugins.BinaryName()), name); err != nil {
		return Result{}, err
	}
	now := time.Now
	if in.Now != nil {
		now = in.Now
	}
	meta := plugins.InstallMetadata{
		Reference: name, Name: ref.Name, Version: v.String(), Platform: platformString(*mdesc.Platform),
		IndexDigest: index.Digest.String(), ManifestDigest: mdesc.Digest.String(), BinaryDigest: layer.Digest.String(),
		Origin: origin, Signature: sig, Installed: now().UTC(),
	}
	if err := plugins.WriteMetadata(tmp, meta); err != nil {
		return Result{}, fmt.Errorf("install %s: %w", name, err)
	}
	final := plugins.VersionDir(in.Root, ref, v)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return Result{}, fmt.Errorf("install %s: %w", name, err)
	}
	if err := replaceDir(tmp, final); err != nil {
		return Result{}, fmt.Errorf("install %s: %w", name, err)
	}
	return Result{Path: filepath.Join(final, plugins.BinaryName()), Version: v.String(), Metadata: meta}, nil
}

func (in *Installer) fetchBinary(ctx context.Context, src source, layer ocispec.Descriptor, dst, name string) error {
	rc, err := src.Fetch(ctx, layer)
	if err != nil {
		return fmt.Errorf("download %s: %w", name, err)
	}
	defer rc.Close()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return fmt.Errorf("install %s: %w", name, err)
	}
	p := newProgress(in.Progress, name, layer.Size)
	vr := content.NewVerifyReader(io.TeeReader(rc, p), layer)
	_, err = io.Copy(f, vr)
	if err != nil {
		err = fmt.Errorf("read binary %s: %w", layer.Digest, err)
	} else {
		if err = vr.Verify(); err != nil {
			err = fmt.Errorf("verify binary digest %s: %w", layer.Digest, err)
		}
	}
	p.finish(err)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("download %s: %w", name, err)
	}
	return nil
}

// replaceDir moves the fully written dir tmp to final. A new version is one rename;
// replacing an existing version (its tag moved) parks the old one aside first and
// restores it if the second rename fails, so some complete version is always there.
func replaceDir(tmp, final string) error {
	if err := syncDir(tmp); err != nil {
		return err
	}
	err := os.Rename(tmp, final)
	if err == nil {
		return syncDir(filepath.Dir(final))
	}
	if _, serr := os.Stat(final); errors.Is(serr, fs.ErrNotExist) {
		return err
	}
	old := tmp + ".old"
	if err := os.Rename(final, old); err != nil {
		return fmt.Errorf("move aside %s: %w", final, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		if rerr := os.Rename(old, final); rerr != nil {
			return fmt.Errorf("replace %s: %w (and restoring the previous version failed: %v)", final, err, rerr)
		}
		return fmt.Errorf("replace %s: %w", final, err)
	}
	os.RemoveAll(old)
	return syncDir(filepath.Dir(final))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && runtime.GOOS != "windows" {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ErrNotAPlugin is wrapped by the error for an artifact that is not a Flotilla plugin.
var ErrNotAPlugin = errors.New("not a Flotilla plugin")

// notAPlugin says what the artifact at name is instead of a Flotilla plugin: a single
// image (a container image), an image index without Flotilla's artifact type (a
// multi-platform container image, or a plugin in GitLab's fleeting layout), or an
// artifact of some other type. idx is nil when desc is not an index.
func notAPlugin(name string, desc ocispec.Descriptor, idx *ocispec.Index) error {
	var what string
	switch {
	case idx == nil && (desc.MediaType == ocispec.MediaTypeImageManifest || desc.MediaType == "application/vnd.docker.distribution.manifest.v2+json"):
		what = fmt.Sprintf("it is a single image manifest (%s), such as a container image", desc.MediaType)
	case idx == nil:
		what = fmt.Sprintf("its media type is %q, not an OCI image index", desc.MediaType)
	case idx.ArtifactType == "":
		what = fmt.Sprintf("it is an OCI image index with no artifact type and %d manifest(s): a multi-platform container image, or a plugin in GitLab's fleeting layout (as published to %s/%s), which Flotilla neither verifies nor installs",
			len(idx.Manifests), plugins.GitLabRegistry, plugins.GitLabRepository)
	default:
		what = fmt.Sprintf("it is an OCI artifact of type %q", idx.ArtifactType)
	}
	return fmt.Errorf("%s: %w: %s; a Flotilla plugin is an index of artifact type %q, as `runner fleeting package` makes (bare names resolve against %s/%s unless [fleeting] registry or %s say otherwise)",
		name, ErrNotAPlugin, what, ArtifactType, plugins.BuiltinRegistry, plugins.BuiltinRepository, plugins.EnvRegistry)
}
