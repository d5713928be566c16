package runcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
)

// RegisterOptions describe a runner to register and the entry to write for it.
type RegisterOptions struct {
	// ConfigPath is the config.toml to add the entry to (created if missing).
	ConfigPath string
	// URL is the GitLab instance.
	URL string
	// Token is a runner authentication token (glrt-…) created in GitLab's UI or API.
	Token string
	// RegistrationToken is a legacy registration token (deprecated by GitLab).
	RegistrationToken string
	// Legacy registration parameters (GitLab sets these in the UI for glrt- tokens).
	Description, TagList, AccessLevel string
	RunUntagged, Locked, Paused       bool
	MaximumTimeout                    int

	// Name of the entry (default: the host name).
	Name string
	// Executor is instance (default) or docker-autoscaler.
	Executor string
	// Plugin is the fleeting plugin (default "local").
	Plugin string
	// CapacityPerInstance and MaxInstances of the pool (defaults 1 and 2).
	CapacityPerInstance, MaxInstances int
	// DockerImage is the default job image of docker-autoscaler.
	DockerImage string
	// Template is a TOML file holding one [[runners]] entry used as the basis: its
	// settings are kept, and the registration's keys are set on it.
	Template string
	// TLSCAFile is a PEM bundle trusted for GitLab (tls-ca-file): used to register
	// and written to the entry.
	TLSCAFile string
	// MaintenanceNote is sent with a legacy registration.
	MaintenanceNote string
	// Settings are more keys of the entry (register's --limit, --docker-privileged, …);
	// they win over the template's.
	Settings []Setting
	// Warn receives warnings (deprecations); nil discards them.
	Warn io.Writer
	// HTTP replaces the HTTP client (tests).
	HTTP *http.Client
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Setting is one key of a [[runners]] entry written at registration.
type Setting struct {
	// Table is "" for the entry itself or "docker" for [runners.docker].
	Table string
	// Key is the TOML key; Value a string, bool, int or []string.
	Key   string
	Value any
}

// Register verifies a runner authentication token (or, deprecated, registers with a
// registration token) and appends its [[runners]] entry to the config file, leaving
// the rest of the file as it was. It returns the entry as loaded back.
func Register(ctx context.Context, o RegisterOptions) (*config.Runner, error) {
	warn := o.Warn
	if warn == nil {
		warn = io.Discard
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	if o.URL == "" {
		return nil, errors.New("register: --url is required (the GitLab instance, e.g. https://gitlab.com)")
	}
	switch {
	case o.Token == "" && o.RegistrationToken == "":
		return nil, errors.New("register: --token is required: create a runner in GitLab (Settings > CI/CD > Runners > New runner) and pass its glrt-… token")
	case o.Token != "" && o.RegistrationToken != "":
		return nil, errors.New("register: give either --token (runner authentication token) or --registration-token (legacy), not both")
	}
	if o.Executor == "" {
		o.Executor = config.ExecutorInstance
	}
	if !slices.Contains(config.Executors, o.Executor) {
		return nil, fmt.Errorf("register: --executor %q: use %s", o.Executor, config.ExecutorChoice(false))
	}
	// Checked before GitLab is asked, so that a bad value registers nothing. 0 means
	// the default; a negative value is a mistake, not a wish for the default.
	for _, f := range []struct {
		flag     string
		n, limit int
	}{{"--capacity-per-instance", o.CapacityPerInstance, config.MaxCapacityPerInstance}, {"--max-instances", o.MaxInstances, config.MaxInstancesBound}} {
		if f.n < 0 || f.n > f.limit {
			return nil, fmt.Errorf("register: %s %d: must be between 1 and %d", f.flag, f.n, f.limit)
		}
	}
	if o.Name == "" {
		o.Name, _ = os.Hostname()
	}
	if existing, _, err := config.Load(o.ConfigPath); err == nil {
		for _, r := range existing.Runners {
			if r.Name == o.Name {
				return nil, fmt.Errorf("register: %s already has a runner named %q; pick another --name", o.ConfigPath, o.Name)
			}
		}
	} else if _, statErr := os.Stat(o.ConfigPath); statErr == nil {
		return nil, fmt.Errorf("register: %s does not load, fix it first: %w", o.ConfigPath, err)
	}
	template := ""
	if o.Template != "" {
		b, err := os.ReadFile(o.Template)
		if err != nil {
			return nil, fmt.Errorf("register: template: %w", err)
		}
		template = string(b)
	}

	if template != "" && hasDockerTable(templateBody(template)) {
		for _, st := range o.Settings {
			if st.Table == "docker" {
				return nil, fmt.Errorf("register: %s: the template has [runners.docker] and %s is given as a flag too: set it in one place", o.Template, st.Key)
			}
		}
	}
	client, err := gitlab.NewClient(o.URL, gitlab.ClientOptions{HTTP: o.HTTP, CAFile: o.TLSCAFile, Executor: o.Executor})
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	dir := configDir(o.ConfigPath)
	systemID, err := SystemID(dir)
	if err != nil {
		return nil, err
	}
	var reg gitlab.RegisteredRunner
	if o.RegistrationToken != "" {
		fmt.Fprintln(warn, "WARNING: registration tokens are deprecated by GitLab and will stop working; create the runner in GitLab's UI "+
			"(or with POST /user/runners) and register it with --token glrt-…")
		reg, err = client.RegisterRunner(ctx, gitlab.RegisterRequest{Token: o.RegistrationToken, Description: nonEmpty(o.Description, o.Name),
			TagList: o.TagList, RunUntagged: o.RunUntagged, Locked: o.Locked, Paused: o.Paused, AccessLevel: o.AccessLevel, MaximumTimeout: o.MaximumTimeout,
			MaintenanceNote: o.MaintenanceNote})
	} else {
		if !strings.HasPrefix(o.Token, "glrt-") {
			fmt.Fprintln(warn, "WARNING: the token does not start with glrt-; if it is a registration token, use --registration-token (deprecated)")
		}
		reg, err = client.VerifyRunner(ctx, o.Token, systemID)
	}
	if err != nil {
		var se *gitlab.StatusError
		if errors.As(err, &se) && se.Code == http.StatusForbidden {
			return nil, fmt.Errorf("register: GitLab at %s refused the token (403): check that it is the runner's current token and the URL is right", o.URL)
		}
		// The client's error names its step ("register runner: …", "verify runner: …"):
		// another "register:" in front would say it twice.
		return nil, err
	}
	entry := renderEntry(o, reg, now(), template)
	if err := AppendRunner(o.ConfigPath, entry, reg.Token); err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	cfg, _, err := config.Load(o.ConfigPath)
	if err != nil {
		return nil, err
	}
	for i := range cfg.Runners {
		if cfg.Runners[i].Token == reg.Token {
			return &cfg.Runners[i], nil
		}
	}
	return nil, errors.New("register: entry written but not found on reload")
}

func configDir(path string) string { return filepath.Dir(path) }

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// q renders a TOML basic string (JSON's escapes are valid TOML).
func q(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

var registrationKeys = []string{"name", "url", "id", "token", "token_obtained_at", "token_expires_at", "executor"}

// renderEntry writes the [[runners]] table of a registration: the registration's
// keys, then either the template's settings or a default local pool.
func renderEntry(o RegisterOptions, reg gitlab.RegisteredRunner, now time.Time, template string) string {
	var b strings.Builder
	b.WriteString("[[runners]]\n")
	fmt.Fprintf(&b, "  name = %s\n  url = %s\n  id = %d\n  token = %s\n", q(o.Name), q(strings.TrimRight(o.URL, "/")), reg.ID, q(reg.Token))
	fmt.Fprintf(&b, "  token_obtained_at = %s\n", now.UTC().Format(time.RFC3339))
	expires := reg.TokenExpiresAt
	fmt.Fprintf(&b, "  token_expires_at = %s\n", expires.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "  executor = %s\n", q(o.Executor))
	if o.TLSCAFile != "" {
		fmt.Fprintf(&b, "  tls-ca-file = %s\n", q(o.TLSCAFile))
	}
	set := map[string]bool{}
	var docker []Setting
	for _, st := range o.Settings {
		if st.Table == "docker" {
			docker = append(docker, st)
			continue
		}
		set[st.Key] = true
		fmt.Fprintf(&b, "  %s = %s\n", st.Key, tomlValue(st.Value))
	}
	writeDocker := func() {
		for _, st := range docker {
			fmt.Fprintf(&b, "    %s = %s\n", st.Key, tomlValue(st.Value))
		}
	}
	if template != "" {
		body := templateBody(template)
		if len(set) > 0 || o.TLSCAFile != "" {
			set["tls-ca-file"] = o.TLSCAFile != ""
			body = dropTopKeys(body, set)
		}
		b.WriteString(body)
		if len(docker) > 0 {
			b.WriteString("  [runners.docker]\n")
			writeDocker()
		}
		return b.String()
	}
	if !set["shell"] {
		b.WriteString("  shell = \"bash\"\n")
	}
	if o.Executor == config.ExecutorDockerAutoscaler || len(docker) > 0 {
		b.WriteString("  [runners.docker]\n")
		if o.Executor == config.ExecutorDockerAutoscaler {
			fmt.Fprintf(&b, "    image = %s\n", q(nonEmpty(o.DockerImage, "busybox:latest")))
		}
		writeDocker()
	}
	capa, maxi := o.CapacityPerInstance, o.MaxInstances
	if capa <= 0 {
		capa = 1
	}
	if maxi <= 0 {
		maxi = 2
	}
	fmt.Fprintf(&b, "  [runners.autoscaler]\n    plugin = %s\n    capacity_per_instance = %d\n    max_instances = %d\n", q(nonEmpty(o.Plugin, "local")), capa, maxi)
	b.WriteString("    [[runners.autoscaler.policy]]\n      idle_count = 0\n      idle_time = \"20m\"\n")
	return b.String()
}

// templateBody returns the template's [[runners]] entry without its header and
// without the keys the registration sets.
func templateBody(t string) string {
	lines := splitLines([]byte(t))
	start := -1
	for i, l := range lines {
		if runnersHeader.MatchString(strings.TrimRight(l, "\r\n")) {
			start = i + 1
			break
		}
	}
	if start < 0 {
		// A template may be just the entry's keys and tables.
		start = 0
	}
	var b strings.Builder
	inTop := true
	for _, l := range lines[start:] {
		trim := strings.TrimSpace(l)
		if runnersHeader.MatchString(trim) {
			break // only the first entry
		}
		if strings.HasPrefix(trim, "[") {
			inTop = false
		}
		if inTop {
			key, _, ok := strings.Cut(trim, "=")
			if ok && contains(registrationKeys, strings.TrimSpace(key)) {
				continue
			}
		}
		b.WriteString(l)
	}
	s := b.String()
	if s != "" && !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return s
}

// tomlValue renders a Setting's value as TOML.
func tomlValue(v any) string {
	switch v := v.(type) {
	case string:
		return q(v)
	case []string:
		parts := make([]string, len(v))
		for i, s := range v {
			parts[i] = q(s)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	default:
		return fmt.Sprint(v)
	}
}

// dropTopKeys removes from a template body the entry-level keys in drop (before its
// first table), which flags set instead.
func dropTopKeys(body string, drop map[string]bool) string {
	var b strings.Builder
	inTop := true
	for _, l := range splitLines([]byte(body)) {
		trim := strings.TrimSpace(l)
		if strings.HasPrefix(trim, "[") {
			inTop = false
		}
		if key, _, ok := strings.Cut(trim, "="); inTop && ok && drop[strings.TrimSpace(key)] {
			continue
		}
		b.WriteString(l)
	}
	return b.String()
}

// hasDockerTable reports whether a template body has a [runners.docker] table.
func hasDockerTable(body string) bool {
	for _, l := range splitLines([]byte(body)) {
		if m := tableHeader.FindStringSubmatch(strings.TrimSpace(l)); m != nil && strings.Trim(m[1], `"'`) == "runners.docker" {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// VerifyResult is the verification of one runner entry.
type VerifyResult struct {
	Name, URL string
	// Valid: GitLab accepted the token. Invalid (403) entries can be deleted.
	Valid bool
	Err   error
}

// Verify checks every runner entry's token with GitLab (selected by name when name is
// set). With deleteInvalid, entries GitLab refused (403) are removed from the file.
func Verify(ctx context.Context, path, name string, deleteInvalid bool, hc *http.Client) ([]VerifyResult, error) {
	cfg, _, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	systemID, err := SystemID(cfg.Dir())
	if err != nil {
		return nil, err
	}
	var out []VerifyResult
	invalid := map[string]bool{}
	for _, r := range cfg.Runners {
		if name != "" && r.Name != name {
			continue
		}
		res := VerifyResult{Name: r.Name, URL: r.URL}
		c, err := gitlab.NewClient(r.URL, gitlab.ClientOptions{CAFile: r.TLSCAFile, HTTP: hc})
		if err == nil {
			_, err = c.VerifyRunner(ctx, r.Token, systemID)
		}
		var se *gitlab.StatusError
		switch {
		case err == nil:
			res.Valid = true
		case errors.As(err, &se) && se.Code == http.StatusForbidden:
			res.Err = errors.New("GitLab refused the token (403): the runner was deleted or its token was reset")
			invalid[r.URL+"|"+r.Token] = true
		default:
			res.Err = err
		}
		out = append(out, res)
	}
	if name != "" && len(out) == 0 {
		return nil, fmt.Errorf("verify: no runner named %q in %s", name, path)
	}
	if deleteInvalid && len(invalid) > 0 {
		if _, err := RemoveRunners(path, func(_, url, token string) bool { return invalid[url+"|"+token] }); err != nil {
			return out, err
		}
	}
	return out, nil
}

// UnregisterOptions select the entries to unregister.
type UnregisterOptions struct {
	ConfigPath string
	// Name, or URL and Token, select one entry; All selects every entry.
	Name, URL, Token string
	All              bool
	HTTP             *http.Client
}

// Unregister tells GitLab to forget the selected runners and removes their entries
// from the config file. A runner created in GitLab's UI (glrt- token) keeps existing
// in GitLab; only this host's runner manager is deleted, as GitLab Runner does.
func Unregister(ctx context.Context, o UnregisterOptions) ([]string, error) {
	cfg, _, err := config.Load(o.ConfigPath)
	if err != nil {
		return nil, err
	}
	systemID, err := SystemID(cfg.Dir())
	if err != nil {
		return nil, err
	}
	selected := func(r config.Runner) bool {
		switch {
		case o.All:
			return true
		case o.Name != "":
			return r.Name == o.Name
		default:
			return r.URL == o.URL && r.Token == o.Token
		}
	}
	if !o.All && o.Name == "" && (o.URL == "" || o.Token == "") {
		return nil, errors.New("unregister: give --name, or --url and --token, or --all-runners")
	}
	done := map[string]bool{}
	var names []string
	var errs []error
	for _, r := range cfg.Runners {
		if !selected(r) {
			continue
		}
		c, err := gitlab.NewClient(r.URL, gitlab.ClientOptions{CAFile: r.TLSCAFile, HTTP: o.HTTP})
		if err == nil {
			if strings.HasPrefix(r.Token, "glrt-") {
				err = c.UnregisterManager(ctx, r.Token, systemID)
			} else {
				err = c.UnregisterRunner(ctx, r.Token)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("unregister runner %q: %w (its entry was kept)", r.Name, err))
			continue
		}
		done[r.URL+"|"+r.Token] = true
		names = append(names, r.Name)
	}
	if len(done) == 0 && len(errs) == 0 {
		return nil, fmt.Errorf("unregister: no matching runner in %s", o.ConfigPath)
	}
	if len(done) > 0 {
		if _, err := RemoveRunners(o.ConfigPath, func(_, url, token string) bool { return done[url+"|"+token] }); err != nil {
			errs = append(errs, err)
		}
	}
	return names, errors.Join(errs...)
}
