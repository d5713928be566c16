// Package cachestore is the shared job cache in object storage ([runners.cache] of
// config.toml): Amazon S3 and S3-compatible stores, Google Cloud Storage and Azure Blob
// Storage. It signs requests (pre-signed URLs) that the instance makes itself, so cache
// archives go between the instance and the store and never through the runner host,
// and it names objects with GitLab Runner's layout, so a team that switches runners
// keeps its caches.
package cachestore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
)

// Request is a signed HTTP request for one object that anyone holding it can make until
// it expires: no further credentials are needed.
type Request struct {
	Method string
	URL    string
	// Header must be sent with the request (the signature may cover it).
	Header http.Header
}

// Store signs requests for the objects of one bucket or container.
type Store interface {
	// Describe names the store for messages, without credentials: "s3 bucket ci-cache
	// at 127.0.0.1:7070".
	Describe() string
	// Presign signs a request for object: GET downloads it, PUT uploads it (replacing
	// it). The request is valid for ttl.
	Presign(ctx context.Context, method, object string, ttl time.Duration) (Request, error)
}

// ErrNoStore means the configuration keeps caches on the runner host.
var ErrNoStore = errors.New("no shared cache configured")

// New returns the store [runners.cache] describes, or ErrNoStore when its Type is empty.
func New(ctx context.Context, c *config.Cache) (Store, error) {
	if c == nil || c.Type == "" {
		return nil, ErrNoStore
	}
	switch c.Type {
	case "s3":
		return newS3(ctx, c)
	case "gcs":
		return newGCS(ctx, c)
	case "azure":
		return newAzure(ctx, c)
	}
	return nil, fmt.Errorf("[runners.cache] Type %q: use s3, gcs or azure", c.Type)
}
