package oci

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"

	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"

	"github.com/flotilla-ci/flotilla/host/plugins"
)

// source is what install reads from: a registry repository or an OCI layout.
type source interface {
	content.ReadOnlyGraphStorage
	content.Resolver
	registry.TagLister
}

// RemoteOptions configure registry access.
type RemoteOptions struct {
	// PlainHTTP talks HTTP instead of HTTPS (a local test or mirror registry).
	PlainHTTP bool
	// Credentials supplies registry credentials; nil means the Docker config file
	// ($DOCKER_CONFIG/config.json or ~/.docker/config.json) and its credential helpers.
	Credentials credentials.Store
	// HTTPClient replaces the default retrying client.
	HTTPClient *http.Client
}

// CredentialStore opens the Docker-compatible credential store: the config file at
// $DOCKER_CONFIG/config.json (default ~/.docker/config.json), honouring credsStore and
// credHelpers, and the platform's default helper when none is configured.
func CredentialStore() (*credentials.DynamicStore, error) {
	s, err := credentials.NewStoreFromDocker(credentials.StoreOptions{AllowPlaintextPut: true, DetectDefaultNativeStore: true})
	if err != nil {
		return nil, fmt.Errorf("open docker credential store: %w", err)
	}
	return s, nil
}

func (o RemoteOptions) client() (*auth.Client, error) {
	store := o.Credentials
	if store == nil {
		s, err := CredentialStore()
		if err != nil {
			return nil, err
		}
		store = s
	}
	hc := o.HTTPClient
	if hc == nil {
		hc = retry.DefaultClient
	}
	return &auth.Client{Client: hc, Cache: auth.NewCache(), Credential: credentials.Credential(store)}, nil
}

// OpenRepository returns the registry repository holding ref's plugin.
func OpenRepository(ref plugins.Reference, o RemoteOptions) (*remote.Repository, error) {
	repo, err := remote.NewRepository(ref.Registry + "/" + ref.Repo())
	if err != nil {
		return nil, fmt.Errorf("open repository %s/%s: %w", ref.Registry, ref.Repo(), err)
	}
	repo.PlainHTTP = o.PlainHTTP
	c, err := o.client()
	if err != nil {
		return nil, err
	}
	repo.Client = c
	return repo, nil
}

// OpenLayout opens an OCI image layout directory or tarball read-only.
func OpenLayout(ctx context.Context, path string) (*oci.ReadOnlyStore, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open OCI layout: %w", err)
	}
	var s *oci.ReadOnlyStore
	if fi.IsDir() {
		s, err = oci.NewFromFS(ctx, os.DirFS(path))
	} else {
		s, err = oci.NewFromTar(ctx, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open OCI layout %s: %w", path, err)
	}
	return s, nil
}

// openOffline finds the layout for plugin name under path: path itself when it is a
// layout or tarball, else <path>/<name> (layout dir) or <path>/<name>.tar.
func openOffline(ctx context.Context, path, name string) (source, string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, "", fmt.Errorf("offline source: %w", err)
	}
	candidates := []string{path}
	if fi.IsDir() {
		if _, err := os.Stat(filepath.Join(path, "oci-layout")); errors.Is(err, fs.ErrNotExist) {
			candidates = []string{filepath.Join(path, name), filepath.Join(path, name+".tar")}
		}
	}
	for _, c := range candidates {
		if _, err := os.Stat(c); err != nil {
			continue
		}
		s, err := OpenLayout(ctx, c)
		if err != nil {
			return nil, "", err
		}
		return s, c, nil
	}
	return nil, "", fmt.Errorf("offline source %s: no OCI layout for %q (looked for %s)", path, name, joinQuoted(candidates))
}

func joinQuoted(ss []string) string {
	out := ""
	for i, s := range ss {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%q", s)
	}
	return out
}
