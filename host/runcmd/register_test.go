package runcmd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
)

const existingConfig = `# Global settings: this comment must survive
concurrent = 4   # an inline comment
check_interval = 0

# the docker runner, described here
[[runners]]
  name = "docker-one"
  url = "https://gitlab.example.com"
  token = "glrt-existing-one"
  executor = "docker-autoscaler"
  [runners.docker]
    image = "alpine:3"
  [runners.autoscaler]
    plugin = "aws"   # a cloud
    max_instances = 10
    [runners.autoscaler.plugin_config]
      name = "my-asg"
    [[runners.autoscaler.policy]]
      idle_count = 1
      idle_time = "20m"

# the second runner
[[runners]]
  name = "instance-two"
  url = "https://gitlab.example.com"
  token = "glrt-existing-two"
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"

# a comment at the very end
`

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	return path
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRegisterUnregisterRoundTrip(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	id := srv.AddRunner("glrt-new-token")
	path := writeFile(t, existingConfig)
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	r, err := Register(context.Background(), RegisterOptions{ConfigPath: path, URL: srv.URL, Token: "glrt-new-token", Name: "flotilla-new",
		MaxInstances: 3, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != id || r.Token != "glrt-new-token" || r.Executor != "instance" || r.Autoscaler == nil || r.Autoscaler.Plugin != "local" || r.Autoscaler.MaxInstances != 3 {
		t.Errorf("registered entry %+v", r)
	}
	after := read(t, path)
	if !strings.HasPrefix(after, existingConfig) {
		t.Fatalf("register changed the existing text:\n%s", after)
	}
	cfg, _, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Runners) != 3 || cfg.Runners[0].Autoscaler.PluginConfig["name"] != "my-asg" {
		t.Fatalf("runners after register: %+v", cfg.Runners)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the file's 0640 kept", fi.Mode().Perm())
	}

	names, err := Unregister(context.Background(), UnregisterOptions{ConfigPath: path, Name: "flotilla-new"})
	if err != nil || len(names) != 1 {
		t.Fatalf("unregister: %v %v", names, err)
	}
	if got := read(t, path); got != existingConfig {
		t.Errorf("register+unregister did not give the file back:\n--- got\n%s\n--- want\n%s", got, existingConfig)
	}
	sys, _ := SystemID(filepath.Dir(path))
	if d := srv.Deleted(); len(d) != 1 || d[0] != "manager:glrt-new-token|"+sys {
		t.Errorf("deleted on GitLab: %v, want only this host's runner manager", d)
	}
}

func TestUnregisterMiddleEntryKeepsTheRest(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRunner("glrt-a")
	srv.AddRunner("legacy-b")
	text := strings.ReplaceAll(existingConfig, "https://gitlab.example.com", srv.URL)
	text = strings.Replace(text, "glrt-existing-one", "glrt-a", 1)
	text = strings.Replace(text, "glrt-existing-two", "legacy-b", 1)
	path := writeFile(t, text)
	if _, err := Unregister(context.Background(), UnregisterOptions{ConfigPath: path, Name: "docker-one"}); err != nil {
		t.Fatal(err)
	}
	got := read(t, path)
	for _, gone := range []string{"docker-one", "the docker runner, described here", "my-asg"} {
		if strings.Contains(got, gone) {
			t.Errorf("%q left after unregister:\n%s", gone, got)
		}
	}
	for _, kept := range []string{"# Global settings: this comment must survive", "concurrent = 4   # an inline comment",
		"# the second runner\n[[runners]]\n  name = \"instance-two\"", "# a comment at the very end"} {
		if !strings.Contains(got, kept) {
			t.Errorf("%q lost:\n%s", kept, got)
		}
	}
	// A legacy token deletes the runner itself.
	if _, err := Unregister(context.Background(), UnregisterOptions{ConfigPath: path, URL: srv.URL, Token: "legacy-b"}); err != nil {
		t.Fatal(err)
	}
	if srv.ValidToken("legacy-b") {
		t.Errorf("legacy runner still registered on GitLab")
	}
	if cfg, _, err := config.Load(path); err != nil || len(cfg.Runners) != 0 {
		t.Fatalf("after removing both: %v %+v", err, cfg)
	}
}

func TestRegisterErrors(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRunner("glrt-good")
	tests := []struct {
		name string
		o    RegisterOptions
		want string
	}{
		{"refused token", RegisterOptions{URL: srv.URL, Token: "glrt-wrong", Name: "x"}, "refused the token (403)"},
		{"no token", RegisterOptions{URL: srv.URL, Name: "x"}, "--token is required"},
		{"both tokens", RegisterOptions{URL: srv.URL, Token: "glrt-good", RegistrationToken: "r", Name: "x"}, "not both"},
		{"bad executor", RegisterOptions{URL: srv.URL, Token: "glrt-good", Executor: "shell", Name: "x"}, "use instance or docker-autoscaler"},
		{"duplicate name", RegisterOptions{URL: srv.URL, Token: "glrt-good", Name: "docker-one"}, "already has a runner named"},
		{"bad url", RegisterOptions{URL: "gitlab.example.com", Token: "glrt-good", Name: "x"}, "want http(s)://"},
		{"negative max instances", RegisterOptions{URL: srv.URL, Token: "glrt-good", Name: "x", MaxInstances: -1}, "register: --max-instances -1: must be between 1 and 100000"},
		{"negative capacity", RegisterOptions{URL: srv.URL, Token: "glrt-good", Name: "x", CapacityPerInstance: -2}, "register: --capacity-per-instance -2: must be between 1 and 1000"},
		// The client names its step; "register: register runner:" said it twice.
		{"unreachable GitLab, legacy token", RegisterOptions{URL: "http://127.0.0.1:1", RegistrationToken: "r", Name: "x"}, "register runner: Post"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, existingConfig)
			tt.o.ConfigPath = path
			_, err := Register(context.Background(), tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "register: register") {
				t.Errorf("doubled prefix: %v", err)
			}
			if read(t, path) != existingConfig {
				t.Errorf("a failed register changed the file")
			}
		})
	}
}

