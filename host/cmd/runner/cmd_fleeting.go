package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/plugins"
	"github.com/flotilla-ci/flotilla/host/plugins/fleeting"
	"github.com/flotilla-ci/flotilla/host/plugins/oci"
)

// The `runner fleeting` commands: install/list per config.toml (GitLab's output and
// exit codes), registry login, and package/push/sign/keygen for plugin authors.
// Logic lives in host/plugins/{fleeting,oci}; see docs/plugins-install.md.
func init() {
	var cfgPath string
	var plainHTTP bool
	cmd := &cobra.Command{
		Use:   "fleeting",
		Short: "Install, list and publish fleeting plugins (OCI artifacts, signed)",
	}
	cmd.PersistentFlags().StringVarP(&cfgPath, "config", "c", defaultConfigPath(), configUsage)
	cmd.PersistentFlags().BoolVar(&plainHTTP, "plain-http", false, "talk plain HTTP to the registry (local or test registries only)")
	remote := func() oci.RemoteOptions { return oci.RemoteOptions{PlainHTTP: plainHTTP} }
	// defaults reads the [fleeting] defaults when the config exists; commands that
	// do not need a config (login, push, sign) still work without one.
	defaults := func() plugins.Defaults {
		cfg, err := fleeting.LoadConfig(cfgPath)
		if err != nil {
			return plugins.DefaultsFromEnv(nil)
		}
		return cfg.Defaults(nil)
	}

	var inst fleeting.InstallOptions
	install := &cobra.Command{
		Use:   "install",
		Short: "Install the plugin of every [[runners]] with [runners.autoscaler]",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := fleeting.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			inst.Remote = remote()
			err = fleeting.Install(c.Context(), cfg, inst, c.OutOrStdout(), c.ErrOrStderr())
			if errors.Is(err, fleeting.ErrFailed) {
				return exitError{1}
			}
			return err
		},
	}
	install.Flags().BoolVar(&inst.Upgrade, "upgrade", false, "resolve against the registry even if a matching version is installed")
	install.Flags().StringVar(&inst.Offline, "offline", "", "install from an OCI layout directory or tarball (or a directory of <name>/ layouts and <name>.tar files)")
	install.Flags().BoolVar(&inst.AllowUnsigned, "allow-unsigned", false, "install artifacts that are unsigned or that no configured key can check")

	list := &cobra.Command{
		Use:   "list",
		Short: "Show each runner's plugin: path, version and signature status",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := fleeting.LoadConfig(cfgPath)
			if err != nil {
				return err
			}
			if err := fleeting.List(cfg, fleeting.ListOptions{}, c.OutOrStdout(), c.ErrOrStderr()); errors.Is(err, fleeting.ErrFailed) {
				return exitError{1}
			} else if err != nil {
				return err
			}
			return nil
		},
	}

	var user, password string
	var passwordStdin bool
	login := &cobra.Command{
		Use:   "login [server]",
		Short: "Store registry credentials in the Docker config (or its credential helper)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			server := defaults().Registry
			if len(args) == 1 {
				server = args[0]
			}
			if passwordStdin {
				if password != "" {
					return fmt.Errorf("login: use --password or --password-stdin, not both")
				}
				p, err := oci.ReadPassword(c.InOrStdin())
				if err != nil {
					return err
				}
				password = p
			}
			mech, err := oci.Login(c.Context(), server, user, password, remote())
			if err != nil {
				return err
			}
			fmt.Fprintln(c.OutOrStdout(), "logged in via", mech)
			return nil
		},
	}
	login.Flags().StringVar(&user, "username", "", "registry user name")
	login.Flags().StringVar(&password, "password", "", "registry password (prefer --password-stdin)")
	login.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from stdin")

	var pk oci.PackageOptions
	var dist, keyPath string
	var binaries []string
	var unsigned bool
	pkg := &cobra.Command{
		Use:   "package",
		Short: "Build a signed multi-platform plugin artifact (OCI layout or .tar)",
		Long: "Build the plugin artifact from built binaries: dist/<os>/<arch>/plugin (--dist)\n" +
			"and/or --binary os/arch[/variant]=path, sign it with --key, and write an OCI\n" +
			"image layout (or a tarball when --output ends in .tar) for `runner fleeting push`\n" +
			"or `runner fleeting install --offline`.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if dist != "" {
				bins, err := oci.BinariesFromDist(dist)
				if err != nil {
					return err
				}
				pk.Binaries = append(pk.Binaries, bins...)
			}
			for _, b := range binaries {
				plat, path, ok := strings.Cut(b, "=")
				if !ok {
					return fmt.Errorf("--binary %q: want os/arch=path", b)
				}
				p, err := oci.ParsePlatform(plat)
				if err != nil {
					return fmt.Errorf("--binary: %w", err)
				}
				pk.Binaries = append(pk.Binaries, oci.Binary{Platform: p, Path: path})
			}
			switch {
			case keyPath == "" && !unsigned:
				return fmt.Errorf("package: pass --key <private key> (create one with `runner fleeting keygen`) or --unsigned")
			case keyPath != "":
				k, err := oci.LoadPrivateKey(keyPath)
				if err != nil {
					return err
				}
				pk.Key = k
			}
			d, err := oci.Package(c.Context(), pk)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "packaged %s:%s (%d platforms) as %s in %s\n", pk.Name, pk.Version, len(pk.Binaries), d.Digest, pk.Output)
			return nil
		},
	}
	pkg.Flags().StringVar(&pk.Name, "name", "", "plugin name, e.g. aws")
	pkg.Flags().StringVar(&pk.Version, "version", "", "plugin version, semver without v, e.g. 1.2.3")
	pkg.Flags().StringVar(&dist, "dist", "", "directory laid out as <os>/<arch>/plugin")
	pkg.Flags().StringArrayVar(&binaries, "binary", nil, "os/arch[/variant]=path of one binary (repeatable)")
	pkg.Flags().StringVar(&keyPath, "key", "", "ed25519 private key (PEM PKCS#8) to sign with")
	pkg.Flags().BoolVar(&unsigned, "unsigned", false, "package without a signature")
	pkg.Flags().StringVarP(&pk.Output, "output", "o", "", "OCI layout directory, or a .tar file")
	pkg.MarkFlagRequired("name")
	pkg.MarkFlagRequired("version")
	pkg.MarkFlagRequired("output")

	push := &cobra.Command{
		Use:   "push <layout-dir|tar> <[registry/]repository/name[:version]>",
		Short: "Upload a packaged plugin version and its signature to a registry",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			ref, d, err := oci.Push(c.Context(), args[0], args[1], defaults(), remote())
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "pushed %s@%s\n", ref, d.Digest)
			return nil
		},
	}

	var signVersion string
	sign := &cobra.Command{
		Use:   "sign --key <private key> <layout-dir | reference:version>",
		Short: "Sign a packaged plugin version (in a layout directory or a registry)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if keyPath == "" {
				return fmt.Errorf("sign: --key is required")
			}
			k, err := oci.LoadPrivateKey(keyPath)
			if err != nil {
				return err
			}
			var idx, keyID string
			if fi, serr := os.Stat(args[0]); serr == nil && fi.IsDir() {
				d, id, err := oci.SignLayout(c.Context(), args[0], signVersion, k)
				if err != nil {
					return err
				}
				idx, keyID = d.Digest.String(), id
			} else {
				d, id, err := oci.SignRemote(c.Context(), args[0], defaults(), k, remote())
				if err != nil {
					return err
				}
				idx, keyID = d.Digest.String(), id
			}
			fmt.Fprintf(c.OutOrStdout(), "signed %s with key %s\n", idx, keyID)
			return nil
		},
	}
	sign.Flags().StringVar(&keyPath, "key", "", "ed25519 private key (PEM PKCS#8)")
	sign.Flags().StringVar(&signVersion, "version", "", "version tag to sign in a layout holding several")

	keygen := &cobra.Command{
		Use:   "keygen <private-key-file>",
		Short: "Create an ed25519 signing key pair (<file> and <file>.pub)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			pub, err := oci.GenerateKey(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "wrote %s and %s.pub (key %s)\n", args[0], args[0], oci.KeyID(pub))
			return nil
		},
	}

	cmd.AddCommand(install, list, login, pkg, push, sign, keygen)
	root.AddCommand(cmd)
}
