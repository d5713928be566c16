package dockerauth

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/moby/api/pkg/authconfig"

	"github.com/flotilla-ci/flotilla/host/internal/credhelpertest"
)

func TestRegistry(t *testing.T) {
	tests := map[string]string{
		"alpine":                               DockerHub,
		"team/app:1":                           DockerHub,
		"docker.io/library/alpine:3":           DockerHub,
		"index.docker.io/team/app":             DockerHub,
		"registry.example.com/team/app:1":      "registry.example.com",
		"127.0.0.1:5000/app@sha256:" + hex64(): "127.0.0.1:5000",
		"localhost/app":                        "localhost",
	}
	for img, want := range tests {
		if got, err := Registry(img); err != nil || got != want {
			t.Errorf("Registry(%q) = %q, %v; want %q", img, got, err, want)
		}
	}
	if _, err := Registry("Not A Name"); err == nil || !strings.Contains(err.Error(), `"Not A Name"`) {
		t.Errorf("bad name: %v", err)
	}
}

func hex64() string { return strings.Repeat("ab", 32) }

func TestNormalizeHost(t *testing.T) {
	tests := map[string]string{
		"https://index.docker.io/v1/":    DockerHub,
		"registry-1.docker.io":           DockerHub,
		"docker.io":                      DockerHub,
		"http://Registry.Example.com/v2": "registry.example.com",
		"registry.example.com:5000":      "registry.example.com:5000",
		"https://127.0.0.1:5000":         "127.0.0.1:5000",
	}
	for in, want := range tests {
		if got := NormalizeHost(in); got != want {
			t.Errorf("NormalizeHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestResolveAuths: auths entries in their forms, matched the way Docker matches
// them, and the sources asked in GitLab's order.
func TestResolveAuths(t *testing.T) {
	job := `{"auths": {"https://index.docker.io/v1/": {"auth": "` + b64("hubuser:hubpass") + `"},
		"registry.example.com": {"username": "jobuser", "password": "jobpass"}}}`
	env := `{"auths": {"https://registry.example.com/v2/": {"auth": "` + b64("envuser:envpass") + `"},
		"other.example.com:5000": {"identitytoken": "idtok"},
		"empty.example.com": {},
		"bad.example.com": {"auth": "bm9jb2xvbg=="}}}`
	file := filepath.Join(t.TempDir(), "config.json")
	os.WriteFile(file, []byte(`{"auths": {"empty.example.com": {"auth": "`+b64("fileuser:filepass")+`"},
		"bad.example.com": {"auth": "`+b64("fileuser:x")+`"}}}`), 0o600)
	sources, err := Sources(job, env, file)
	if err != nil || len(sources) != 3 {
		t.Fatalf("Sources: %d, %v", len(sources), err)
	}
	tests := []struct {
		host, from, user, pass, token string
		note                          string
	}{
		{"docker.io", "DOCKER_AUTH_CONFIG (job variable)", "hubuser", "hubpass", "", ""},
		{"index.docker.io", "DOCKER_AUTH_CONFIG (job variable)", "hubuser", "hubpass", "", ""},
		{"registry.example.com", "DOCKER_AUTH_CONFIG (job variable)", "jobuser", "jobpass", "", ""},
		{"other.example.com:5000", "DOCKER_AUTH_CONFIG (runner environment)", "", "", "idtok", ""},
		// An empty entry is what `docker login` leaves with a credsStore: no credentials.
		{"empty.example.com", file, "fileuser", "filepass", "", ""},
		{"bad.example.com", file, "fileuser", "x", "", `auths entry "bad.example.com" of DOCKER_AUTH_CONFIG (runner environment): auth is not base64 of user:password`},
		{"none.example.com", "", "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			c, notes := Resolve(context.Background(), sources, tt.host)
			if tt.from == "" {
				if c != nil {
					t.Fatalf("got credentials from %s", c.From)
				}
				return
			}
			if c == nil {
				t.Fatalf("no credentials; notes %q", notes)
			}
			if c.From != tt.from || c.Auth.Username != tt.user || c.Auth.Password != tt.pass || c.Auth.IdentityToken != tt.token {
				t.Errorf("got %+v from %s", c.Auth, c.From)
			}
			if (tt.note == "") != (len(notes) == 0) || tt.note != "" && !strings.Contains(strings.Join(notes, "\n"), tt.note) {
				t.Errorf("notes %q, want %q", notes, tt.note)
			}
			h, err := c.Header()
			if err != nil {
				t.Fatal(err)
			}
			back, err := authconfig.Decode(h)
			if err != nil || back.Username != tt.user || back.Password != tt.pass {
				t.Errorf("header decodes to %+v, %v", back, err)
			}
		})
	}
}

// TestResolveHelpers: credHelpers and credsStore run a real helper program on PATH,
// asked for the registry host (Docker Hub's login address for Docker Hub); a helper
// without the credentials passes on to the next source, a failing one is a note that
// says why without its stderr, and a missing one says that it is not on PATH.
func TestResolveHelpers(t *testing.T) {
	h := credhelpertest.Install(t, "flotillatest", map[string]credhelpertest.Cred{
		"registry.example.com":        {Username: "helperuser", Secret: "helpersecret"},
		"https://index.docker.io/v1/": {Username: "<token>", Secret: "hubtoken"},
		"locked.example.com":          {Fail: "keyring is locked"},
	})
	job := `{"credHelpers": {"registry.example.com": "flotillatest", "locked.example.com": "flotillatest",
		"gone.example.com": "absent"}, "auths": {"locked.example.com": {"auth": "` + b64("fallback:pw") + `"}}}`
	env := `{"credsStore": "flotillatest", "auths": {"nothelper.example.com": {"auth": "` + b64("envuser:envpass") + `"}}}`
	sources, err := Sources(job, env, "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host, from, user, pass, token, note string
		asked                               []string
	}{
		{host: "registry.example.com", from: "credential helper docker-credential-flotillatest (credHelpers of DOCKER_AUTH_CONFIG (job variable))",
			user: "helperuser", pass: "helpersecret", asked: []string{"registry.example.com"}},
		{host: "docker.io", from: "credential helper docker-credential-flotillatest (credsStore of DOCKER_AUTH_CONFIG (runner environment))",
			token: "hubtoken", asked: []string{"https://index.docker.io/v1/"}},
		// The helper fails: the same source's auths entry is next.
		{host: "locked.example.com", from: "DOCKER_AUTH_CONFIG (job variable)", user: "fallback", pass: "pw",
			note:  "credential helper docker-credential-flotillatest (credHelpers of DOCKER_AUTH_CONFIG (job variable)) for locked.example.com failed: error getting credentials - err: exit status 1, out: `keyring is locked`",
			asked: []string{"locked.example.com"}},
		{host: "gone.example.com", note: "docker-credential-absent is not on the runner's PATH", asked: []string{"gone.example.com"}},
		// The helper has nothing for the registry: no credentials, and nothing to note.
		{host: "unknown.example.com", asked: []string{"unknown.example.com"}},
		// auths comes before credsStore in the same source.
		{host: "nothelper.example.com", from: "DOCKER_AUTH_CONFIG (runner environment)", user: "envuser", pass: "envpass"},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			before := len(h.Asked(t))
			c, notes := Resolve(context.Background(), sources, tt.host)
			all := strings.Join(notes, "\n")
			if tt.note != "" && !strings.Contains(all, tt.note) || tt.note == "" && all != "" {
				t.Errorf("notes %q, want %q", all, tt.note)
			}
			if strings.Contains(all, credhelpertest.StderrMarker) {
				t.Errorf("a note carries the helper's stderr: %q", all)
			}
			if got := h.Asked(t)[before:]; !slices.Equal(got, tt.asked) {
				t.Errorf("helper asked for %q, want %q", got, tt.asked)
			}
			if tt.from == "" {
				if c != nil {
					t.Errorf("got credentials from %s", c.From)
				}
				return
			}
			if c == nil || c.From != tt.from || c.Auth.Username != tt.user || c.Auth.Password != tt.pass || c.Auth.IdentityToken != tt.token {
				t.Fatalf("got %+v, want %s from %s", c, tt.user+tt.token, tt.from)
			}
		})
	}
}

func TestSourcesErrors(t *testing.T) {
	dir := t.TempDir()
	unreadable := filepath.Join(dir, "config.json")
	os.Mkdir(unreadable, 0o755) // a directory: reading it fails
	tests := []struct {
		name, job, env, file string
		n                    int
		want                 []string
	}{
		{"all empty", "", " ", filepath.Join(dir, "missing.json"), 0, nil},
		{"bad job JSON", `{"auths": {"x": {"auth": "c2VjcmV0"}`, "", "", 0,
			[]string{"DOCKER_AUTH_CONFIG (job variable) is not a Docker config", "invalid JSON at byte"}},
		{"wrong type", "", `{"auths": "c2VjcmV0"}`, "", 0,
			[]string{"DOCKER_AUTH_CONFIG (runner environment) is not a Docker config", `"auths"`}},
		{"unreadable file, good job", `{"auths": {}}`, "", unreadable, 1, []string{"read Docker config"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Sources(tt.job, tt.env, tt.file)
			if len(s) != tt.n {
				t.Errorf("%d sources, want %d", len(s), tt.n)
			}
			if (err != nil) != (len(tt.want) > 0) {
				t.Fatalf("err = %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if err != nil && strings.Contains(err.Error(), "c2VjcmV0") {
				t.Errorf("error quotes the config: %v", err)
			}
		})
	}
}

func TestConfigPath(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", "/etc/flotilla-docker")
	if got := ConfigPath(); got != "/etc/flotilla-docker/config.json" {
		t.Errorf("with DOCKER_CONFIG: %s", got)
	}
	t.Setenv("DOCKER_CONFIG", "")
	t.Setenv("HOME", "/home/ci")
	if got := ConfigPath(); got != "/home/ci/.docker/config.json" {
		t.Errorf("from HOME: %s", got)
	}
}
