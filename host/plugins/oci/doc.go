// Package oci packages, signs, pushes and installs fleeting plugins as OCI artifacts,
// using oras-go for the registry protocol and OCI image layouts.
//
// Artifact shape (one per plugin version, tagged with the version, no "v"):
//
//	index (application/vnd.oci.image.index.v1+json, artifactType ArtifactType)
//	  annotations: org.opencontainers.image.title = <name>, org.opencontainers.image.version = <version>
//	  manifests: one image manifest per os/arch[/variant], with Platform set
//	    artifactType ArtifactType, empty config, one layer:
//	    the plugin binary, media type BinaryMediaType
//
// Signature: a referrer of the index (an image manifest whose subject is the index,
// artifactType SignatureArtifactType) holding one SignatureMediaType layer, a JSON
// document with an ed25519 signature over a statement binding the index digest to the
// plugin's name and version (see SignedStatement). Binding name and version stops a
// validly signed old or different plugin from being served under another tag. The
// referrer travels with the index: registries without the referrers API get oras-go's
// tag-schema fallback (sha256-<hex>), and OCI layouts record it as a predecessor.
package oci
