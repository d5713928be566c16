package storetest

import (
	"context"
	"io"
	"net"
	"sort"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"github.com/flotilla-ci/flotilla/host/config"
)

// The account of every Azure store is Azurite's built-in development account, whose
// name and key Microsoft publishes (they open nothing but a local emulator);
// AzureContainer is the container the tests use.
const (
	AzureAccount   = "devstoreaccount1"
	AzureKey       = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	AzureContainer = "ci-cache"
)

// AzureStore is a running Azurite, Microsoft's emulator of Azure Blob Storage. Unlike
// the GCS emulator it checks shared-key and SAS signatures as Azure does, so a URL
// signed with the wrong key is refused (403).
type AzureStore struct {
	// Cache is the [runners.cache] of a runner that uses the store: Type azure, the
	// development account and its key, the container (which exists, empty) and
	// Endpoint, the path-style service URL http://<Addr>/devstoreaccount1.
	Cache *config.Cache
	// Addr is host:port of the blob service.
	Addr string
	// Dir is Azurite's workspace (its metadata database and blob data).
	Dir string

	client *azblob.Client
}

// Azure starts azurite-blob on a free loopback port for the duration of the test, with
// one empty container. It skips the test when azurite-blob is not on PATH (see
// RequireEnv).
func Azure(t testing.TB) *AzureStore {
	t.Helper()
	bin := LookPath(t, "azurite-blob", "make test-tools installs it with npm")
	s := &AzureStore{Addr: FreeAddr(t), Dir: t.TempDir()}
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		t.Fatalf("free address %s: %v", s.Addr, err)
	}
	// --skipApiVersionCheck: the SDK may speak a newer API version than this Azurite
	// knows. --loose: ignore headers Azurite does not implement rather than fail.
	// --disableTelemetry: Azurite would otherwise report usage over the network.
	p := Start(t, bin, "--blobHost", host, "--blobPort", port, "--location", s.Dir,
		"--silent", "--skipApiVersionCheck", "--loose", "--disableTelemetry")
	p.WaitListening(t, s.Addr)
	endpoint := "http://" + s.Addr + "/" + AzureAccount
	s.Cache = &config.Cache{Type: "azure", Azure: &config.CacheAzure{
		AccountName:   AzureAccount,
		AccountKey:    AzureKey,
		ContainerName: AzureContainer,
		Endpoint:      endpoint,
	}}
	cred, err := azblob.NewSharedKeyCredential(AzureAccount, AzureKey)
	if err != nil {
		t.Fatalf("azurite credential: %v", err)
	}
	s.client, err = azblob.NewClientWithSharedKeyCredential(endpoint, cred, nil)
	if err != nil {
		t.Fatalf("client of azurite at %s: %v", s.Addr, err)
	}
	if _, err := s.client.CreateContainer(context.Background(), AzureContainer, nil); err != nil {
		t.Fatalf("create container %s on azurite at %s: %v", AzureContainer, s.Addr, err)
	}
	return s
}

// Object returns the bytes of the blob name in the container, and false when there is
// no such blob.
func (s *AzureStore) Object(t testing.TB, name string) ([]byte, bool) {
	t.Helper()
	out, err := s.client.DownloadStream(context.Background(), AzureContainer, name, nil)
	if bloberror.HasCode(err, bloberror.BlobNotFound) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("read azure %s/%s: %v", AzureContainer, name, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatalf("read azure %s/%s: %v", AzureContainer, name, err)
	}
	return b, true
}

// Put stores data as the blob name, bypassing the code under test (to seed a cache).
func (s *AzureStore) Put(t testing.TB, name string, data []byte) {
	t.Helper()
	if _, err := s.client.UploadBuffer(context.Background(), AzureContainer, name, data, nil); err != nil {
		t.Fatalf("write azure %s/%s: %v", AzureContainer, name, err)
	}
}

// List returns the names of the blobs in the container that start with prefix, sorted.
func (s *AzureStore) List(t testing.TB, prefix string) []string {
	t.Helper()
	var names []string
	pages := s.client.NewListBlobsFlatPager(AzureContainer, &azblob.ListBlobsFlatOptions{Prefix: &prefix})
	for pages.More() {
		page, err := pages.NextPage(context.Background())
		if err != nil {
			t.Fatalf("list azure %s/%s: %v", AzureContainer, prefix, err)
		}
		for _, b := range page.Segment.BlobItems {
			names = append(names, *b.Name)
		}
	}
	sort.Strings(names)
	return names
}
