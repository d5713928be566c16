package config

import (
	"strings"
	"testing"
)

// cacheRunner is a valid runner with a [runners.cache] table; the test cases append the
// table's keys and sub-tables.
const cacheRunner = okRunner + "  [runners.cache]\n"

func TestCheckCache(t *testing.T) {
	const c = "runners[0].cache"
	s3 := func(keys string) string {
		return cacheRunner + "    Type = \"s3\"\n    [runners.cache.s3]\n" + keys
	}
	tests := []struct {
		name string
		doc  string
		want []diag
	}{
		{"s3 with keys", s3("      ServerAddress = \"minio.example:9000\"\n      AccessKey = \"a\"\n      SecretKey = \"b\"\n      BucketName = \"ci\"\n      Insecure = true\n      PathStyle = true\n"), nil},
		{"amazon s3 with iam", s3("      AuthenticationType = \"iam\"\n      BucketName = \"ci\"\n      BucketLocation = \"eu-west-1\"\n      ServerSideEncryption = \"KMS\"\n      ServerSideEncryptionKeyID = \"alias/ci\"\n      DualStack = false\n"), nil},
		{"gcs with a credentials file", cacheRunner + "    Type = \"gcs\"\n    Path = \"ci\"\n    Shared = true\n    [runners.cache.gcs]\n      CredentialsFile = \"/etc/gitlab-runner/sa.json\"\n      BucketName = \"ci\"\n", nil},
		{"gcs with a key pair", cacheRunner + "    Type = \"gcs\"\n    [runners.cache.gcs]\n      AccessID = \"sa@p.iam.gserviceaccount.com\"\n      PrivateKey = \"-----BEGIN PRIVATE KEY-----\"\n      BucketName = \"ci\"\n", nil},
		{"azure", cacheRunner + "    Type = \"azure\"\n    MaxUploadedArchiveSize = 104857600\n    [runners.cache.azure]\n      AccountName = \"acct\"\n      AccountKey = \"a2V5\"\n      ContainerName = \"ci\"\n      Endpoint = \"http://127.0.0.1:10000/devstoreaccount1\"\n", nil},
		{"no Type: caches on the runner host", cacheRunner + "    Path = \"ci\"\n", nil},

		{"misspelt key", s3("      BuketName = \"ci\"\n      AccessKey = \"a\"\n      SecretKey = \"b\"\n"),
			[]diag{{"error", c + ".s3", "BucketName is not set", "BucketName"},
				{"warning", c + ".s3.BuketName", `unknown key "BuketName"`, `did you mean "BucketName"?`}}},
		{"unknown Type", cacheRunner + "    Type = \"s4\"\n",
			[]diag{{"error", c + ".Type", `unknown cache Type "s4"`, `did you mean "s3"?`}}},
		{"Type in capitals", cacheRunner + "    Type = \"S3\"\n    [runners.cache.s3]\n      BucketName = \"ci\"\n",
			[]diag{{"error", c + ".Type", `unknown cache Type "S3"`, `did you mean "s3"?`},
				{"warning", c + ".s3", `[runners.cache.s3] is ignored: Type is "S3"`, `set Type = "s3"`}}},
		{"Type without its table", cacheRunner + "    Type = \"gcs\"\n",
			[]diag{{"error", c, `Type = "gcs" needs a [runners.cache.gcs] table`, "CredentialsFile"}}},
		{"table without Type", cacheRunner + "    [runners.cache.s3]\n      BucketName = \"ci\"\n",
			[]diag{{"warning", c + ".s3", "[runners.cache.s3] is ignored: Type is not set", `set Type = "s3"`}}},
		{"table of another type", s3("      BucketName = \"ci\"\n      AuthenticationType = \"iam\"\n    [runners.cache.azure]\n      AccountName = \"acct\"\n"),
			[]diag{{"warning", c + ".azure", `[runners.cache.azure] is ignored: Type is "s3"`, `set Type = "azure"`}}},
		{"negative MaxUploadedArchiveSize", cacheRunner + "    MaxUploadedArchiveSize = -1\n",
			[]diag{{"error", c + ".MaxUploadedArchiveSize", "must not be negative, got -1", "0 for no limit"}}},

		{"s3 without bucket", s3("      AuthenticationType = \"iam\"\n"),
			[]diag{{"error", c + ".s3", "BucketName is not set", ""}}},
		{"AccessKey without SecretKey", s3("      BucketName = \"ci\"\n      AccessKey = \"a\"\n"),
			[]diag{{"error", c + ".s3.AccessKey", "AccessKey is set without SecretKey", "set SecretKey"}}},
		{"SecretKey without AccessKey", s3("      BucketName = \"ci\"\n      SecretKey = \"b\"\n"),
			[]diag{{"error", c + ".s3.SecretKey", "SecretKey is set without AccessKey", "set AccessKey"}}},
		{"access-key without keys", s3("      BucketName = \"ci\"\n      AuthenticationType = \"access-key\"\n"),
			[]diag{{"error", c + ".s3.AuthenticationType", `AuthenticationType = "access-key" needs AccessKey and SecretKey`, ""}}},
		{"unknown AuthenticationType", s3("      BucketName = \"ci\"\n      AuthenticationType = \"IAM-role\"\n"),
			[]diag{{"error", c + ".s3.AuthenticationType", `unknown AuthenticationType "IAM-role"`, `"iam"`}}},
		{"misspelt AuthenticationType", s3("      BucketName = \"ci\"\n      AuthenticationType = \"acces-key\"\n      AccessKey = \"a\"\n      SecretKey = \"b\"\n"),
			[]diag{{"error", c + ".s3.AuthenticationType", `unknown AuthenticationType "acces-key"`, `did you mean "access-key"?`}}},
		{"iam with keys", s3("      BucketName = \"ci\"\n      AuthenticationType = \"IAM\"\n      AccessKey = \"a\"\n      SecretKey = \"b\"\n"),
			[]diag{{"warning", c + ".s3.AuthenticationType", `AccessKey and SecretKey are ignored with AuthenticationType = "IAM"`, "remove AccessKey"}}},
		{"ServerSideEncryption ignoring case", s3("      BucketName = \"ci\"\n      AuthenticationType = \"iam\"\n      ServerSideEncryption = \"aes256\"\n"), nil},
		{"unknown ServerSideEncryption", s3("      BucketName = \"ci\"\n      AuthenticationType = \"iam\"\n      ServerSideEncryption = \"SSE-C\"\n"),
			[]diag{{"error", c + ".s3.ServerSideEncryption", `unknown ServerSideEncryption "SSE-C"`, "S3 (AES256), KMS"}}},
		{"KMS without a key", s3("      BucketName = \"ci\"\n      AuthenticationType = \"iam\"\n      ServerSideEncryption = \"kms\"\n"),
			[]diag{{"error", c + ".s3.ServerSideEncryption", `ServerSideEncryption = "kms" needs ServerSideEncryptionKeyID`, "KMS key"}}},
		{"ServerAddress as a URL", s3("      BucketName = \"ci\"\n      AuthenticationType = \"iam\"\n      ServerAddress = \"https://minio.example\"\n"),
			[]diag{{"error", c + ".s3.ServerAddress", `ServerAddress "https://minio.example" is not host[:port]`, "Insecure = true"}}},
		{"RoleARN not used", s3("      BucketName = \"ci\"\n      AuthenticationType = \"iam\"\n      RoleARN = \"arn:aws:iam::1:role/r\"\n"),
			[]diag{{"warning", c + ".s3.RoleARN", "RoleARN is not used", ""}}},

		{"gcs without credentials", cacheRunner + "    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"ci\"\n",
			[]diag{{"error", c + ".gcs", "no credentials", "CredentialsFile"}}},
		{"gcs AccessID without PrivateKey", cacheRunner + "    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"ci\"\n      AccessID = \"sa@p\"\n",
			[]diag{{"error", c + ".gcs.AccessID", "AccessID is set without PrivateKey", ""}}},
		{"gcs PrivateKey without AccessID", cacheRunner + "    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"ci\"\n      PrivateKey = \"k\"\n",
			[]diag{{"error", c + ".gcs.PrivateKey", "PrivateKey is set without AccessID", ""}}},
		{"gcs both kinds of credentials", cacheRunner + "    Type = \"gcs\"\n    [runners.cache.gcs]\n      BucketName = \"ci\"\n      CredentialsFile = \"sa.json\"\n      AccessID = \"sa@p\"\n",
			[]diag{{"warning", c + ".gcs.CredentialsFile", "AccessID and PrivateKey are ignored", ""}}},
		{"gcs without bucket", cacheRunner + "    Type = \"gcs\"\n    [runners.cache.gcs]\n      CredentialsFile = \"sa.json\"\n",
			[]diag{{"error", c + ".gcs", "BucketName is not set", ""}}},

		{"azure without anything", cacheRunner + "    Type = \"azure\"\n    [runners.cache.azure]\n",
			[]diag{{"error", c + ".azure", "AccountName is not set", ""},
				{"error", c + ".azure", "AccountKey is not set", "signs the URLs with the storage account's key"},
				{"error", c + ".azure", "ContainerName is not set", ""}}},
		{"azure Endpoint not a URL", cacheRunner + "    Type = \"azure\"\n    [runners.cache.azure]\n      AccountName = \"a\"\n      AccountKey = \"k\"\n      ContainerName = \"c\"\n      Endpoint = \"127.0.0.1:10000\"\n",
			[]diag{{"error", c + ".azure.Endpoint", `Endpoint "127.0.0.1:10000" is not an http(s) URL`, "http://"}}},
		{"azure Endpoint without host", cacheRunner + "    Type = \"azure\"\n    [runners.cache.azure]\n      AccountName = \"a\"\n      AccountKey = \"k\"\n      ContainerName = \"c\"\n      Endpoint = \"https:///acct\"\n",
			[]diag{{"error", c + ".azure.Endpoint", "is not an http(s) URL", ""}}},
		{"cache key of the wrong type", cacheRunner + "    Shared = \"yes\"\n",
			[]diag{{"error", c + ".Shared", "want boolean", ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkDiagTable(t, tt.doc, tt.want) })
	}
}

// TestCheckCacheNoSecrets: no diagnostic repeats a credential's value.
func TestCheckCacheNoSecrets(t *testing.T) {
	doc := cacheRunner + "    Type = \"s3\"\n    [runners.cache.s3]\n      AuthenticationType = \"iam\"\n      AccessKey = \"AKIA-SECRET-ID\"\n      SecretKey = \"very-secret-value\"\n" +
		"    [runners.cache.azure]\n      AccountKey = \"azure-secret-key\"\n"
	_, diags, _ := Parse("c.toml", []byte(doc))
	if len(diags) == 0 {
		t.Fatal("want diagnostics")
	}
	for _, d := range diags {
		for _, secret := range []string{"AKIA-SECRET-ID", "very-secret-value", "azure-secret-key"} {
			if strings.Contains(d.String(), secret) {
				t.Errorf("diagnostic shows a credential: %s", d)
			}
		}
	}
}