func TestRegisterLegacyAndTemplate(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRegistrationToken("GR1348941-legacy")
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "template.toml")
	os.WriteFile(tmpl, []byte(`[[runners]]
  name = "from-template"
  token = "ignored"
  limit = 7
  executor = "docker-autoscaler"
  [runners.docker]
    image = "busybox:latest"
  [runners.autoscaler]
    plugin = "local"
    capacity_per_instance = 4
`), 0o600)
	path := filepath.Join(dir, "new", "config.toml")
	os.MkdirAll(filepath.Dir(path), 0o755)
	var warn bytes.Buffer
	r, err := Register(context.Background(), RegisterOptions{ConfigPath: path, URL: srv.URL, RegistrationToken: "GR1348941-legacy",
		Name: "legacy", Executor: "docker-autoscaler", Template: tmpl, Warn: &warn})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(warn.String(), "deprecated") {
		t.Errorf("no deprecation warning: %q", warn.String())
	}
	if !srv.ValidToken(r.Token) || r.Name != "legacy" || r.Limit != 7 || r.Autoscaler.CapacityPerInstance != 4 || r.Docker.Image != "busybox:latest" {
		t.Errorf("entry %+v", r)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("new config mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestVerifyDeletesRefusedEntries(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	srv.AddRunner("glrt-existing-one")
	path := writeFile(t, strings.ReplaceAll(existingConfig, "https://gitlab.example.com", srv.URL))
	res, err := Verify(context.Background(), path, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || !res[0].Valid || res[1].Valid {
		t.Fatalf("verify results %+v", res)
	}
	cfg, _, err := config.Load(path)
	if err != nil || len(cfg.Runners) != 1 || cfg.Runners[0].Name != "docker-one" {
		t.Fatalf("after verify --delete: %v %+v", err, cfg)
	}
	if !strings.Contains(read(t, path), "# a comment at the very end") {
		t.Errorf("comment lost")
	}
}
