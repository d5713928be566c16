package config

import (
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/flotilla-ci/flotilla/host/internal/didyoumean"
)

// knownCacheTypes are [runners.cache] Type values, with the sub-table each reads.
var knownCacheTypes = []string{"s3", "gcs", "azure"}

// knownS3AuthTypes are AuthenticationType values of [runners.cache.s3] (compared
// ignoring case, as GitLab Runner does).
var knownS3AuthTypes = []string{"access-key", "iam"}

// knownS3Encryptions are ServerSideEncryption values (ignoring case), GitLab Runner's
// names and their aliases; the KMS ones need ServerSideEncryptionKeyID.
var (
	knownS3Encryptions = []string{"S3", "AES256", "KMS", "aws:kms", "DSSE-KMS", "aws:kms:dsse"}
	kmsS3Encryptions   = []string{"KMS", "AWS:KMS", "DSSE-KMS", "AWS:KMS:DSSE"}
)

// cache checks [runners.cache]. Only the table of Type is read; the stores' own
// credentials are checked when the runner starts (a CredentialsFile is not read here).
func (v *validator) cache(path string, c *Cache) {
	if c.MaxUploadedArchiveSize < 0 {
		v.errorf(path+".MaxUploadedArchiveSize", "use 0 for no limit or a size in bytes",
			"MaxUploadedArchiveSize must not be negative, got %d", c.MaxUploadedArchiveSize)
	}
	switch {
	case c.Type == "":
	case !slices.Contains(knownCacheTypes, c.Type):
		hint := "use s3, gcs or azure, or remove Type to keep caches on the runner host"
		if s := didyoumean.Closest(c.Type, knownCacheTypes); s != "" {
			hint = fmt.Sprintf("did you mean %q?", s)
		}
		v.errorf(path+".Type", hint, "unknown cache Type %q", c.Type)
	}
	tables := map[string]bool{"s3": c.S3 != nil, "gcs": c.GCS != nil, "azure": c.Azure != nil}
	for _, typ := range knownCacheTypes {
		switch {
		case typ == c.Type && !tables[typ]:
			v.errorf(path, fmt.Sprintf("add a [runners.cache.%s] table", typ)+cacheTableKeys[typ],
				"Type = %q needs a [runners.cache.%s] table", typ, typ)
		case typ != c.Type && tables[typ]:
			hint := fmt.Sprintf("set Type = %q to use it, or remove it", typ)
			msg := fmt.Sprintf("[runners.cache.%s] is ignored: Type is %q", typ, c.Type)
			if c.Type == "" {
				msg = fmt.Sprintf("[runners.cache.%s] is ignored: Type is not set, so caches stay on the runner host", typ)
			}
			v.warnf(path+"."+typ, hint, "%s", msg)
		}
	}
	switch c.Type {
	case "s3":
		if c.S3 != nil {
			v.cacheS3(path+".s3", c.S3)
		}
	case "gcs":
		if c.GCS != nil {
			v.cacheGCS(path+".gcs", c.GCS)
		}
	case "azure":
		if c.Azure != nil {
			v.cacheAzure(path+".azure", c.Azure)
		}
	}
}

// cacheTableKeys lists, for a hint, the keys a store's table needs.
var cacheTableKeys = map[string]string{
	"s3":    " with BucketName, ServerAddress (unless Amazon S3) and AccessKey/SecretKey or AuthenticationType = \"iam\"",
	"gcs":   " with BucketName and CredentialsFile (or AccessID and PrivateKey)",
	"azure": " with AccountName, AccountKey and ContainerName",
}

