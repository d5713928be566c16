package cachestore

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	// blob rather than the azblob root package, which would link every client.
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/flotilla-ci/flotilla/host/config"
)

// azureDefaultStorageDomain is Azure's public blob service domain.
const azureDefaultStorageDomain = "blob.core.windows.net"

// azureStore signs service SAS URLs for the blobs of one container with the account's
// shared key.
type azureStore struct {
	account   string
	container string
	// service is the blob service URL: https://<account>.<domain>, or Endpoint.
	service *url.URL
	cred    *blob.SharedKeyCredential
}

// newAzure reads [runners.cache.azure].
func newAzure(_ context.Context, c *config.Cache) (Store, error) {
	a := c.Azure
	if a == nil {
		return nil, errors.New("[runners.cache] Type azure needs a [runners.cache.azure] table with AccountName, AccountKey and ContainerName")
	}
	var errs []error
	if a.AccountName == "" {
		errs = append(errs, errors.New("[runners.cache.azure] AccountName is empty: name the storage account"))
	}
	if a.AccountKey == "" {
		errs = append(errs, errors.New("[runners.cache.azure] AccountKey is empty: set one of the storage account's access keys"))
	}
	if a.ContainerName == "" {
		errs = append(errs, errors.New("[runners.cache.azure] ContainerName is empty: name the blob container that keeps the caches"))
	}
	s := &azureStore{account: a.AccountName, container: a.ContainerName}
	if a.AccountName != "" && a.AccountKey != "" {
		cred, err := blob.NewSharedKeyCredential(a.AccountName, a.AccountKey)
		if err != nil {
			// The library's message would quote nothing secret, but say what to fix.
			errs = append(errs, errors.New("[runners.cache.azure] AccountKey is not base64: copy an access key of the storage account as shown"))
		}
		s.cred = cred
	}
	raw := a.Endpoint
	if raw == "" {
		domain := a.StorageDomain
		if domain == "" {
			domain = azureDefaultStorageDomain
		}
		raw = "https://" + a.AccountName + "." + domain
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		errs = append(errs, fmt.Errorf("[runners.cache.azure] Endpoint %q: want the blob service URL, such as http://127.0.0.1:10000/devstoreaccount1", Redact(raw)))
	case u.RawQuery != "" || u.User != nil:
		errs = append(errs, errors.New("[runners.cache.azure] Endpoint: carries a query or user: give only the service URL, credentials go in AccountName and AccountKey"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	s.service = u
	return s, nil
}

// Describe names the container, the account and the service's host.
func (s *azureStore) Describe() string {
	return fmt.Sprintf("azure container %s in account %s at %s", s.container, s.account, s.service.Host)
}

// Presign signs a GET (read) or a PUT (create and write) of the blob object with a
// service SAS in the URL's query. A PUT is Put Blob: the uploader must send
// x-ms-blob-type: BlockBlob (Request.Header) and a Content-Length, and the body is then
// the whole blob (at most 5000 MiB in one request).
func (s *azureStore) Presign(_ context.Context, method, object string, ttl time.Duration) (Request, error) {
	if ttl <= 0 {
		return Request{}, fmt.Errorf("presign %s azure %s/%s: validity %s: must be above 0", method, s.container, object, ttl)
	}
	var perms sas.BlobPermissions
	header := http.Header{}
	switch method {
	case http.MethodGet:
		perms.Read = true
	case http.MethodPut:
		perms.Create, perms.Write = true, true
		// Put Blob creates any of the three blob types; the cache is a block blob.
		header.Set("x-ms-blob-type", "BlockBlob")
	default:
		return Request{}, fmt.Errorf("presign %s azure %s/%s: only GET and PUT are signed", method, s.container, object)
	}
	protocol := sas.ProtocolHTTPSandHTTP
	if s.service.Scheme == "https" {
		// A URL that leaks cannot then be replayed in the clear.
		protocol = sas.ProtocolHTTPS
	}
	qp, err := sas.BlobSignatureValues{
		Protocol:      protocol,
		ExpiryTime:    time.Now().Add(ttl).UTC(),
		Permissions:   perms.String(),
		ContainerName: s.container,
		BlobName:      object,
	}.SignWithSharedKey(s.cred)
	if err != nil {
		return Request{}, fmt.Errorf("presign %s azure %s/%s: %w", method, s.container, object, err)
	}
	// The path is built, not joined, so that object names keep their slashes
	// unescaped and nothing is cleaned away; url.URL escapes the rest.
	u := *s.service
	u.Path = s.service.Path + "/" + s.container + "/" + object
	u.RawQuery = qp.Encode()
	return Request{Method: method, URL: u.String(), Header: header}, nil
}
