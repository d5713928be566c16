// Package instancegroup is the skeleton every cloud instance-group plugin shares, so
// that a plugin for a new cloud writes only its API calls: the Init flow (build the
// clients, fetch the group, run the doctor's checks, make the ephemeral SSH key),
// plugin_config validation that names each key, and the `doctor` subcommand (flags or
// --config, the checks, the report).
//
// A plugin embeds Base in its InstanceGroup, describes its cloud in a Spec, and calls
// Init from its own Init and DoctorCommand from its Commands. What differs from cloud
// to cloud (the group's description G, the checks, the provider ID and size) stays in
// the plugin.
package instancegroup

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/doctor"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/flotilla-ci/flotilla/sdk/sshkey"
)

// Base is what Init keeps for the plugin's other calls. Embed it in the plugin's
// InstanceGroup; its fields are tagged out of plugin_config, so embedding it adds no
// configuration keys.
type Base struct {
	// Log is the logger the host gave Init (a null logger in the doctor command).
	Log hclog.Logger `json:"-"`
	// Settings are the host's settings from Init.
	Settings provider.Settings `json:"-"`
	// Key is the ephemeral SSH key: made by Init when the connector does not use static
	// credentials and the Spec names a KeyComment, else empty.
	Key Key `json:"-"`
}

// Key is an ephemeral SSH key the plugin pushes to its instances.
type Key struct {
	// PEM is the private key in OpenSSH PEM form, for provider.ConnectInfo.Key.
	PEM []byte
	// Public is the public key in authorized_keys form, for the cloud.
	Public string
}

// Spec is one cloud's part of the shared flow: its API calls, as functions (usually
// method values of the plugin's InstanceGroup, so they read the configuration when
// called). G is the cloud's own description of the group.
type Spec[G any] struct {
	// Group names the group in Init's doctor errors, such as "auto scaling group ci":
	// "<Group>: doctor <check>: ...".
	Group string
	// Connect builds the API clients from the decoded configuration.
	Connect func(ctx context.Context) error
	// Close frees the clients after the doctor command; nil when there is nothing to free.
	Close func() error
	// Describe fetches the group; a group that is not there wraps
	// provider.ErrInvalidConfig.
	Describe func(ctx context.Context) (G, error)
	// DescribeCheck and DescribeFix name the finding reported when Describe fails in
	// Doctor, so the doctor command says what to check.
	DescribeCheck, DescribeFix string
	// Check runs the doctor's checks on the group. Error findings fail Init; warnings
	// are logged.
	Check func(ctx context.Context, group G) []doctor.Finding
	// KeyComment is the comment of the ephemeral SSH key Init makes when the connector
	// does not use static credentials; empty when the plugin pushes no keys.
	KeyComment string

	// Config is the plugin's configuration (a pointer to its struct): the doctor
	// command decodes --config into it, or calls its Validate after the flags.
	Config any
	// Flags registers the configuration's keys as flags of the doctor command.
	Flags func(fs *flag.FlagSet)
	// StaticCredentialsUsage is the usage of the doctor command's --static-credentials
	// flag; empty leaves the flag out and runs the checks as with static credentials
	// (for a plugin that pushes no keys there is nothing else to check).
	StaticCredentialsUsage string
}

// Init is the Init flow every instance-group plugin shares: keep logger and settings
// in b, build the clients, fetch the group, apply the doctor's checks (warnings are
// logged, errors fail Init as provider.ErrInvalidConfig: retrying would not help), and
// make the ephemeral SSH key unless the connector uses static credentials. It returns
// the group for the plugin's ProviderInfo.
func Init[G any](ctx context.Context, b *Base, logger hclog.Logger, settings provider.Settings, s Spec[G]) (G, error) {
	var zero G
	b.Log, b.Settings = logger, settings
	if err := s.Connect(ctx); err != nil {
		return zero, err
	}
	group, err := s.Describe(ctx)
	if err != nil {
		return zero, err
	}
	if err := doctor.Apply(logger, s.Check(ctx, group)); err != nil {
		return zero, fmt.Errorf("%s: %w", s.Group, err)
	}
	if !settings.UseStaticCredentials && s.KeyComment != "" {
		if b.Key.PEM, b.Key.Public, err = sshkey.Generate(s.KeyComment); err != nil {
			return zero, err
		}
	}
	return group, nil
}

