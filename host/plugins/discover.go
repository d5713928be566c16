package plugins

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// ErrPluginNotFound is wrapped by every Resolve miss (GitLab's installer.ErrPluginNotFound).
var ErrPluginNotFound = errors.New("plugin not found")

// EmbeddedName is the plugin value that selects the provider built into the runner
// binary. It wins over anything installed or on PATH under the same name, so the
// default configuration never depends on the environment.
const EmbeddedName = "local"

// MetadataFile is written next to an installed binary: what was installed, from
// where, and whether its signature verified (InstallMetadata as JSON).
const MetadataFile = "install.json"

// BinaryName is the file name of an installed plugin inside its version directory:
// "plugin" ("plugin.exe" on Windows), as in GitLab's dist/<os>/<arch>/plugin layout.
func BinaryName() string {
	if runtime.GOOS == "windows" {
		return "plugin.exe"
	}
	return "plugin"
}

// InstallDir returns the install root: $FLEETING_PLUGIN_PATH, else
// ~/.config/fleeting/plugins (%APPDATA%\fleeting\plugins on Windows), as GitLab
// Runner does. A nil getenv means os.Getenv.
func InstallDir(getenv func(string) string) (string, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	if p := getenv(EnvPluginPath); p != "" {
		return p, nil
	}
	if runtime.GOOS == "windows" {
		if a := getenv("APPDATA"); a != "" {
			return filepath.Join(a, "fleeting", "plugins"), nil
		}
		return "", fmt.Errorf("plugin install dir: neither %s nor APPDATA is set", EnvPluginPath)
	}
	home := getenv("HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("plugin install dir: set %s or HOME: %w", EnvPluginPath, err)
		}
		home = h
	}
	return filepath.Join(home, ".config", "fleeting", "plugins"), nil
}

// PluginDir is the directory holding every installed version of ref's plugin:
// <root>/<registry>/<repository>/<name>.
func PluginDir(root string, ref Reference) string {
	return filepath.Join(root, ref.Registry, filepath.FromSlash(ref.Repo()))
}

// VersionDir is where version v of ref's plugin is installed.
func VersionDir(root string, ref Reference, v Version) string {
	return filepath.Join(PluginDir(root, ref), v.String())
}

// Source says where Resolve found a plugin.
type Source string

// Sources Resolve reports.
const (
	SourceEmbedded  Source = "embedded"
	SourceInstalled Source = "installed"
	SourcePath      Source = "PATH"
	SourceFile      Source = "file"
)

// Resolved is the outcome of Resolve.
type Resolved struct {
	// Path is the binary to launch; empty when Embedded.
	Path string
	// Version is the installed version; empty for PATH, file and embedded plugins,
	// whose version only the binary itself can tell.
	Version string
	Source  Source
	// Embedded is true for EmbeddedName: the caller runs its built-in provider.
	Embedded bool
	// Reference is the parsed reference; nil for file paths and embedded.
	Reference *Reference
	// Metadata is what the installer recorded, for SourceInstalled; nil if absent.
	Metadata *InstallMetadata
}

// Options configure Resolve. The zero value resolves as the runner does by default.
type Options struct {
	// Root is the install root; empty means InstallDir(Getenv).
	Root string
	// Defaults complete partial references; empty fields come from the environment
	// (EnvRegistry, EnvRepository) and then the built-in Flotilla values.
	Defaults Defaults
	// Path is the list of directories searched for plain binaries; nil means the
	// PATH environment variable.
	Path []string
	// Getenv replaces os.Getenv (tests).
	Getenv func(string) string
}

func (o Options) getenv(k string) string {
	if o.Getenv != nil {
		return o.Getenv(k)
	}
	return os.Getenv(k)
}

// NotFoundError is returned when Resolve finds nothing; it lists every place looked
// and every binary found but skipped because it is not a plugin.
type NotFoundError struct {
	Value  string
	Looked []string
	// Skipped are the programs on PATH that have the plugin's bare name but are not
	// plugins, each "found <path>: not a Flotilla plugin (<why>)". None was started.
	Skipped []string
}

