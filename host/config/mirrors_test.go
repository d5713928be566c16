package config

import (
	"fmt"
	"strings"
	"testing"
)

func TestRegistryMirrorHost(t *testing.T) {
	tests := []struct {
		in, host, err string
	}{
		{in: "https://mirror.example.com", host: "mirror.example.com"},
		{in: "http://192.168.1.10:6000/", host: "192.168.1.10:6000"},
		{in: "Mirror.Example.com:5000", host: "mirror.example.com:5000"},
		{in: "127.0.0.1:5000", host: "127.0.0.1:5000"},
		{in: "[::1]:5000", host: "[::1]:5000"},
		{in: "mirror", host: "mirror"},
		{in: "", err: "empty mirror"},
		{in: "ftp://mirror.example.com", err: `scheme "ftp" is not http or https`},
		{in: "https://user:hunter2@mirror.example.com", err: "user info is not allowed"},
		{in: "https://mirror.example.com/hub", err: "a path, query or fragment is not supported"},
		{in: "mirror.example.com/hub", err: "is not a host name"},
		{in: "mirror.example.com:http", err: `port "http" is not a number`},
		{in: "mirror.example.com:", err: "port"},
		{in: "https://", err: "no host"},
		{in: "mirror_1.example.com", err: "is not a host name"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			host, err := RegistryMirrorHost(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("error quotes the password: %v", err)
				}
				return
			}
			if err != nil || host != tt.host {
				t.Errorf("got %q, %v; want %q", host, err, tt.host)
			}
		})
	}
}

// TestRegistryMirrorsCheck: every bad registry_mirrors entry is reported at once, by
// its position, with what to write instead.
func TestRegistryMirrorsCheck(t *testing.T) {
	doc := okRunner + "  [runners.docker]\n    registry_mirrors = [\"https://mirror.example.com\", \"ftp://x\", \"127.0.0.1:5000\", \"https://a.example.com/path\"]\n"
	_, diags, err := Parse("c.toml", []byte(doc))
	if err == nil {
		t.Fatal("bad mirrors accepted")
	}
	var got []string
	for _, d := range diags {
		got = append(got, fmt.Sprintf("%s %s | %s | %s", d.Severity, d.Path, d.Message, d.Hint))
	}
	want := []string{
		`error runners[0].docker.registry_mirrors[1] | mirror "ftp://x": scheme "ftp" is not http or https`,
		`error runners[0].docker.registry_mirrors[3] | mirror "https://a.example.com/path": a path`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d diagnostics, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) || !strings.Contains(got[i], `"mirror.example.com:5000"`) {
			t.Errorf("diagnostic %d:\n got  %s\n want %s… with the hint", i, got[i], w)
		}
	}
	if _, diags, err := Parse("c.toml", []byte(okRunner+"  [runners.docker]\n    registry_mirrors = [\"https://mirror.example.com\", \"10.0.0.5:5000\"]\n")); err != nil || len(diags) != 0 {
		t.Errorf("good mirrors: %v %v", err, diags)
	}
}
