// Package fleeting implements the per-runner `runner fleeting install` and
// `runner fleeting list` commands over config.toml, with GitLab Runner's output lines
// and exit codes, on top of discovery (package plugins) and the OCI installer
// (package oci).
package fleeting

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pelletier/go-toml/v2"

	"github.com/flotilla-ci/flotilla/host/plugins"
	"github.com/flotilla-ci/flotilla/host/plugins/oci"
)

// ErrFailed means at least one runner's plugin failed; the CLI exits 1. The details
// were already printed.
var ErrFailed = errors.New("one or more plugins failed")

// NoPluginsMessage is printed when no runner has an autoscaler (GitLab's wording).
const NoPluginsMessage = "No plugins to install, review your runner configuration."

// Config is the part of config.toml these commands read.
//
// TODO(host/config): switch to host/config once it models [fleeting]; this local
// struct exists so the commands did not wait for it.
type Config struct {
	Fleeting FleetingConfig `toml:"fleeting"`
	Runners  []Runner       `toml:"runners"`
}

// FleetingConfig is the [fleeting] table: plugin defaults and trust.
type FleetingConfig struct {
	// Registry and Repository complete partial plugin references (before the
	// FLOTILLA_PLUGIN_REGISTRY / FLOTILLA_PLUGIN_REPOSITORY environment variables).
	Registry   string `toml:"registry"`
	Repository string `toml:"repository"`
	// PublicKeys are trusted signing keys: PEM file paths or inline PEM.
	PublicKeys []string `toml:"public_keys"`
}

// Runner is one [[runners]] entry, reduced to what plugin management needs.
type Runner struct {
	Name       string      `toml:"name"`
	Token      string      `toml:"token"`
	Autoscaler *Autoscaler `toml:"autoscaler"`
}

// Autoscaler is [runners.autoscaler], reduced to the plugin reference.
type Autoscaler struct {
	Plugin string `toml:"plugin"`
}

// ShortDescription names a runner in output lines: its name, else the first 8
// characters of its token (GitLab prints the shortened token).
func (r Runner) ShortDescription() string {
	if r.Name != "" {
		return r.Name
	}
	if len(r.Token) > 8 {
		return r.Token[:8]
	}
	return r.Token
}

// LoadConfig reads the fleeting-related parts of config.toml at path.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	if err := toml.Unmarshal(b, &c); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return c, fmt.Errorf("%s:%d:%d: %s", path, row, col, de.Error())
		}
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Defaults returns the reference defaults: config keys, then environment, then GitLab's.
func (c Config) Defaults(getenv func(string) string) plugins.Defaults {
	return plugins.Defaults{Registry: c.Fleeting.Registry, Repository: c.Fleeting.Repository}.Merge(plugins.DefaultsFromEnv(getenv))
}

// TrustedKeys loads the keys from the config and from oci.EnvPublicKeys.
func (c Config) TrustedKeys(getenv func(string) string) ([]ed25519.PublicKey, error) {
	entries := append(append([]string(nil), c.Fleeting.PublicKeys...), oci.PublicKeysFromEnv(getenv)...)
	return oci.LoadPublicKeys(entries)
}

// InstallOptions are the flags of `runner fleeting install`.
type InstallOptions struct {
	Upgrade       bool
	AllowUnsigned bool
	Offline       string
	// Root is the install root; empty means plugins.InstallDir.
	Root   string
	Remote oci.RemoteOptions
	// Getenv replaces os.Getenv (tests).
	Getenv func(string) string
}

// Install installs every runner's plugin, printing GitLab's lines: success on
// stdout, `install/update error::` on stderr. It returns ErrFailed if any failed.
func Install(ctx context.Context, cfg Config, opts InstallOptions, stdout, stderr io.Writer) error {
	runners := autoscaled(cfg)
	if len(runners) == 0 {
		fmt.Fprintln(stderr, NoPluginsMessage)
		return nil
	}
	root := opts.Root
	if root == "" {
		r, err := plugins.InstallDir(opts.Getenv)
		if err != nil {
			return err
		}
		root = r
	}
	keys, err := cfg.TrustedKeys(opts.Getenv)
	if err != nil {
		return err
	}
	in := &oci.Installer{
		Root: root, Defaults: cfg.Defaults(opts.Getenv), TrustedKeys: keys, AllowUnsigned: opts.AllowUnsigned,
		Upgrade: opts.Upgrade, Remote: opts.Remote, Offline: opts.Offline, Progress: stderr,
	}
	failed := false
	for _, r := range runners {
		res, err := in.Install(ctx, r.Autoscaler.Plugin)
		if err != nil {
			failed = true
			fmt.Fprintf(stderr, "runner: %s, plugin: %s, install/update error:: %v\n", r.ShortDescription(), r.Autoscaler.Plugin, err)
			continue
		}
		path := res.Path
		if res.Embedded {
			path = "(embedded)"
		}
		fmt.Fprintf(stdout, "runner: %s, plugin: %s, path: %s\n", r.ShortDescription(), r.Autoscaler.Plugin, path)
	}
	if failed {
		return ErrFailed
	}
	return nil
}

// ListOptions configure `runner fleeting list`.
type ListOptions struct {
	Root   string
	Path   []string
	Getenv func(string) string
}

// List prints, for each runner, its plugin as discovery resolves it: GitLab's
// `runner: …, plugin: …, path: …` followed by the version and signature status, or
// `runner: …, plugin: …, error: …` on stderr. It returns ErrFailed if any is missing.
func List(cfg Config, opts ListOptions, stdout, stderr io.Writer) error {
	failed := false
	for _, r := range autoscaled(cfg) {
		res, err := plugins.Resolve(r.Autoscaler.Plugin, plugins.Options{
			Root: opts.Root, Defaults: plugins.Defaults{Registry: cfg.Fleeting.Registry, Repository: cfg.Fleeting.Repository},
			Path: opts.Path, Getenv: opts.Getenv,
		})
		if err != nil {
			failed = true
			fmt.Fprintf(stderr, "runner: %s, plugin: %s, error: %v\n", r.ShortDescription(), r.Autoscaler.Plugin, err)
			continue
		}
		path, version, sig := res.Path, res.Version, ""
		switch {
		case res.Embedded:
			path, version, sig = "(embedded)", "built-in", "n/a (built into the runner)"
		case res.Source != plugins.SourceInstalled:
			version, sig = "unknown", "none (not installed by runner fleeting install; found via "+string(res.Source)+")"
		case res.Metadata == nil:
			sig = "unknown (no " + plugins.MetadataFile + ")"
		case res.Metadata.Signature.Verified:
			sig = "verified (" + res.Metadata.Signature.KeyID + ")"
		default:
			sig = "not verified (" + res.Metadata.Signature.Note + ")"
		}
		fmt.Fprintf(stdout, "runner: %s, plugin: %s, path: %s, version: %s, signature: %s\n", r.ShortDescription(), r.Autoscaler.Plugin, path, version, sig)
	}
	if failed {
		return ErrFailed
	}
	return nil
}

func autoscaled(cfg Config) []Runner {
	var out []Runner
	for _, r := range cfg.Runners {
		if r.Autoscaler != nil {
			out = append(out, r)
		}
	}
	return out
}
