package plugins

import (
	"fmt"
	"os"
	"strings"
)

// Built-in defaults for plugin references. They are only the last fallback: callers
// pass Defaults from configuration, and DefaultsFromEnv reads the environment, so a
// mirror or a private registry never needs a code change.
const (
	// BuiltinRegistry is the registry a bare plugin name resolves against: Flotilla's
	// plugin repository, not GitLab's, whose artifacts are not Flotilla plugins (they
	// carry neither Flotilla's artifact type nor a signature Flotilla can check).
	BuiltinRegistry = "ghcr.io"
	// BuiltinRepository is the repository a bare plugin name lives under.
	BuiltinRepository = "flotilla-ci/plugins"
	// GitLabRegistry and GitLabRepository are where GitLab Runner looks for bare
	// names; messages name them to explain why their artifacts do not install.
	GitLabRegistry   = "registry.gitlab.com"
	GitLabRepository = "gitlab-org/fleeting/plugins"
	// LatestConstraint is the constraint a reference without one gets.
	LatestConstraint = "latest"
)

// Environment variables that configure plugin references and the install root.
const (
	// EnvRegistry overrides the default registry for references without one.
	EnvRegistry = "FLOTILLA_PLUGIN_REGISTRY"
	// EnvRepository overrides the default repository for references without one.
	EnvRepository = "FLOTILLA_PLUGIN_REPOSITORY"
	// EnvPluginPath overrides the install root, as in GitLab Runner.
	EnvPluginPath = "FLEETING_PLUGIN_PATH"
)

// Defaults are the registry and repository that complete a partial reference.
type Defaults struct {
	Registry   string
	Repository string
}

// DefaultsFromEnv returns the defaults from EnvRegistry and EnvRepository, falling back
// to the built-in Flotilla values. A nil getenv means os.Getenv.
func DefaultsFromEnv(getenv func(string) string) Defaults {
	if getenv == nil {
		getenv = os.Getenv
	}
	d := Defaults{Registry: getenv(EnvRegistry), Repository: getenv(EnvRepository)}
	return d.withBuiltins()
}

// Merge returns d with empty fields taken from other.
func (d Defaults) Merge(other Defaults) Defaults {
	if d.Registry == "" {
		d.Registry = other.Registry
	}
	if d.Repository == "" {
		d.Repository = other.Repository
	}
	return d
}

func (d Defaults) withBuiltins() Defaults {
	return d.Merge(Defaults{Registry: BuiltinRegistry, Repository: BuiltinRepository})
}

// Reference is a parsed plugin reference:
// <name>, <name>:<constraint>, <repository>/<name>[:<constraint>] or
// <registry>/<repository>/<name>[:<constraint>].
type Reference struct {
	// Registry is host[:port]; never empty after ParseReference.
	Registry string
	// Repository is the path between registry and name; empty only when the value
	// named a registry and a name with nothing between them.
	Repository string
	// Name is the last path component: the plugin's name.
	Name string
	// Constraint is "latest", "MAJOR", "MAJOR.MINOR" or an exact version.
	Constraint Constraint
	// Raw is the value as written, for messages.
	Raw string
}