// Error says what was looked for, what was skipped and why, and everywhere it was
// looked.
func (e *NotFoundError) Error() string {
	msg := fmt.Sprintf("%s: %q", ErrPluginNotFound, e.Value)
	if len(e.Skipped) > 0 {
		msg += ": " + strings.Join(e.Skipped, "; ")
	}
	msg += ": looked in " + strings.Join(e.Looked, "; ")
	if len(e.Skipped) > 0 && !strings.ContainsAny(e.Value, "/:") {
		msg += fmt.Sprintf("; install the plugin with `runner fleeting install`, put it on PATH as %s%s, or set plugin to the path of its binary",
			PluginPrefixes[0], e.Value)
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrPluginNotFound) hold.
func (e *NotFoundError) Unwrap() error { return ErrPluginNotFound }

// PluginPrefixes are the name prefixes that mark a program on PATH as a plugin:
// Flotilla's own, then GitLab's. A program named so is trusted to be one.
var PluginPrefixes = []string{"flotilla-plugin-", "fleeting-plugin-"}

// Resolve finds the binary for a `plugin = "…"` value: EmbeddedName is the built-in
// provider; a path (absolute, or starting with ./ or ../) is used as is; otherwise
// the value is a reference looked up in the install root (highest installed version
// matching its constraint), and a bare name (no "/" or ":") is then searched on PATH
// as flotilla-plugin-<name>, fleeting-plugin-<name> and, last, <name> itself. A
// program found under the bare name (plugin = "aws" finds the AWS CLI) is used only
// if it is built as a plugin (IsPluginBinary); otherwise it is skipped, never
// started, and the error says what it is.
func Resolve(value string, opts Options) (Resolved, error) {
	if value == EmbeddedName {
		return Resolved{Source: SourceEmbedded, Embedded: true}, nil
	}
	if IsPathValue(value) {
		p, err := filepath.Abs(value)
		if err != nil {
			return Resolved{}, fmt.Errorf("resolve plugin %q: %w", value, err)
		}
		if why := executable(p); why != "" {
			return Resolved{}, &NotFoundError{Value: value, Looked: []string{p + " (" + why + ")"}}
		}
		return Resolved{Path: p, Source: SourceFile}, nil
	}
	var looked []string
	defaults := opts.Defaults.Merge(DefaultsFromEnv(opts.getenv))
	ref, perr := ParseReference(value, defaults)
	if perr == nil {
		root := opts.Root
		if root == "" {
			r, err := InstallDir(opts.getenv)
			if err != nil {
				return Resolved{}, fmt.Errorf("resolve plugin %q: %w", value, err)
			}
			root = r
		}
		r, why := findInstalled(root, ref)
		if why == "" {
			return r, nil
		}
		looked = append(looked, PluginDir(root, ref)+" ("+why+")")
	}
	if strings.ContainsAny(value, "/:") {
		if perr != nil {
			return Resolved{}, fmt.Errorf("resolve plugin: %w", perr)
		}
		return Resolved{}, &NotFoundError{Value: value, Looked: looked}
	}
	names := []string{value}
	if !hasPluginPrefix(value) {
		names = nil
		for _, p := range PluginPrefixes {
			names = append(names, p+value)
		}
		names = append(names, value)
	}
	var skipped []string
	dirs := opts.Path
	if dirs == nil {
		dirs = filepath.SplitList(opts.getenv("PATH"))
	}
	// Each name is searched across the whole PATH before the next, as successive
	// exec.LookPath calls would: a prefixed name anywhere beats a literal <name>.
	for _, n := range names {
		for _, dir := range dirs {
			if dir == "" || !filepath.IsAbs(dir) {
				continue
			}
			for _, cand := range withExeSuffix(filepath.Join(dir, n)) {
				if executable(cand) != "" {
					continue
				}
				if !hasPluginPrefix(n) {
					if why := notPluginReason(cand, n); why != "" {
						skipped = append(skipped, fmt.Sprintf("found %s: not a Flotilla plugin (%s; it was not started)", cand, why))
						continue
					}
				}
				return Resolved{Path: cand, Source: SourcePath}, nil
			}
		}
	}
	for _, dir := range dirs {
		if dir == "" || !filepath.IsAbs(dir) {
			// A relative PATH entry would make the result depend on the working
			// directory; Go's os/exec refuses that too.
			looked = append(looked, fmt.Sprintf("PATH entry %q (skipped: not absolute)", dir))
			continue
		}
		looked = append(looked, fmt.Sprintf("PATH %s (no plugin named %s)", dir, strings.Join(names, " or ")))
	}
	if len(dirs) == 0 {
		looked = append(looked, "PATH (empty)")
	}
	return Resolved{}, &NotFoundError{Value: value, Looked: looked, Skipped: skipped}
}

func hasPluginPrefix(name string) bool {
	for _, p := range PluginPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// InstalledVersions lists the versions of ref's plugin installed under root that have
// a binary, highest first.
func InstalledVersions(root string, ref Reference) ([]string, error) {
	entries, err := os.ReadDir(PluginDir(root, ref))
	if err != nil {
		return nil, err
	}
	var vs []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if _, err := ParseVersion(e.Name()); err != nil {
			continue // temp dirs of an install in progress, and anything else
		}
		if executable(filepath.Join(PluginDir(root, ref), e.Name(), BinaryName())) == "" {
			vs = append(vs, e.Name())
		}
	}
	return SortVersions(vs), nil
}

func findInstalled(root string, ref Reference) (Resolved, string) {
	vs, err := InstalledVersions(root, ref)
	if errors.Is(err, fs.ErrNotExist) {
		return Resolved{}, "not installed"
	}
	if err != nil {
		return Resolved{}, err.Error()
	}
	v, ok := ref.Constraint.Select(vs)
	if !ok {
		if len(vs) == 0 {
			return Resolved{}, "no installed version"
		}
		return Resolved{}, fmt.Sprintf("no installed version matches %q; installed: %s", ref.Constraint, strings.Join(vs, ", "))
	}
	dir := VersionDir(root, ref, v)
	r := Resolved{Path: filepath.Join(dir, BinaryName()), Version: v.String(), Source: SourceInstalled, Reference: &ref}
	if m, err := ReadMetadata(dir); err == nil {
		r.Metadata = &m
	}
	return r, ""
}

// IsPathValue reports whether a plugin value is a file path (absolute, or starting
// with ./ or ../) rather than a reference or a name to search on PATH.
func IsPathValue(v string) bool {
	return filepath.IsAbs(v) || strings.HasPrefix(v, "./") || strings.HasPrefix(v, "../") ||
		(runtime.GOOS == "windows" && (strings.HasPrefix(v, `.\`) || strings.HasPrefix(v, `..\`)))
}

func withExeSuffix(p string) []string {
	if runtime.GOOS == "windows" && !strings.HasSuffix(strings.ToLower(p), ".exe") {
		return []string{p, p + ".exe"}
	}
	return []string{p}
}

// executable returns "" when p is a regular file we may run, else why not.
func executable(p string) string {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "does not exist"
	case err != nil:
		return err.Error()
	case !fi.Mode().IsRegular():
		return "not a regular file"
	case runtime.GOOS != "windows" && fi.Mode().Perm()&0o111 == 0:
		return "not executable"
	}
	return ""
}

// InstallMetadata records one installation; the installer writes it as MetadataFile
// next to the binary, and `runner fleeting list` reports it.
type InstallMetadata struct {
	// Reference is the fully qualified reference with the installed version.
	Reference string `json:"reference"`
	Name      string `json:"name"`
	Version   string `json:"version"`
	// Platform is os/arch[/variant] of the installed binary.
	Platform string `json:"platform"`
	// IndexDigest, ManifestDigest and BinaryDigest identify what was installed.
	IndexDigest    string `json:"index_digest"`
	ManifestDigest string `json:"manifest_digest"`
	BinaryDigest   string `json:"binary_digest"`
	// Origin is "registry" or "offline:<path>".
	Origin    string          `json:"origin"`
	Signature SignatureRecord `json:"signature"`
	Installed time.Time       `json:"installed_at"`
}

// SignatureRecord is the outcome of signature verification at install time.
type SignatureRecord struct {
	Verified bool `json:"verified"`
	// KeyID is the fingerprint of the key that verified (when Verified).
	KeyID string `json:"key_id,omitempty"`
	// Note explains an unverified install (e.g. "unsigned, allowed by --allow-unsigned").
	Note string `json:"note,omitempty"`
}

// ReadMetadata reads MetadataFile from an installed version directory.
func ReadMetadata(versionDir string) (InstallMetadata, error) {
	var m InstallMetadata
	b, err := os.ReadFile(filepath.Join(versionDir, MetadataFile))
	if err != nil {
		return m, fmt.Errorf("read install metadata: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("read install metadata %s: %w", filepath.Join(versionDir, MetadataFile), err)
	}
	return m, nil
}

// WriteMetadata writes m as MetadataFile into dir.
func WriteMetadata(dir string, m InstallMetadata) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode install metadata: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, MetadataFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write install metadata: %w", err)
	}
	return nil
}
