package cachestore

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"cloud.google.com/go/storage"
	"golang.org/x/oauth2/google"

	"github.com/flotilla-ci/flotilla/host/config"
)

// EmulatorHostEnv is the variable the Google Cloud Storage libraries read for an
// emulator's address (host:port, or a URL with http:// or https://). When it is set,
// signed URLs name it instead of storage.googleapis.com, over plain HTTP unless it says
// https://.
const EmulatorHostEnv = "STORAGE_EMULATOR_HOST"

// gcsUploadContentType is signed into every PUT, as GitLab Runner does, so an upload
// must send exactly this Content-Type.
const gcsUploadContentType = "application/octet-stream"

// gcsMaxPresignTTL is the longest validity V4 signing allows.
const gcsMaxPresignTTL = 7 * 24 * time.Hour

// gcsStore signs V4 URLs for one Google Cloud Storage bucket with a service account's
// RSA key; it keeps the parsed key, so signing needs no I/O.
type gcsStore struct {
	bucket   string
	accessID string
	key      *rsa.PrivateKey
	// hostname and insecure come from EmulatorHostEnv; empty means Google's endpoint.
	hostname string
	insecure bool
}

// newGCS reads [runners.cache.gcs]: a service-account key from CredentialsFile (which
// takes precedence, as in GitLab Runner) or from AccessID and PrivateKey.
func newGCS(_ context.Context, c *config.Cache) (Store, error) {
	g := c.GCS
	if g == nil {
		return nil, errors.New("[runners.cache] Type gcs needs a [runners.cache.gcs] table with BucketName and CredentialsFile (or AccessID and PrivateKey)")
	}
	var errs []error
	if g.BucketName == "" {
		errs = append(errs, errors.New("[runners.cache.gcs] BucketName is empty: name the bucket that keeps the caches"))
	}
	s := &gcsStore{bucket: g.BucketName}
	var pemKey []byte
	switch {
	case g.CredentialsFile != "":
		id, key, err := readGCSCredentialsFile(g.CredentialsFile)
		if err != nil {
			errs = append(errs, err)
		}
		s.accessID, pemKey = id, key
	case g.AccessID != "" || g.PrivateKey != "":
		if g.AccessID == "" {
			errs = append(errs, errors.New("[runners.cache.gcs] AccessID is empty: set it to the service account's e-mail (client_email), or use CredentialsFile"))
		}
		if g.PrivateKey == "" {
			errs = append(errs, errors.New("[runners.cache.gcs] PrivateKey is empty: set it to the service account's PEM private key, or use CredentialsFile"))
		}
		s.accessID, pemKey = g.AccessID, []byte(g.PrivateKey)
	default:
		errs = append(errs, errors.New("[runners.cache.gcs] has no credentials: set CredentialsFile to a service-account JSON key, or AccessID and PrivateKey"))
	}
	if len(pemKey) > 0 {
		key, err := parseRSAKey(pemKey)
		if err != nil {
			where := "[runners.cache.gcs] PrivateKey"
			if g.CredentialsFile != "" {
				where = fmt.Sprintf("[runners.cache.gcs] CredentialsFile %s: private_key", g.CredentialsFile)
			}
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
		s.key = key
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if host := os.Getenv(EmulatorHostEnv); host != "" {
		// SignedURL puts STORAGE_EMULATOR_HOST's host in the URL by itself but keeps
		// https (it has no scheme of its own to go by), while the storage client treats
		// a bare host:port as plain HTTP; follow the client.
		s.insecure = !strings.HasPrefix(host, "https://")
		s.hostname = strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://")
	}
	return s, nil
}

// readGCSCredentialsFile returns client_email and private_key of a service-account JSON
// key file.
func readGCSCredentialsFile(path string) (accessID string, key []byte, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("[runners.cache.gcs] CredentialsFile: %w", err)
	}
	cfg, err := google.JWTConfigFromJSON(data)
	if err != nil {
		return "", nil, fmt.Errorf("[runners.cache.gcs] CredentialsFile %s: not a service-account JSON key (download one for the service account in the Cloud console): %w", path, err)
	}
	var missing []string
	if cfg.Email == "" {
		missing = append(missing, "client_email")
	}
	if len(cfg.PrivateKey) == 0 {
		missing = append(missing, "private_key")
	}
	if len(missing) > 0 {
		return "", nil, fmt.Errorf("[runners.cache.gcs] CredentialsFile %s: no %s: use a service-account JSON key", path, strings.Join(missing, " and "))
	}
	return cfg.Email, cfg.PrivateKey, nil
}

// parseRSAKey parses a PEM (or bare DER) RSA private key in PKCS#8 or PKCS#1 form, the
// forms Google issues service-account keys in. It is parsed once here rather than by
// SignedURL on every call, so a bad key is reported when the configuration loads.
func parseRSAKey(data []byte) (*rsa.PrivateKey, error) {
	der := data
	if block, _ := pem.Decode(data); block != nil {
		der = block.Bytes
	}
	if k, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("the key is a %T, not an RSA key", k)
		}
		return rk, nil
	}
	rk, err := x509.ParsePKCS1PrivateKey(der)
	if err != nil {
		return nil, errors.New("not a PEM RSA private key (-----BEGIN PRIVATE KEY-----)")
	}
	return rk, nil
}

// Describe names the bucket, and the emulator when STORAGE_EMULATOR_HOST sets one.
func (s *gcsStore) Describe() string {
	if s.hostname != "" {
		return fmt.Sprintf("gcs bucket %s at %s", s.bucket, s.hostname)
	}
	return "gcs bucket " + s.bucket
}

// Presign signs a GET or a PUT of object with V4 signing (GOOG4-RSA-SHA256) in the
// URL's query. A PUT signs Content-Type: application/octet-stream, which the uploader
// must send (Request.Header), with a Content-Length; no length or checksum is signed.
func (s *gcsStore) Presign(_ context.Context, method, object string, ttl time.Duration) (Request, error) {
	if ttl <= 0 || ttl > gcsMaxPresignTTL {
		return Request{}, fmt.Errorf("presign %s gs://%s/%s: validity %s out of range (above 0, at most %s)", method, s.bucket, object, ttl, gcsMaxPresignTTL)
	}
	opts := &storage.SignedURLOptions{
		GoogleAccessID: s.accessID,
		SignBytes:      s.sign,
		Method:         method,
		Expires:        time.Now().Add(ttl),
		Scheme:         storage.SigningSchemeV4,
		Hostname:       s.hostname,
		Insecure:       s.insecure,
	}
	header := http.Header{}
	switch method {
	case http.MethodGet:
	case http.MethodPut:
		opts.ContentType = gcsUploadContentType
		header.Set("Content-Type", gcsUploadContentType)
	default:
		return Request{}, fmt.Errorf("presign %s gs://%s/%s: only GET and PUT are signed", method, s.bucket, object)
	}
	u, err := storage.SignedURL(s.bucket, object, opts)
	if err != nil {
		return Request{}, fmt.Errorf("presign %s gs://%s/%s: %w", method, s.bucket, object, err)
	}
	return Request{Method: method, URL: u, Header: header}, nil
}

// sign is SignedURLOptions.SignBytes with the parsed key: RSASSA-PKCS1-v1_5 over
// SHA-256, what GOOG4-RSA-SHA256 names.
func (s *gcsStore) sign(b []byte) ([]byte, error) {
	sum := sha256.Sum256(b)
	return rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
}
