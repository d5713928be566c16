// Package dockerauth resolves the registry credentials of an image pull as GitLab
// Runner does: from DOCKER_AUTH_CONFIG among the job's variables, then
// DOCKER_AUTH_CONFIG in the runner's own environment, then the runner host's Docker
// config file; the first of them that has credentials for the image's registry gives
// them. In each, a credHelpers entry for the registry comes first, then its auths
// entry, then the default helper credsStore. Helpers are the programs
// docker-credential-<name> on PATH, spoken to with the credential-helper protocol.
//
// The config JSON is read with the few structs below rather than docker/cli's
// configfile package, which would bring the whole CLI module in for three keys.
package dockerauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/registry"
)

// Variable is the job variable and runner environment variable that holds a Docker
// config's JSON.
const Variable = "DOCKER_AUTH_CONFIG"

// DockerHub is the registry host of images named without one ("alpine",
// "team/app:1"); index.docker.io and registry-1.docker.io are the same registry.
const DockerHub = "docker.io"

// dockerHubServer is the server address `docker login` and credential helpers use for
// Docker Hub.
const dockerHubServer = "https://index.docker.io/v1/"

// HelperPrefix starts the name of every credential helper program.
const HelperPrefix = "docker-credential-"

// helperTimeout bounds one helper call, so that a helper waiting for a keyring or
// a network that never answers fails the lookup instead of holding the job.
const helperTimeout = time.Minute

// Config is the credential part of a Docker client config (config.json, or the JSON
// of DOCKER_AUTH_CONFIG).
type Config struct {
	// Auths are credentials by registry ("registry.example.com",
	// "https://index.docker.io/v1/").
	Auths map[string]AuthEntry `json:"auths"`
	// CredHelpers name the helper (docker-credential-<name>) for a registry.
	CredHelpers map[string]string `json:"credHelpers"`
	// CredsStore names the helper for every registry without a credHelpers entry.
	CredsStore string `json:"credsStore"`
}

// AuthEntry is one auths entry: Auth is base64 of "user:password"; Username and
// Password are used when it is empty; IdentityToken is an OAuth refresh token.
type AuthEntry struct {
	Auth          string `json:"auth,omitempty"`
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// Source is one Docker config that credentials may come from.
type Source struct {
	// Name says in the job log where the config came from:
	// "DOCKER_AUTH_CONFIG (job variable)" or the config file's path.
	Name   string
	Config Config
}

// Parse reads a Docker config's JSON as the source name. The error names the source
// and never quotes the JSON, which holds secrets.
func Parse(name string, data []byte) (Source, error) {
	var c Config
	if err := json.Unmarshal(data, &c); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return Source{}, fmt.Errorf("%s is not a Docker config (JSON with auths, credHelpers or credsStore): invalid JSON at byte %d", name, syn.Offset)
		}
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			return Source{}, fmt.Errorf("%s is not a Docker config: the value at %q has the wrong type (want %s)", name, typ.Field, typ.Type)
		}
		return Source{}, fmt.Errorf("%s is not a Docker config: %w", name, err)
	}
	return Source{Name: name, Config: c}, nil
}

// Sources returns the sources in the order they are asked: jobValue (the job's
// DOCKER_AUTH_CONFIG), envValue (the runner's), then the Docker config file at
// configPath. Empty values and a missing file are no source. A source that cannot be
// read is left out and its error returned, with the others.
func Sources(jobValue, envValue, configPath string) ([]Source, error) {
	var out []Source
	var errs []error
	add := func(name string, data []byte) {
		s, err := Parse(name, data)
		if err != nil {
			errs = append(errs, err)
			return
		}
		out = append(out, s)
	}
	if strings.TrimSpace(jobValue) != "" {
		add(Variable+" (job variable)", []byte(jobValue))
	}
	if strings.TrimSpace(envValue) != "" {
		add(Variable+" (runner environment)", []byte(envValue))
	}
	if configPath != "" {
		data, err := os.ReadFile(configPath)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			errs = append(errs, fmt.Errorf("read Docker config: %w", err))
		default:
			add(configPath, data)
		}
	}
	return out, errors.Join(errs...)
}

// ConfigPath is the runner host's Docker config file: $DOCKER_CONFIG/config.json, or
// ~/.docker/config.json ("" when there is no home directory).
func ConfigPath() string {
	if dir := os.Getenv("DOCKER_CONFIG"); dir != "" {
		return filepath.Join(dir, "config.json")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".docker", "config.json")
}

// Registry returns the registry host of an image reference, "docker.io" for Docker
// Hub images.
func Registry(image string) (string, error) {
	ref, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return "", fmt.Errorf("image name %q: %w", image, err)
	}
	return NormalizeHost(reference.Domain(ref)), nil
}

// NormalizeHost turns a registry as written in auths or credHelpers
// ("https://registry.example.com/v2/", "index.docker.io") into the host it names, the
// way Docker matches them: scheme and path dropped, Docker Hub's names made one.
func NormalizeHost(key string) string {
	h := strings.ToLower(strings.TrimSpace(key))
	if _, rest, ok := strings.Cut(h, "://"); ok {
		h = rest
	}
	h, _, _ = strings.Cut(h, "/")
	switch h {
	case "index.docker.io", "registry-1.docker.io":
		return DockerHub
	}
	return h
}

// serverAddress is what a credential helper is asked for: the host, or for Docker
// Hub the address `docker login` stores its credentials under.
func serverAddress(host string) string {
	if host == DockerHub {
		return dockerHubServer
	}
	return host
}

