package cachestore

import "testing"

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"http://127.0.0.1:7070/ci-cache/project/1/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature=abc",
			"http://127.0.0.1:7070/ci-cache/project/1/k"},
		{"https://acct.blob.core.windows.net/c/project/1/k?sv=2024&sig=secret%3D", "https://acct.blob.core.windows.net/c/project/1/k"},
		{"https://h/b/k?", "https://h/b/k"},
		{"https://h/b/k#frag", "https://h/b/k"},
		{"https://user:pass@h/b/k?sig=x", "https://h/b/k"},
		{"https://h/b/a%20b?sig=x", "https://h/b/a%20b"},
		{"https://h/b/k", "https://h/b/k"},
		// Unparseable (bad escape): still cut at the query and without user information.
		{"https://user:pass@h/b/%zz?sig=x", "https://h/b/%zz"},
		{"https://h/%zz#sig=x", "https://h/%zz"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := Redact(tt.in); got != tt.want {
			t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