// Doctor fetches the group and runs the checks: the body of a plugin's exported Doctor
// method. A group that cannot be fetched is one error finding (and the error), so the
// doctor command still prints what to fix.
func Doctor[G any](ctx context.Context, s Spec[G]) ([]doctor.Finding, error) {
	group, err := s.Describe(ctx)
	if err != nil {
		return []doctor.Finding{{Check: s.DescribeCheck, Severity: doctor.Error, Message: err.Error(), Fix: s.DescribeFix}}, err
	}
	return s.Check(ctx, group), nil
}

// DoctorCommand is the plugin binary's `doctor` subcommand: flags carry
// plugin_config's keys (or --config a JSON object of it); it prints one line per
// check (or --json) and fails on any error finding. The checks run with a null logger
// and build their own clients, as Init would.
func DoctorCommand[G any](b *Base, usage string, s Spec[G]) plugin.Command {
	return plugin.Command{Name: "doctor", Usage: usage, Run: func(ctx context.Context, args []string, stdout io.Writer) error {
		fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
		fs.SetOutput(stdout)
		cfgJSON := fs.String("config", "", "plugin_config as a JSON object (instead of the flags below)")
		if s.Flags != nil {
			s.Flags(fs)
		}
		staticCreds := new(bool)
		if s.StaticCredentialsUsage != "" {
			fs.BoolVar(staticCreds, "static-credentials", false, s.StaticCredentialsUsage)
		} else {
			*staticCreds = true
		}
		asJSON := fs.Bool("json", false, "print the findings as JSON")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if *cfgJSON != "" {
			if err := plugin.DecodeConfig([]byte(*cfgJSON), s.Config); err != nil {
				return fmt.Errorf("--config: %w", err)
			}
		} else if v, ok := s.Config.(provider.Validator); ok {
			if err := v.Validate(); err != nil {
				return err
			}
		}
		b.Log = hclog.NewNullLogger()
		b.Settings = provider.Settings{ConnectorConfig: provider.ConnectorConfig{UseStaticCredentials: *staticCreds}}
		if err := s.Connect(ctx); err != nil {
			return err
		}
		if s.Close != nil {
			defer s.Close()
		}
		findings, err := Doctor(ctx, s)
		return doctor.Report(stdout, findings, *asJSON, err)
	}}
}

// Info is the ProviderInfo of a group: its ID, its size limit and the plugin's build.
func Info(v plugin.VersionInfo, id string, maxSize int) provider.ProviderInfo {
	return provider.ProviderInfo{ID: id, MaxSize: maxSize, Version: v.Version, BuildInfo: v.BuildInfo()}
}

// Problems collects plugin_config problems so that Validate reports every one at
// once, each naming its key ("plugin_config.<key>: ...") as the host's errors do.
type Problems struct{ errs []error }

// Add records a problem with key.
func (p *Problems) Add(key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("plugin_config.%s: %s", key, fmt.Sprintf(format, args...)))
}

// Required records a problem when value is empty; what says what the key holds.
func (p *Problems) Required(key, value, what string) {
	if value == "" {
		p.Add(key, "required: %s", what)
	}
}

// URL records a problem when value is set but is not an absolute URL; example shows
// one.
func (p *Problems) URL(key, value, example string) {
	if value == "" {
		return
	}
	if u, err := url.Parse(value); err != nil || u.Scheme == "" || u.Host == "" {
		p.Add(key, "%q is not a URL such as %s", value, example)
	}
}

// PositiveDuration records a problem when value is set but is not a positive
// time.Duration.
func (p *Problems) PositiveDuration(key, value string) {
	if value == "" {
		return
	}
	if d, err := time.ParseDuration(value); err != nil || d <= 0 {
		p.Add(key, "%q is not a positive duration such as \"20s\"", value)
	}
}

// NotNegative records a problem when n is negative (0 usually means the default).
func (p *Problems) NotNegative(key string, n int) {
	if n < 0 {
		p.Add(key, "%d is negative", n)
	}
}

// Err returns the problems joined, or nil.
func (p *Problems) Err() error { return errors.Join(p.errs...) }

// ExpandHome expands a leading "~/" in a configured file path: config.toml is often
// shared, and the plugin runs as the runner's user.
func ExpandHome(path string) string {
	if strings.HasPrefix(path, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, path[2:])
		}
	}
	return path
}
