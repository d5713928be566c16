package oci

// Media and artifact types of Flotilla plugin artifacts. GitLab's are not public, so
// these are Flotilla's own (docs/plugins-install.md).
const (
	// ArtifactType marks the index and per-platform manifests of a plugin.
	ArtifactType = "application/vnd.flotilla.fleeting.plugin.v1"
	// BinaryMediaType is the media type of the layer holding the plugin binary.
	BinaryMediaType = "application/vnd.flotilla.fleeting.plugin.v1+binary"
	// SignatureArtifactType marks a signature referrer.
	SignatureArtifactType = "application/vnd.flotilla.fleeting.signature.v1"
	// SignatureMediaType is the media type of the signature document layer.
	SignatureMediaType = "application/vnd.flotilla.fleeting.signature.v1+json"

	// AnnotationTitle and AnnotationVersion are set on the index.
	AnnotationTitle   = "org.opencontainers.image.title"
	AnnotationVersion = "org.opencontainers.image.version"
	annotationCreated = "org.opencontainers.image.created"
)
