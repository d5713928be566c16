package oci

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"

	"github.com/flotilla-ci/flotilla/host/plugins"
)

// TestInstallRefusesWhatIsNotAPlugin pushes, to a real registry, artifacts that are
// not Flotilla plugins (a plugin in the layout GitLab's fleeting artifacts use: an
// image index without artifact type; a container image; an artifact of another type)
// and checks that install refuses each, saying what it is, before any signature talk.
func TestInstallRefusesWhatIsNotAPlugin(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	push := func(name string, build func(ctx context.Context, repo oras.Target) (ocispec.Descriptor, error)) {
		t.Helper()
		repo, err := OpenRepository(mustRef(t, name, f.defaults), f.remote)
		if err != nil {
			t.Fatal(err)
		}
		desc, err := build(ctx, repo)
		if err != nil {
			t.Fatalf("push %s: %v", name, err)
		}
		if err := repo.Tag(ctx, desc, "1.0.0"); err != nil {
			t.Fatalf("tag %s: %v", name, err)
		}
	}
	imageManifest := func(ctx context.Context, repo oras.Target, artifactType string) (ocispec.Descriptor, error) {
		layer := content.NewDescriptorFromBytes("application/vnd.oci.image.layer.v1.tar", []byte("plugin binary"))
		if err := repo.Push(ctx, layer, strings.NewReader("plugin binary")); err != nil {
			return ocispec.Descriptor{}, err
		}
		return oras.PackManifest(ctx, repo, oras.PackManifestVersion1_1, artifactType, oras.PackManifestOptions{Layers: []ocispec.Descriptor{layer}})
	}
	index := func(artifactType string) func(ctx context.Context, repo oras.Target) (ocispec.Descriptor, error) {
		return func(ctx context.Context, repo oras.Target) (ocispec.Descriptor, error) {
			m, err := imageManifest(ctx, repo, "application/vnd.example+type")
			if err != nil {
				return m, err
			}
			m.Platform = &hostPlatform
			idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, ArtifactType: artifactType, Manifests: []ocispec.Descriptor{m}}
			idx.SchemaVersion = 2
			raw, _ := json.Marshal(idx)
			desc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageIndex, raw)
			return desc, repo.Push(ctx, desc, strings.NewReader(string(raw)))
		}
	}
	push("gitlab-layout", index(""))
	push("other-type", index("application/vnd.example.thing.v1"))
	push("container-image", func(ctx context.Context, repo oras.Target) (ocispec.Descriptor, error) {
		return imageManifest(ctx, repo, "application/vnd.oci.image.config.v1+json")
	})

	tests := []struct{ value, want string }{
		{"gitlab-layout", "it is an OCI image index with no artifact type and 1 manifest(s): a multi-platform container image, or a plugin in GitLab's fleeting layout"},
		{"other-type", `it is an OCI artifact of type "application/vnd.example.thing.v1"`},
		{"container-image", "it is a single image manifest (application/vnd.oci.image.manifest.v1+json)"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			root := t.TempDir()
			in := f.installer(root)
			in.AllowUnsigned = true // what it is must be refused even when unsigned is allowed
			_, err := in.Install(ctx, tt.value)
			if !errors.Is(err, ErrNotAPlugin) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), ArtifactType) {
				t.Fatalf("Install(%q) error = %v\nwant ErrNotAPlugin saying %q", tt.value, err, tt.want)
			}
			if vs, _ := plugins.InstalledVersions(root, mustRef(t, tt.value, f.defaults)); len(vs) != 0 {
				t.Errorf("installed %v", vs)
			}
		})
	}
}
