package plugins

import (
	"strings"
	"testing"
)

func TestParseReference(t *testing.T) {
	d := Defaults{Registry: "mirror.example:5000", Repository: "ci/plugins"}
	tests := []struct {
		in                   string
		registry, repo, name string
		constraint           string
		wantErr              string
		defaults             *Defaults
	}{
		{in: "aws", registry: "mirror.example:5000", repo: "ci/plugins", name: "aws", constraint: "latest"},
		{in: "aws", defaults: &Defaults{}, registry: BuiltinRegistry, repo: BuiltinRepository, name: "aws", constraint: "latest"},
		{in: "aws:1", registry: "mirror.example:5000", repo: "ci/plugins", name: "aws", constraint: "1"},
		{in: "aws:1.2", registry: "mirror.example:5000", repo: "ci/plugins", name: "aws", constraint: "1.2"},
		{in: "aws:1.2.3", registry: "mirror.example:5000", repo: "ci/plugins", name: "aws", constraint: "1.2.3"},
		{in: "aws:0.0.0-bleeding", registry: "mirror.example:5000", repo: "ci/plugins", name: "aws", constraint: "0.0.0-bleeding"},
		{in: "aws:latest", registry: "mirror.example:5000", repo: "ci/plugins", name: "aws", constraint: "latest"},
		{in: "santhanuv/fleeting-plugin-vmware-vsphere", registry: "mirror.example:5000", repo: "santhanuv", name: "fleeting-plugin-vmware-vsphere", constraint: "latest"},
		{in: "gitlab-org/fleeting/plugins/aws:2", registry: "mirror.example:5000", repo: "gitlab-org/fleeting/plugins", name: "aws", constraint: "2"},
		{in: "registry.gitlab.com/santhanuv/fleeting-plugin-vmware-vsphere:latest", registry: "registry.gitlab.com", repo: "santhanuv", name: "fleeting-plugin-vmware-vsphere", constraint: "latest"},
		{in: "127.0.0.1:5000/a/b/aws:1.0", registry: "127.0.0.1:5000", repo: "a/b", name: "aws", constraint: "1.0"},
		{in: "localhost/aws", registry: "localhost", repo: "", name: "aws", constraint: "latest"},
		{in: "[::1]:5000/p/aws", registry: "[::1]:5000", repo: "p", name: "aws", constraint: "latest"},
		{in: "", wantErr: "empty value"},
		{in: " aws", wantErr: "whitespace"},
		{in: "aws:", wantErr: "constraint"},
		{in: "aws:v1.2.3", wantErr: "constraint"},
		{in: "aws:1.2.3.4", wantErr: "constraint"},
		{in: "aws:01", wantErr: "leading zero"},
		{in: "aws:1.x", wantErr: "constraint"},
		{in: "aws:1.2-rc1", wantErr: "pre-release must be named exactly"},
		{in: "AWS", wantErr: "invalid path component"},
		{in: "a//aws", wantErr: "invalid path component"},
		{in: "host.example:99999/p/aws", wantErr: "invalid port"},
		{in: "host.example:/p/aws", wantErr: "invalid port"},
		{in: "ho_st.example/p/aws", wantErr: "invalid character"},
		{in: "localhost/", wantErr: "invalid path component"},
		{in: "p/aws-", wantErr: "invalid path component"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			dd := d
			if tt.defaults != nil {
				dd = *tt.defaults
			}
			ref, err := ParseReference(tt.in, dd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseReference(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseReference(%q): %v", tt.in, err)
			}
			if ref.Registry != tt.registry || ref.Repository != tt.repo || ref.Name != tt.name || ref.Constraint.String() != tt.constraint {
				t.Fatalf("ParseReference(%q) = %+v; want registry %q repo %q name %q constraint %q",
					tt.in, ref, tt.registry, tt.repo, tt.name, tt.constraint)
			}
			// The fully qualified form must parse back to the same reference.
			again, err := ParseReference(ref.String(), Defaults{})
			if err != nil {
				t.Fatalf("reparse %q: %v", ref.String(), err)
			}
			if again.Registry != ref.Registry || again.Repo() != ref.Repo() || again.Constraint != ref.Constraint {
				t.Fatalf("reparse %q = %+v, want %+v", ref.String(), again, ref)
			}
		})
	}
}

func TestDefaultsFromEnv(t *testing.T) {
	env := map[string]string{EnvRegistry: "r.example", EnvRepository: ""}
	d := DefaultsFromEnv(func(k string) string { return env[k] })
	if d.Registry != "r.example" || d.Repository != BuiltinRepository {
		t.Fatalf("DefaultsFromEnv = %+v", d)
	}
	// Explicit configuration wins over the environment.
	m := Defaults{Repository: "mine"}.Merge(d)
	if m.Registry != "r.example" || m.Repository != "mine" {
		t.Fatalf("Merge = %+v", m)
	}
}

// FuzzParseReference checks that the parser never panics, and that whatever it
// accepts round-trips through its fully qualified form.
func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"aws", "aws:1", "aws:1.2.3-rc.1", "a/b/c:latest", "127.0.0.1:5000/x/y:0", "[::1]:1/a", "localhost/a", "A:b:c", "::", "/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := ParseReference(s, Defaults{})
		if err != nil {
			return
		}
		if ref.Name == "" || ref.Registry == "" {
			t.Fatalf("ParseReference(%q) accepted with empty name or registry: %+v", s, ref)
		}
		again, err := ParseReference(ref.String(), Defaults{})
		if err != nil {
			t.Fatalf("ParseReference(%q) ok but its String %q does not parse: %v", s, ref.String(), err)
		}
		if again.String() != ref.String() {
			t.Fatalf("round trip %q -> %q -> %q", s, ref.String(), again.String())
		}
	})
}