// Credentials are what one source gave for one registry.
type Credentials struct {
	// Registry is the normalised registry host.
	Registry string
	// From says where they came from, for the job log:
	// "DOCKER_AUTH_CONFIG (job variable)", or "credential helper
	// docker-credential-ecr-login (credHelpers of /root/.docker/config.json)".
	From string
	Auth registry.AuthConfig
}

// Header returns the X-Registry-Auth value that carries the credentials to the
// Docker Engine.
func (c *Credentials) Header() (string, error) {
	h, err := authconfig.Encode(c.Auth)
	if err != nil {
		return "", fmt.Errorf("encode credentials for %s: %w", c.Registry, err)
	}
	return h, nil
}

// Resolve returns the credentials of the first source that has some for the
// registry host, or nil. notes say, for the job log, what was passed over on the way
// (a helper that failed, an auths entry that is not base64 of user:password); they
// never hold a secret or a helper's stderr.
func Resolve(ctx context.Context, sources []Source, host string) (creds *Credentials, notes []string) {
	host = NormalizeHost(host)
	for _, s := range sources {
		c, srcNotes := s.lookup(ctx, host)
		notes = append(notes, srcNotes...)
		if c != nil {
			return c, notes
		}
	}
	return nil, notes
}

func (s Source) lookup(ctx context.Context, host string) (*Credentials, []string) {
	var notes []string
	if key, helper, ok := match(s.Config.CredHelpers, host); ok {
		from := fmt.Sprintf("credential helper %s%s (credHelpers of %s)", HelperPrefix, helper, s.Name)
		c, err := askHelper(ctx, helper, host)
		switch {
		case err != nil:
			where := host
			if key != host {
				where = fmt.Sprintf("%s (key %q)", host, key)
			}
			notes = append(notes, fmt.Sprintf("%s for %s failed: %v", from, where, err))
		case c != nil:
			return &Credentials{Registry: host, From: from, Auth: *c}, notes
		}
	}
	if key, e, ok := match(s.Config.Auths, host); ok && e != (AuthEntry{}) {
		a, err := e.authConfig(host)
		if err != nil {
			notes = append(notes, fmt.Sprintf("auths entry %q of %s: %v", key, s.Name, err))
		} else {
			return &Credentials{Registry: host, From: s.Name, Auth: a}, notes
		}
	}
	if helper := s.Config.CredsStore; helper != "" {
		from := fmt.Sprintf("credential helper %s%s (credsStore of %s)", HelperPrefix, helper, s.Name)
		c, err := askHelper(ctx, helper, host)
		switch {
		case err != nil:
			notes = append(notes, fmt.Sprintf("%s for %s failed: %v", from, host, err))
		case c != nil:
			return &Credentials{Registry: host, From: from, Auth: *c}, notes
		}
	}
	return nil, notes
}

// match finds host's entry in m, whose keys are registries as people write them: the
// key that is exactly host first, then the others in sorted order, so the outcome does
// not depend on map order.
func match[V any](m map[string]V, host string) (string, V, bool) {
	if v, ok := m[host]; ok {
		return host, v, true
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if NormalizeHost(k) == host {
			return k, m[k], true
		}
	}
	var zero V
	return "", zero, false
}

func (e AuthEntry) authConfig(host string) (registry.AuthConfig, error) {
	a := registry.AuthConfig{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken,
		RegistryToken: e.RegistryToken, ServerAddress: host}
	if e.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(e.Auth))
		if err != nil {
			return a, errors.New("auth is not base64 (of user:password)")
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return a, errors.New("auth is not base64 of user:password (no colon)")
		}
		a.Username, a.Password = user, pass
	}
	return a, nil
}

// askHelper asks docker-credential-<name> for host's credentials: nil without an
// error when the helper has none.
func askHelper(ctx context.Context, name, host string) (*registry.AuthConfig, error) {
	if name == "" || strings.ContainsAny(name, `/\`) {
		return nil, fmt.Errorf("helper name %q: want the part after %s, without a path", name, HelperPrefix)
	}
	program := HelperPrefix + name
	if _, err := exec.LookPath(program); err != nil {
		return nil, fmt.Errorf("%s is not on the runner's PATH", program)
	}
	ctx, cancel := context.WithTimeout(ctx, helperTimeout)
	defer cancel()
	c, err := client.Get(helperProgram(ctx, program), serverAddress(host))
	if err != nil {
		if credentials.IsErrCredentialsNotFound(err) {
			return nil, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no answer within %s", helperTimeout)
		}
		return nil, helperError(err)
	}
	if c.Secret == "" {
		return nil, nil
	}
	a := &registry.AuthConfig{ServerAddress: host}
	// Helpers give an identity token with the user name "<token>", as Docker reads it.
	if c.Username == "<token>" {
		a.IdentityToken = c.Secret
	} else {
		a.Username, a.Password = c.Username, c.Secret
	}
	return a, nil
}

// helperError shortens what a failed helper said (its stdout, the protocol's error
// channel) to one line of bounded length for the job log.
func helperError(err error) error {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return errors.New(msg)
}

// helperProgram runs a helper under ctx. Its stderr is dropped: helpers write
// diagnostics there that may name accounts or tokens, and the job log must not.
func helperProgram(ctx context.Context, program string) client.ProgramFunc {
	return func(args ...string) client.Program {
		cmd := exec.CommandContext(ctx, program, args...)
		cmd.Stderr = io.Discard
		return &helperCmd{cmd}
	}
}

type helperCmd struct{ cmd *exec.Cmd }

func (h *helperCmd) Output() ([]byte, error) { return h.cmd.Output() }
func (h *helperCmd) Input(in io.Reader)      { h.cmd.Stdin = in }
