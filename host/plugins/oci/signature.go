package oci

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry"
)

// Verification failures. Install refuses ErrUnsigned and ErrNoTrustedKeys unless
// unsigned artifacts are explicitly allowed, and always refuses ErrBadSignature.
var (
	ErrUnsigned      = errors.New("artifact is not signed")
	ErrBadSignature  = errors.New("signature verification failed")
	ErrNoTrustedKeys = errors.New("no trusted public key configured")
)

const signatureSchema = "flotilla.fleeting.signature/v1"

// SignedStatement is the exact byte string an ed25519 signature covers. It binds the
// index digest to the plugin name and version so a signed artifact cannot be replayed
// under another tag or name.
func SignedStatement(indexDigest, name, version string) []byte {
	return []byte("flotilla-fleeting-plugin-signature/v1\nindex " + indexDigest + "\nname " + name + "\nversion " + version + "\n")
}

// signatureDoc is the JSON layer of a signature referrer. Name, Version and Index are
// informational: the verifier rebuilds the statement from what it resolved itself.
type signatureDoc struct {
	Schema    string `json:"schema"`
	KeyID     string `json:"key_id"`
	Index     string `json:"index_digest"`
	Name      string `json:"name"`
	Version   string `json:"version"`
	Signature string `json:"signature"`
}

// Sign attaches a signature of index (for plugin name and version) to dst as a
// referrer and returns the signature manifest's descriptor.
func Sign(ctx context.Context, dst content.Pusher, index ocispec.Descriptor, name, version string, key ed25519.PrivateKey) (ocispec.Descriptor, error) {
	pub := key.Public().(ed25519.PublicKey)
	doc := signatureDoc{
		Schema: signatureSchema, KeyID: KeyID(pub), Index: index.Digest.String(), Name: name, Version: version,
		Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(key, SignedStatement(index.Digest.String(), name, version))),
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("sign %s: %w", index.Digest, err)
	}
	layer, err := pushBlob(ctx, dst, SignatureMediaType, b)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("sign %s: push signature: %w", index.Digest, err)
	}
	subject := ocispec.Descriptor{MediaType: index.MediaType, Digest: index.Digest, Size: index.Size}
	desc, err := oras.PackManifest(ctx, dst, oras.PackManifestVersion1_1, SignatureArtifactType, oras.PackManifestOptions{
		Subject: &subject,
		Layers:  []ocispec.Descriptor{layer},
		// A fixed time keeps signing reproducible: same key, same artifact, same digest.
		ManifestAnnotations: map[string]string{annotationCreated: epoch},
	})
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("sign %s: push signature manifest: %w", index.Digest, err)
	}
	return desc, nil
}

// Verify checks that some signature referrer of index verifies, for name and version,
// under one of keys, and returns that key's ID. src must list referrers (a registry
// repository or an OCI layout).
func Verify(ctx context.Context, src content.ReadOnlyGraphStorage, index ocispec.Descriptor, name, version string, keys []ed25519.PublicKey) (string, error) {
	refs, err := registry.Referrers(ctx, src, index, SignatureArtifactType)
	if err != nil {
		return "", fmt.Errorf("list signatures of %s: %w", index.Digest, err)
	}
	if len(refs) == 0 {
		return "", fmt.Errorf("%w: no signature referrer on %s", ErrUnsigned, index.Digest)
	}
	if len(keys) == 0 {
		return "", fmt.Errorf("%w to verify %d signature(s) of %s", ErrNoTrustedKeys, len(refs), index.Digest)
	}
	statement := SignedStatement(index.Digest.String(), name, version)
	var problems []string
	for _, r := range refs {
		doc, err := fetchSignature(ctx, src, r)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(doc.Signature)
		if err != nil || len(sig) != ed25519.SignatureSize {
			problems = append(problems, fmt.Sprintf("signature %s: malformed", r.Digest))
			continue
		}
		trusted := false
		for _, k := range keys {
			if KeyID(k) != doc.KeyID {
				continue
			}
			trusted = true
			if ed25519.Verify(k, statement, sig) {
				return doc.KeyID, nil
			}
		}
		switch {
		case !trusted:
			problems = append(problems, fmt.Sprintf("signature %s: key %s is not trusted", r.Digest, doc.KeyID))
		case doc.Name != name || doc.Version != version || doc.Index != index.Digest.String():
			problems = append(problems, fmt.Sprintf("signature %s: signs %s %s (%s), not %s %s (%s)", r.Digest, doc.Name, doc.Version, doc.Index, name, version, index.Digest))
		default:
			problems = append(problems, fmt.Sprintf("signature %s by %s: does not verify (tampered)", r.Digest, doc.KeyID))
		}
	}
	return "", fmt.Errorf("%w for %s: %s", ErrBadSignature, index.Digest, strings.Join(problems, "; "))
}

func fetchSignature(ctx context.Context, src content.ReadOnlyStorage, desc ocispec.Descriptor) (signatureDoc, error) {
	var doc signatureDoc
	b, err := content.FetchAll(ctx, src, desc)
	if err != nil {
		return doc, fmt.Errorf("signature %s: %w", desc.Digest, err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return doc, fmt.Errorf("signature %s: %w", desc.Digest, err)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != SignatureMediaType || m.Layers[0].Size > 64<<10 {
		return doc, fmt.Errorf("signature %s: want one %s layer under 64 KiB", desc.Digest, SignatureMediaType)
	}
	lb, err := content.FetchAll(ctx, src, m.Layers[0])
	if err != nil {
		return doc, fmt.Errorf("signature %s: %w", desc.Digest, err)
	}
	dec := json.NewDecoder(bytes.NewReader(lb))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil || doc.Schema != signatureSchema {
		return doc, fmt.Errorf("signature %s: not a %s document", desc.Digest, signatureSchema)
	}
	return doc, nil
}