func (v *validator) cacheS3(path string, s *CacheS3) {
	if s.BucketName == "" {
		v.errorf(path, "set BucketName to the bucket that holds the caches", "BucketName is not set")
	}
	if strings.Contains(s.ServerAddress, "://") || strings.Contains(s.ServerAddress, "/") {
		v.errorf(path+".ServerAddress", `write host[:port] only, e.g. "minio.example.com:9000"; set Insecure = true for http`,
			"ServerAddress %q is not host[:port]", s.ServerAddress)
	}
	auth := strings.ToLower(s.AuthenticationType)
	switch {
	case auth == "iam":
		if s.AccessKey != "" || s.SecretKey != "" {
			v.warnf(path+".AuthenticationType", "remove AccessKey and SecretKey, or use AuthenticationType = \"access-key\"",
				"AccessKey and SecretKey are ignored with AuthenticationType = %q: the credentials come from the AWS SDK's default chain (environment, profile, instance role)", s.AuthenticationType)
		}
	case auth != "" && auth != "access-key":
		hint := `use "access-key" (AccessKey and SecretKey) or "iam" (the AWS SDK's default credential chain)`
		if sug := didyoumean.Closest(auth, knownS3AuthTypes); sug != "" {
			hint = fmt.Sprintf("did you mean %q?", sug)
		}
		v.errorf(path+".AuthenticationType", hint, "unknown AuthenticationType %q", s.AuthenticationType)
	case s.AccessKey != "" && s.SecretKey == "":
		v.errorf(path+".AccessKey", "set SecretKey too, or AuthenticationType = \"iam\" to use the AWS SDK's credentials", "AccessKey is set without SecretKey")
	case s.SecretKey != "" && s.AccessKey == "":
		v.errorf(path+".SecretKey", "set AccessKey too, or AuthenticationType = \"iam\" to use the AWS SDK's credentials", "SecretKey is set without AccessKey")
	case auth == "access-key" && s.AccessKey == "":
		v.errorf(path+".AuthenticationType", "set AccessKey and SecretKey, or use AuthenticationType = \"iam\"",
			"AuthenticationType = %q needs AccessKey and SecretKey", s.AuthenticationType)
	}
	if sse := s.ServerSideEncryption; sse != "" {
		switch {
		case !slices.ContainsFunc(knownS3Encryptions, func(k string) bool { return strings.EqualFold(k, sse) }):
			v.errorf(path+".ServerSideEncryption", "use S3 (AES256), KMS or DSSE-KMS, or remove it for the bucket's default",
				"unknown ServerSideEncryption %q", sse)
		case slices.Contains(kmsS3Encryptions, strings.ToUpper(sse)) && s.ServerSideEncryptionKeyID == "":
			v.errorf(path+".ServerSideEncryption", "set ServerSideEncryptionKeyID to the KMS key's ID, alias or ARN",
				"ServerSideEncryption = %q needs ServerSideEncryptionKeyID", sse)
		}
	}
	for _, k := range []string{"RoleARN", "UploadRoleARN"} {
		if v.set(path + "." + k) {
			v.warnf(path+"."+k, "remove it; the runner signs with its own credentials",
				"%s is not used by Flotilla", k)
		}
	}
}

func (v *validator) cacheGCS(path string, g *CacheGCS) {
	if g.BucketName == "" {
		v.errorf(path, "set BucketName to the bucket that holds the caches", "BucketName is not set")
	}
	keyPair := g.AccessID != "" || g.PrivateKey != ""
	switch {
	case g.CredentialsFile != "" && keyPair:
		v.warnf(path+".CredentialsFile", "remove AccessID and PrivateKey, or CredentialsFile",
			"AccessID and PrivateKey are ignored: CredentialsFile is set and takes precedence")
	case g.CredentialsFile != "":
	case g.AccessID == "" && g.PrivateKey == "":
		v.errorf(path, "set CredentialsFile to a service account's JSON key, or AccessID and PrivateKey",
			"no credentials: the signed URLs need a service account's key")
	case g.AccessID == "":
		v.errorf(path+".PrivateKey", "set AccessID to the service account's e-mail address", "PrivateKey is set without AccessID")
	case g.PrivateKey == "":
		v.errorf(path+".AccessID", "set PrivateKey to the service account's PEM key, or use CredentialsFile", "AccessID is set without PrivateKey")
	}
}

func (v *validator) cacheAzure(path string, a *CacheAzure) {
	for _, k := range []struct{ name, value, hint string }{
		{"AccountName", a.AccountName, "set AccountName to the storage account's name"},
		{"AccountKey", a.AccountKey, "set AccountKey: Flotilla signs the URLs with the storage account's key"},
		{"ContainerName", a.ContainerName, "set ContainerName to the blob container that holds the caches"},
	} {
		if k.value == "" {
			v.errorf(path, k.hint, "%s is not set", k.name)
		}
	}
	if a.Endpoint != "" {
		if u, err := url.Parse(a.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			v.errorf(path+".Endpoint", `write the blob service's URL, e.g. "http://127.0.0.1:10000/devstoreaccount1"`,
				"Endpoint %q is not an http(s) URL", a.Endpoint)
		}
	}
}
