package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/plugins"
	"github.com/flotilla-ci/flotilla/plugins/local"
	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// pluginCmd is `runner plugin`; commands about provider plugins attach to it from
// their own files' init functions.
var pluginCmd = &cobra.Command{
	Use:   "plugin",
	Short: "Work with provider (fleeting) plugins",
}

// pluginCheckOptions are the flags of `runner plugin check`.
type pluginCheckOptions struct {
	config, connector string
	timeout           time.Duration
	maxSize           int
	json              bool
}

func init() {
	var opts pluginCheckOptions
	check := &cobra.Command{
		Use:   "check <plugin> [--config plugin.json]",
		Short: "Check a plugin binary against the protocol's conformance clauses",
		Long: `check launches the plugin exactly as the runner does and runs the conformance kit
(sdk/conformance) against it: level L0 (the wire: handshake, version --json, provider
info, configuration errors, ErrNotSupported, Shutdown, cancellation) always, and level
L1 (the contract: it CREATES and DELETES instances) when --config gives a plugin_config.
Every clause is printed as PASS, FAIL or SKIP with the reason; the exit status is 1 if
any clause failed. <plugin> is a path, an installed plugin reference or a name on PATH,
resolved as config.toml's plugin = "…" is; "local" checks the built-in plugin.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPluginCheck(cmd.Context(), cmd.OutOrStdout(), args[0], opts)
		},
	}
	f := check.Flags()
	f.StringVar(&opts.config, "config", "", "plugin_config as a JSON file; enables L1, which creates and deletes instances")
	f.StringVar(&opts.connector, "connector", "", `connector_config as a JSON file ({"username": "ci", "key_path": "id_ed25519", "timeout": "30s", …})`)
	f.DurationVar(&opts.timeout, "timeout", 2*time.Minute, "bound on each wait: one call, or instances reaching a state")
	f.IntVar(&opts.maxSize, "max-size", 0, "the size limit the plugin is configured with, if it does not report one (checked when <= 10)")
	f.BoolVar(&opts.json, "json", false, "print the report as JSON")
	pluginCmd.AddCommand(check)
	root.AddCommand(pluginCmd)
}

// runPluginCheck is `runner plugin check`.
func runPluginCheck(ctx context.Context, out io.Writer, value string, opts pluginCheckOptions) error {
	cfg := conformance.Config{Timeout: opts.timeout, MaxSize: opts.maxSize}
	res, err := plugins.Resolve(value, plugins.Options{})
	if err != nil {
		return err
	}
	cfg.Binary = res.Path
	if res.Embedded {
		// The built-in plugin is this binary, re-executed as the host would.
		if cfg.Binary, err = os.Executable(); err != nil {
			return fmt.Errorf("find the runner binary to check the built-in plugin: %w", err)
		}
		cfg.Args = []string{local.EmbeddedCommand}
	}
	if opts.config != "" {
		if cfg.PluginConfig, err = readJSONObject(opts.config); err != nil {
			return err
		}
		cfg.L1 = true
	}
	if opts.connector != "" {
		if cfg.Connector, err = readConnector(opts.connector); err != nil {
			return err
		}
	}
	rep, err := conformance.Check(ctx, cfg)
	if err != nil {
		return err
	}
	if opts.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteText(out)
	}
	if err != nil {
		return err
	}
	if !rep.OK() {
		return exitError{1}
	}
	return nil
}

// readJSONObject reads a file holding one JSON object; errors name the file and line.
func readJSONObject(path string) (json.RawMessage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read plugin config: %w", err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%s: %s: the file must hold the plugin_config as one JSON object", jsonPosition(path, data, err), err)
	}
	return json.RawMessage(data), nil
}

// jsonPosition is "path:line" for a JSON syntax error, else path.
func jsonPosition(path string, data []byte, err error) string {
	var off int64
	switch e := err.(type) {
	case *json.SyntaxError:
		off = e.Offset
	case *json.UnmarshalTypeError:
		off = e.Offset
	default:
		return path
	}
	return fmt.Sprintf("%s:%d", path, 1+bytes.Count(data[:min(int(off), len(data))], []byte("\n")))
}

// connectorFile is the JSON form of connector_config that --connector reads: the keys
// of [runners.autoscaler.connector_config], durations as "30s", the key from a file.
type connectorFile struct {
	OS                   string `json:"os"`
	Arch                 string `json:"arch"`
	Protocol             string `json:"protocol"`
	ProtocolPort         int    `json:"protocol_port"`
	Username             string `json:"username"`
	Password             string `json:"password"`
	KeyPath              string `json:"key_path"`
	UseStaticCredentials bool   `json:"use_static_credentials"`
	Keepalive            string `json:"keepalive"`
	Timeout              string `json:"timeout"`
}

func readConnector(path string) (provider.ConnectorConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return provider.ConnectorConfig{}, fmt.Errorf("read connector config: %w", err)
	}
	var f connectorFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return provider.ConnectorConfig{}, fmt.Errorf("%s: %s (known keys: os, arch, protocol, protocol_port, username, password, key_path, use_static_credentials, keepalive, timeout)",
			jsonPosition(path, data, err), err)
	}
	cc := provider.ConnectorConfig{OS: f.OS, Arch: f.Arch, Protocol: provider.Protocol(f.Protocol), ProtocolPort: f.ProtocolPort,
		Username: f.Username, Password: f.Password, UseStaticCredentials: f.UseStaticCredentials}
	for _, d := range []struct {
		key, value string
		into       *time.Duration
	}{{"keepalive", f.Keepalive, &cc.Keepalive}, {"timeout", f.Timeout, &cc.Timeout}} {
		if d.value == "" {
			continue
		}
		if *d.into, err = time.ParseDuration(d.value); err != nil {
			return cc, fmt.Errorf("%s: %s: %q is not a duration; write it like \"30s\" or \"5m\"", path, d.key, d.value)
		}
	}
	if f.KeyPath != "" {
		keyPath := f.KeyPath
		if !filepath.IsAbs(keyPath) { // relative to the file that names it
			keyPath = filepath.Join(filepath.Dir(path), keyPath)
		}
		if cc.Key, err = os.ReadFile(keyPath); err != nil {
			return cc, fmt.Errorf("%s: key_path: %w", path, err)
		}
	}
	if strings.TrimSpace(string(cc.Protocol)) != "" && provider.DefaultProtocolPorts[cc.Protocol] == 0 {
		return cc, fmt.Errorf("%s: protocol: %q is not one of ssh, winrm, winrm+https", path, cc.Protocol)
	}
	return cc, nil
}
