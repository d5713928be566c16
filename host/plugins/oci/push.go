package oci

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/registry"

	"github.com/flotilla-ci/flotilla/host/plugins"
)

// Push uploads the plugin version tagged in the OCI layout (directory or tarball) at
// src to the registry reference dst (<registry>/<repository>/<name>[:<version>]),
// together with its signature referrers. Without a version in dst the layout must
// hold exactly one version tag. It returns the fully qualified reference pushed and
// the index descriptor.
func Push(ctx context.Context, src, dst string, d plugins.Defaults, o RemoteOptions) (string, ocispec.Descriptor, error) {
	var none ocispec.Descriptor
	store, err := OpenLayout(ctx, src)
	if err != nil {
		return "", none, fmt.Errorf("push: %w", err)
	}
	ref, err := plugins.ParseReference(dst, d)
	if err != nil {
		return "", none, fmt.Errorf("push: %w", err)
	}
	version, err := layoutVersion(ctx, store, ref.Constraint, src)
	if err != nil {
		return "", none, fmt.Errorf("push: %w", err)
	}
	index, err := store.Resolve(ctx, version)
	if err != nil {
		return "", none, fmt.Errorf("push: resolve %s in %s: %w", version, src, err)
	}
	if err := checkTitle(ctx, store, index, ref.Name); err != nil {
		return "", none, fmt.Errorf("push: %w", err)
	}
	repo, err := OpenRepository(ref, o)
	if err != nil {
		return "", none, fmt.Errorf("push: %w", err)
	}
	v, _ := plugins.ParseVersion(version)
	name := ref.WithVersion(v)
	if _, err := oras.ExtendedCopy(ctx, store, version, repo, version, oras.DefaultExtendedCopyOptions); err != nil {
		return "", none, fmt.Errorf("push %s: %w", name, err)
	}
	return name, index, nil
}

// layoutVersion picks the version tag to use from a layout: the exact version in c,
// or the only version tag when c is "latest" (no version given).
func layoutVersion(ctx context.Context, store registry.TagLister, c plugins.Constraint, path string) (string, error) {
	tags, err := registry.Tags(ctx, store)
	if err != nil {
		return "", fmt.Errorf("list tags of %s: %w", path, err)
	}
	vs := plugins.SortVersions(tags)
	switch {
	case c.Kind == plugins.ConstraintExact:
		for _, t := range vs {
			if t == c.V.String() {
				return t, nil
			}
		}
		return "", fmt.Errorf("%s has no version %s (has: %s)", path, c.V, strings.Join(vs, ", "))
	case c.Kind != plugins.ConstraintLatest:
		return "", fmt.Errorf("give an exact version (MAJOR.MINOR.PATCH), not %q", c)
	case len(vs) == 1:
		return vs[0], nil
	case len(vs) == 0:
		return "", fmt.Errorf("%s has no version tags; create it with `runner fleeting package`", path)
	}
	return "", fmt.Errorf("%s holds several versions (%s); name one as <reference>:<version>", path, strings.Join(vs, ", "))
}

func checkTitle(ctx context.Context, store content.Fetcher, index ocispec.Descriptor, name string) error {
	b, err := content.FetchAll(ctx, store, index)
	if err != nil {
		return fmt.Errorf("read index %s: %w", index.Digest, err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return fmt.Errorf("decode index %s: %w", index.Digest, err)
	}
	if t := idx.Annotations[AnnotationTitle]; t != "" && t != name {
		return fmt.Errorf("artifact is plugin %q but the reference names %q", t, name)
	}
	return nil
}

// SignLayout signs the version tagged in the OCI layout directory dir (the only one
// when version is empty) and returns the signed index and the key ID.
func SignLayout(ctx context.Context, dir, version string, key ed25519.PrivateKey) (ocispec.Descriptor, string, error) {
	var none ocispec.Descriptor
	store, err := oci.NewWithContext(ctx, dir)
	if err != nil {
		return none, "", fmt.Errorf("sign: open layout %s: %w", dir, err)
	}
	c := plugins.Constraint{Kind: plugins.ConstraintLatest}
	if version != "" {
		if c, err = plugins.ParseConstraint(version); err != nil {
			return none, "", fmt.Errorf("sign: %w", err)
		}
	}
	tag, err := layoutVersion(ctx, store, c, dir)
	if err != nil {
		return none, "", fmt.Errorf("sign: %w", err)
	}
	index, err := store.Resolve(ctx, tag)
	if err != nil {
		return none, "", fmt.Errorf("sign: %w", err)
	}
	name, err := indexTitle(ctx, store, index)
	if err != nil {
		return none, "", fmt.Errorf("sign: %w", err)
	}
	if _, err := Sign(ctx, store, index, name, tag, key); err != nil {
		return none, "", err
	}
	return index, KeyID(key.Public().(ed25519.PublicKey)), nil
}

// SignRemote signs a version already in a registry; ref must name an exact version.
func SignRemote(ctx context.Context, ref string, d plugins.Defaults, key ed25519.PrivateKey, o RemoteOptions) (ocispec.Descriptor, string, error) {
	var none ocispec.Descriptor
	r, err := plugins.ParseReference(ref, d)
	if err != nil {
		return none, "", fmt.Errorf("sign: %w", err)
	}
	if r.Constraint.Kind != plugins.ConstraintExact {
		return none, "", fmt.Errorf("sign %s: give an exact version (MAJOR.MINOR.PATCH)", ref)
	}
	repo, err := OpenRepository(r, o)
	if err != nil {
		return none, "", fmt.Errorf("sign: %w", err)
	}
	index, err := repo.Resolve(ctx, r.Constraint.V.String())
	if err != nil {
		return none, "", fmt.Errorf("sign %s: %w", r.WithVersion(r.Constraint.V), err)
	}
	if err := checkTitle(ctx, repo, index, r.Name); err != nil {
		return none, "", fmt.Errorf("sign: %w", err)
	}
	if _, err := Sign(ctx, repo, index, r.Name, r.Constraint.V.String(), key); err != nil {
		return none, "", err
	}
	return index, KeyID(key.Public().(ed25519.PublicKey)), nil
}

func indexTitle(ctx context.Context, store content.Fetcher, index ocispec.Descriptor) (string, error) {
	b, err := content.FetchAll(ctx, store, index)
	if err != nil {
		return "", fmt.Errorf("read index %s: %w", index.Digest, err)
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return "", fmt.Errorf("decode index %s: %w", index.Digest, err)
	}
	t := idx.Annotations[AnnotationTitle]
	if t == "" {
		return "", fmt.Errorf("index %s has no %s annotation; repackage with `runner fleeting package`", index.Digest, AnnotationTitle)
	}
	return t, nil
}