// ParseReference parses a plugin reference, filling what it omits from d (and the
// built-in defaults for fields d leaves empty).
func ParseReference(s string, d Defaults) (Reference, error) {
	d = d.withBuiltins()
	ref := Reference{Raw: s}
	if s == "" {
		return ref, fmt.Errorf("parse plugin reference: empty value; set plugin = \"<name>[:<constraint>]\"")
	}
	if strings.TrimSpace(s) != s {
		return ref, fmt.Errorf("parse plugin reference %q: leading or trailing whitespace", s)
	}
	path, cons := s, LatestConstraint
	if i := strings.LastIndexByte(s, ':'); i > strings.LastIndexByte(s, '/') {
		path, cons = s[:i], s[i+1:]
	}
	c, err := ParseConstraint(cons)
	if err != nil {
		return ref, fmt.Errorf("parse plugin reference %q: %w", s, err)
	}
	ref.Constraint = c
	parts := strings.Split(path, "/")
	ref.Name = parts[len(parts)-1]
	dirs := parts[:len(parts)-1]
	switch {
	case len(dirs) == 0:
		ref.Registry, ref.Repository = d.Registry, d.Repository
	case looksLikeHost(dirs[0]):
		ref.Registry, ref.Repository = dirs[0], strings.Join(dirs[1:], "/")
	default:
		ref.Registry, ref.Repository = d.Registry, strings.Join(dirs, "/")
	}
	if err := validHost(ref.Registry); err != nil {
		return ref, fmt.Errorf("parse plugin reference %q: registry: %w", s, err)
	}
	comps := []string{ref.Name}
	if ref.Repository != "" {
		comps = append(strings.Split(ref.Repository, "/"), ref.Name)
	}
	for _, p := range comps {
		if !validPathComponent(p) {
			return ref, fmt.Errorf("parse plugin reference %q: invalid path component %q: use lowercase letters, digits and single separators (. _ __ -)", s, p)
		}
	}
	return ref, nil
}

// Repo returns the OCI repository path: <repository>/<name>.
func (r Reference) Repo() string {
	if r.Repository == "" {
		return r.Name
	}
	return r.Repository + "/" + r.Name
}

// String returns the fully qualified reference, registry to constraint.
func (r Reference) String() string {
	return r.Registry + "/" + r.Repo() + ":" + r.Constraint.String()
}

// WithVersion returns the fully qualified reference of one version (the OCI tag).
func (r Reference) WithVersion(v Version) string {
	return r.Registry + "/" + r.Repo() + ":" + v.String()
}

// looksLikeHost follows the Docker rule: a first component is a registry when it has a
// dot or a port, or is localhost.
func looksLikeHost(s string) bool {
	return strings.ContainsAny(s, ".:[") || s == "localhost"
}

func validHost(h string) error {
	if h == "" {
		return fmt.Errorf("empty")
	}
	host, port, hasPort := h, "", false
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return fmt.Errorf("%q: unclosed [", h)
		}
		host = h[1:end]
		if rest := h[end+1:]; rest != "" {
			if rest[0] != ':' {
				return fmt.Errorf("%q: junk after ]", h)
			}
			port, hasPort = rest[1:], true
		}
		if host == "" {
			return fmt.Errorf("%q: empty IPv6 address", h)
		}
		for _, c := range host {
			if !(c == ':' || c == '.' || isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) {
				return fmt.Errorf("%q: invalid IPv6 address", h)
			}
		}
	} else {
		if i := strings.IndexByte(h, ':'); i >= 0 {
			host, port, hasPort = h[:i], h[i+1:], true
		}
		if host == "" {
			return fmt.Errorf("%q: empty host", h)
		}
		for _, c := range host {
			if !(c == '.' || c == '-' || isDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
				return fmt.Errorf("%q: invalid character %q in host", h, c)
			}
		}
	}
	if hasPort {
		if port == "" || len(port) > 5 {
			return fmt.Errorf("%q: invalid port", h)
		}
		n, err := parseNumber(port)
		if err != nil || n == 0 || n > 65535 {
			return fmt.Errorf("%q: invalid port", h)
		}
	}
	return nil
}

// validPathComponent implements the OCI distribution-spec rule for one component:
// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
func validPathComponent(s string) bool {
	if s == "" {
		return false
	}
	alnum := func(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') }
	i := 0
	for {
		start := i
		for i < len(s) && alnum(s[i]) {
			i++
		}
		if i == start {
			return false
		}
		if i == len(s) {
			return true
		}
		switch {
		case s[i] == '.':
			i++
		case strings.HasPrefix(s[i:], "__"):
			i += 2
		case s[i] == '_':
			i++
		case s[i] == '-':
			for i < len(s) && s[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

func isDigit(c rune) bool { return c >= '0' && c <= '9' }
