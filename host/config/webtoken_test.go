package config

import (
	"strings"
	"testing"
)

// TestWebToken checks web_token, the operator page's credential: long enough, no
// stray spaces, useless without listen_address, and never quoted back in a message.
func TestWebToken(t *testing.T) {
	const listen = "listen_address = \"0.0.0.0:9252\"\n"
	tests := []struct {
		name string
		doc  string
		want []want
	}{
		{"unset", listen + okRunner, nil},
		{"good", listen + "web_token = \"0123456789abcdef-secret\"\n" + okRunner, nil},
		{"too short", listen + "web_token = \"short-secret\"\n" + okRunner,
			[]want{{"error 2:1 web_token", "too short (12 characters, at least 16)", "openssl rand -hex 20"}}},
		{"spaces", listen + "web_token = \" 0123456789abcdef-secret\"\n" + okRunner,
			[]want{{"error 2:1 web_token", "leading or trailing spaces", "remove the spaces"}}},
		{"without listen_address", "web_token = \"0123456789abcdef-secret\"\n" + okRunner,
			[]want{{"warning 1:1 web_token", "no effect without listen_address", "set listen_address"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			diags := checkDiagnostics(t, tt.doc, tt.want)
			for _, d := range diags {
				for _, secret := range []string{"short-secret", "0123456789abcdef-secret"} {
					if strings.Contains(d.String(), secret) {
						t.Errorf("diagnostic quotes the token: %s", d)
					}
				}
			}
		})
	}
	cfg, _, err := Parse("c.toml", []byte(listen+"web_token = \"0123456789abcdef-secret\"\n"+okRunner))
	if err != nil || cfg.WebToken != "0123456789abcdef-secret" {
		t.Errorf("web_token read as %q (%v)", cfg.WebToken, err)
	}
}
