package cachestore

import (
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/config"
)

func TestObjectName(t *testing.T) {
	const token = "glrt-t1_abcdefghijklmnop"
	own := &config.Cache{Type: "s3"}
	shared := &config.Cache{Type: "s3", Shared: true}
	prefixed := &config.Cache{Type: "s3", Path: "ci/caches"}
	rooted := &config.Cache{Type: "s3", Path: "/node_modules", Shared: true}
	tests := []struct {
		name    string
		c       *config.Cache
		token   string
		key     string
		want    string
		wantErr string // fragment of the error; "" = no error
	}{
		{"runner namespace", own, token, "main-1", "runner/t1_abcdef/project/42/main-1", ""},
		{"shared", shared, token, "main-1", "project/42/main-1", ""},
		{"path prefix", prefixed, token, "main-1", "ci/caches/runner/t1_abcdef/project/42/main-1", ""},
		{"leading slash of Path kept, as GitLab joins it", rooted, token, "k", "/node_modules/project/42/k", ""},
		{"nil config: runner namespace", nil, token, "k", "runner/t1_abcdef/project/42/k", ""},
		{"key with directories", shared, token, "a/b/c", "project/42/a/b/c", ""},
		{"encoded slash and dot decoded", shared, token, "a%2fb%2E%2ec", "project/42/a/b..c", ""},
		{"upper-case encodings decoded", shared, token, "a%2Fb", "project/42/a/b", ""},
		{"encoded percent not decoded", shared, token, "a%252fb", "project/42/a%252fb", ""},
		{"backslashes are separators", shared, token, `a\b\c`, "project/42/a/b/c", ""},
		{"traversal stays in the project", shared, token, "../../../etc/passwd", "project/42/etc/passwd", ""},
		{"encoded traversal stays in the project", shared, token, "%2e%2e%2f%2e%2e%2fother", "project/42/other", ""},
		{"backslash traversal stays in the project", shared, token, `..\..\x`, "project/42/x", ""},
		{"inner traversal resolved", shared, token, "a/../b/./c", "project/42/b/c", ""},
		{"traversal into another project's runner", own, token, "../../43/k", "runner/t1_abcdef/project/42/43/k", ""},
		{"trailing whitespace trimmed", shared, token, "key \t", "project/42/key", ""},
		{"whitespace-only last segments dropped", shared, token, "a/b/ / \t", "project/42/a/b", ""},
		{"inner whitespace kept", shared, token, "a b/ c", "project/42/a b/ c", ""},
		{"trailing slash dropped", shared, token, "a/b/", "project/42/a/b", ""},
		{"dot-dot left by trimming is refused", shared, token, "a/.. ", "", "outside the project"},
		{"bare dot-dot left by trimming is refused", shared, token, ".. ", "", "outside the project"},
		{"traversal then whitespace segment", shared, token, "../ ", "", "empty once sanitised"},
		{"empty key", shared, token, "", "", "empty"},
		{"only separators", shared, token, "///", "", `"///" is empty once sanitised`},
		{"only traversal", shared, token, "../..", "", `"../.." is empty once sanitised`},
		{"only whitespace", shared, token, " \t ", "", "empty once sanitised"},
		{"no token without Shared", own, "", "k", "", "no runner token"},
		{"no token needed when Shared", shared, "", "k", "project/42/k", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ObjectName(tt.c, tt.token, 42, tt.key)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ObjectName(%q) = %q, %v; want error ~ %q", tt.key, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ObjectName(%q) = %q, %v; want %q", tt.key, got, err, tt.want)
			}
		})
	}
}
