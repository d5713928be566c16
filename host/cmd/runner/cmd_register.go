package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/runcmd"
)

// The commands that manage registrations, with GitLab Runner's flags, environment
// variables and meaning: register, list, verify, unregister, reset-token.
func init() {
	root.AddCommand(registerCmd(), listCmd(), verifyCmd(), unregisterCmd(), resetTokenCmd())
}

// registerFlags are register's flags beyond runcmd.RegisterOptions.
type registerFlags struct {
	nonInteractive, leaveRunner bool
	tlsCert, tlsKey             string
	setting                     map[string]*registerSetting
}

// registerSetting is a flag of register written as one key of the entry.
type registerSetting struct {
	flag, table, key string
	value            func() any
}

// registerSettings are the flags of GitLab's register that Flotilla writes into the
// entry: the flag, its environment variable and the key ("docker." for
// [runners.docker]).
var registerSettings = []struct {
	flag, env, key, kind, usage string
}{
	{"shell", "RUNNER_SHELL", "shell", "string", "shell of the job scripts: bash, sh, pwsh or powershell"},
	{"limit", "RUNNER_LIMIT", "limit", "int", "most jobs of this runner at once (0: no limit of its own)"},
	{"output-limit", "RUNNER_OUTPUT_LIMIT", "output_limit", "int", "largest job log, in kilobytes"},
	{"request-concurrency", "RUNNER_REQUEST_CONCURRENCY", "request_concurrency", "int", "most job requests in flight at once"},
	{"builds-dir", "RUNNER_BUILDS_DIR", "builds_dir", "string", "where projects are checked out on the instance"},
	{"cache-dir", "RUNNER_CACHE_DIR", "cache_dir", "string", "where caches are kept"},
	{"clone-url", "CLONE_URL", "clone_url", "string", "URL to clone from instead of GitLab's"},
	{"env", "RUNNER_ENV", "environment", "strings", "KEY=VALUE added to every job (repeatable)"},
	{"pre-get-sources-script", "RUNNER_PRE_GET_SOURCES_SCRIPT", "pre_get_sources_script", "string", "script run before the sources are fetched"},
	{"post-get-sources-script", "RUNNER_POST_GET_SOURCES_SCRIPT", "post_get_sources_script", "string", "script run after the sources are fetched"},
	{"pre-build-script", "RUNNER_PRE_BUILD_SCRIPT", "pre_build_script", "string", "script run before the job's script"},
	{"post-build-script", "RUNNER_POST_BUILD_SCRIPT", "post_build_script", "string", "script run after the job's script"},
	{"debug-trace-disabled", "RUNNER_DEBUG_TRACE_DISABLED", "debug_trace_disabled", "bool", "ignore CI_DEBUG_TRACE"},
	{"docker-privileged", "DOCKER_PRIVILEGED", "docker.privileged", "bool", "docker-autoscaler: run containers privileged"},
	{"docker-volumes", "DOCKER_VOLUMES", "docker.volumes", "strings", "docker-autoscaler: volumes of the job containers (repeatable)"},
	{"docker-pull-policy", "DOCKER_PULL_POLICY", "docker.pull_policy", "strings", "docker-autoscaler: always, if-not-present or never (repeatable)"},
	{"docker-network-mode", "DOCKER_NETWORK_MODE", "docker.network_mode", "string", "docker-autoscaler: network mode of the job containers"},
	{"docker-helper-image", "DOCKER_HELPER_IMAGE", "docker.helper_image", "string", "docker-autoscaler: helper image"},
	{"docker-memory", "DOCKER_MEMORY", "docker.memory", "string", "docker-autoscaler: memory limit of a job container"},
	{"docker-cpus", "DOCKER_CPUS", "docker.cpus", "string", "docker-autoscaler: CPUs of a job container"},
	{"docker-user", "DOCKER_USER", "docker.user", "string", "docker-autoscaler: user the job runs as"},
}

// foreignRegisterFlags are the prefixes of GitLab's register flags for executors and
// features Flotilla does not have: accepted, ignored with a warning, so that
// registration scripts written for GitLab Runner keep working.
const foreignRegisterFlags = "docker-,kubernetes-,ssh-,parallels-,virtualbox-,custom-,custom_build_dir-,machine-,cache-,referees-,feature-flags"

// legacyOnly are the flags that describe the runner on GitLab's side: GitLab Runner
// refuses them with a runner authentication token, whose settings live in GitLab.
var legacyOnly = []string{"locked", "access-level", "run-untagged", "maximum-timeout", "paused", "tag-list", "maintenance-note"}

// stdinIsTerminal reports whether register may ask its questions (a variable: tests
// answer them through a pipe).
var stdinIsTerminal = func(in io.Reader) bool {
	f, ok := in.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func registerCmd() *cobra.Command {
	o := runcmd.RegisterOptions{}
	rf := registerFlags{setting: map[string]*registerSetting{}}
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Register this host with GitLab and add a [[runners]] entry to config.toml",
		Long: "register verifies a runner authentication token (glrt-…, created in GitLab under Settings > CI/CD >\n" +
			"Runners > New runner) and appends a [[runners]] entry for it to config.toml; the rest of the file\n" +
			"(comments, other runners, key order) is left as it is. --registration-token uses GitLab's\n" +
			"deprecated registration flow. --template-config takes the entry's settings from a TOML file.\n\n" +
			"On a terminal it asks for what is missing, with the flags' and environment's values as defaults;\n" +
			"--non-interactive (or REGISTER_NON_INTERACTIVE=true, or a standard input that is not a terminal)\n" +
			"asks nothing. Every flag also reads GitLab Runner's environment variable, shown as [$NAME]; a\n" +
			"flag given wins. GitLab's flags for executors Flotilla does not have (--kubernetes-*, --ssh-*,\n" +
			"--cache-*, …) are accepted and ignored with a warning.",
		Args:        cobra.NoArgs,
		Annotations: map[string]string{foreignAnnotation: foreignRegisterFlags},
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runRegister(cmd, &o, &rf)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.ConfigPath, "config", "c", defaultConfigPath(), configUsage)
	f.StringVar(&o.Template, "template-config", "", "TOML file with a [[runners]] entry to take the settings from")
	envFlag(f, "template-config", "TEMPLATE_CONFIG_FILE")
	f.BoolVarP(&rf.nonInteractive, "non-interactive", "n", false, "ask nothing, even on a terminal")
	envFlag(f, "non-interactive", "REGISTER_NON_INTERACTIVE")
	f.BoolVar(&rf.leaveRunner, "leave-runner", false, "keep the runner in GitLab if the entry cannot be written (Flotilla always does)")
	envFlag(f, "leave-runner", "REGISTER_LEAVE_RUNNER")
	f.StringVarP(&o.URL, "url", "u", "", "GitLab instance URL, e.g. https://gitlab.com")
	envFlag(f, "url", "CI_SERVER_URL")
	f.StringVarP(&o.Token, "token", "t", "", "runner authentication token (glrt-…)")
	envFlag(f, "token", "CI_SERVER_TOKEN", "RUNNER_TOKEN")
	f.StringVarP(&o.RegistrationToken, "registration-token", "r", "", "legacy registration token (deprecated by GitLab)")
	envFlag(f, "registration-token", "REGISTRATION_TOKEN")
	f.StringVar(&o.TLSCAFile, "tls-ca-file", "", "PEM file of CAs to trust for GitLab")
	envFlag(f, "tls-ca-file", "CI_SERVER_TLS_CA_FILE")
	f.StringVar(&rf.tlsCert, "tls-cert-file", "", "client certificate for GitLab: not supported, ignored with a warning")
	envFlag(f, "tls-cert-file", "CI_SERVER_TLS_CERT_FILE")
	f.StringVar(&rf.tlsKey, "tls-key-file", "", "client key for GitLab: not supported, ignored with a warning")
	envFlag(f, "tls-key-file", "CI_SERVER_TLS_KEY_FILE")
	f.StringVar(&o.Name, "name", "", "name of the entry (default: host name)")
	envFlag(f, "name", "RUNNER_NAME")
	f.StringVar(&o.Description, "description", "", "the same as --name, as in GitLab Runner")
	f.StringVar(&o.Executor, "executor", config.ExecutorInstance, "instance or docker-autoscaler")
	envFlag(f, "executor", "RUNNER_EXECUTOR")
	f.StringVar(&o.DockerImage, "docker-image", "", "default job image (docker-autoscaler)")
	envFlag(f, "docker-image", "DOCKER_IMAGE")
	f.StringVar(&o.Plugin, "plugin", "local", "fleeting plugin of the pool (Flotilla)")
	f.IntVar(&o.CapacityPerInstance, "capacity-per-instance", 1, "jobs per instance (Flotilla)")
	f.IntVar(&o.MaxInstances, "max-instances", 2, "instances at most (Flotilla)")
	f.StringVar(&o.TagList, "tag-list", "", "legacy registration: comma-separated tags")
	envFlag(f, "tag-list", "RUNNER_TAG_LIST")
	f.BoolVar(&o.RunUntagged, "run-untagged", false, "legacy registration: also run untagged jobs (default true without --tag-list)")
	envFlag(f, "run-untagged", "REGISTER_RUN_UNTAGGED")
	f.BoolVar(&o.Locked, "locked", true, "legacy registration: lock the runner to its project")
	envFlag(f, "locked", "REGISTER_LOCKED")
	f.BoolVar(&o.Paused, "paused", false, "legacy registration: register paused")
	envFlag(f, "paused", "REGISTER_PAUSED")
	f.StringVar(&o.AccessLevel, "access-level", "", "legacy registration: not_protected or ref_protected")
	envFlag(f, "access-level", "REGISTER_ACCESS_LEVEL")
	f.IntVar(&o.MaximumTimeout, "maximum-timeout", 0, "legacy registration: maximum job timeout in seconds")
	envFlag(f, "maximum-timeout", "REGISTER_MAXIMUM_TIMEOUT")
	f.StringVar(&o.MaintenanceNote, "maintenance-note", "", "legacy registration: note for the runner's administrators")
	envFlag(f, "maintenance-note", "REGISTER_MAINTENANCE_NOTE")
	for _, s := range registerSettings {
		st := &registerSetting{flag: s.flag, key: s.key}
		if t, k, ok := strings.Cut(s.key, "."); ok {
			st.table, st.key = t, k
		}
		switch s.kind {
		case "string":
			v := f.String(s.flag, "", s.usage)
			st.value = func() any { return *v }
		case "int":
			v := f.Int(s.flag, 0, s.usage)
			st.value = func() any { return *v }
		case "bool":
			v := f.Bool(s.flag, false, s.usage)
			st.value = func() any { return *v }
		case "strings":
			v := f.StringArray(s.flag, nil, s.usage)
			st.value = func() any { return *v }
		}
		envFlag(f, s.flag, s.env)
		rf.setting[s.flag] = st
	}
	return cmd
}

// given reports whether flag name was set on the command line or by its environment.
func given(f *pflag.Flag) bool {
	if f.Changed {
		return true
	}
	for _, e := range f.Annotations[envAnnotation] {
		if os.Getenv(e) != "" {
			return true
		}
	}
	return false
}

func runRegister(cmd *cobra.Command, o *runcmd.RegisterOptions, rf *registerFlags) error {
	f := cmd.Flags()
	stderr := cmd.ErrOrStderr()
	o.Warn = stderr
	warnIgnored(stderr, ignoredFlags, "Flotilla has no such executor or feature")
	var unsupported []string
	for _, n := range []string{"tls-cert-file", "tls-key-file"} {
		if given(f.Lookup(n)) {
			unsupported = append(unsupported, "--"+n)
		}
	}
	warnIgnored(stderr, unsupported, "Flotilla does not present client certificates to GitLab")
	// GitLab Runner reads a glrt- token given as the registration token as what it is.
	if o.Token == "" && strings.HasPrefix(o.RegistrationToken, "glrt-") {
		o.Token, o.RegistrationToken = o.RegistrationToken, ""
	}
	switch {
	case o.Name == "":
		o.Name = o.Description
	case o.Description == "":
		o.Description = o.Name
	}
	if !rf.nonInteractive && stdinIsTerminal(cmd.InOrStdin()) {
		if err := askRegister(cmd.InOrStdin(), cmd.OutOrStdout(), o); err != nil {
			return err
		}
	}
	if o.Token != "" {
		var legacy []string
		for _, n := range legacyOnly {
			if fl := f.Lookup(n); given(fl) && fl.Value.String() != fl.DefValue {
				legacy = append(legacy, "--"+n)
			}
		}
		if len(legacy) > 0 {
			return usageError{cmd, fmt.Errorf("register: %s cannot be given with a runner authentication token (--token): "+
				"those settings belong to the runner in GitLab (Settings > CI/CD > Runners); set them there, or register with a legacy --registration-token",
				strings.Join(legacy, ", "))}
		}
	} else if !given(f.Lookup("run-untagged")) && o.TagList == "" {
		// GitLab Runner's default: a runner without tags takes untagged jobs.
		o.RunUntagged = true
	}
	if o.AccessLevel != "" && o.AccessLevel != "not_protected" && o.AccessLevel != "ref_protected" {
		return usageError{cmd, fmt.Errorf("register: --access-level %q: use not_protected or ref_protected", o.AccessLevel)}
	}
	o.Settings = nil
	for _, s := range registerSettings {
		st := rf.setting[s.flag]
		if fl := f.Lookup(s.flag); given(fl) {
			o.Settings = append(o.Settings, runcmd.Setting{Table: st.table, Key: st.key, Value: st.value()})
		}
	}
	// GitLab's default location may not exist yet (~/.gitlab-runner).
	if err := os.MkdirAll(filepath.Dir(o.ConfigPath), 0o700); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
	defer cancel()
	r, err := runcmd.Register(ctx, *o)
	if err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Runner %q (id %d) registered with %s and added to %s.\nStart it with: runner run --config %s\n",
		r.Name, r.ID, r.URL, o.ConfigPath, o.ConfigPath)
	return nil
}

// askRegister asks GitLab Runner's questions on a terminal, each with the value the
// flags and environment gave as its default.
func askRegister(in io.Reader, out io.Writer, o *runcmd.RegisterOptions) error {
	rd := bufio.NewReader(in)
	ask := func(prompt string, v *string, optional bool) error {
		for {
			fmt.Fprintln(out, prompt)
			if *v != "" {
				fmt.Fprintf(out, "[%s]: ", *v)
			}
			line, err := rd.ReadString('\n')
			if err != nil && (line == "" || !errors.Is(err, io.EOF)) {
				if errors.Is(err, io.EOF) {
					return fmt.Errorf("register: no answer to %q (standard input ended)", prompt)
				}
				return fmt.Errorf("register: read answer: %w", err)
			}
			if line = strings.TrimSpace(line); line != "" {
				*v = line
			}
			if *v != "" || optional {
				return nil
			}
		}
	}
	if err := ask("Enter the GitLab instance URL (for example, https://gitlab.com/):", &o.URL, false); err != nil {
		return err
	}
	if o.Token == "" {
		tok := o.RegistrationToken
		if err := ask("Enter the registration token:", &tok, false); err != nil {
			return err
		}
		if strings.HasPrefix(tok, "glrt-") {
			o.Token, o.RegistrationToken = tok, ""
		} else {
			o.RegistrationToken = tok
		}
	}
	if o.Token != "" {
		if o.Name == "" {
			o.Name, _ = os.Hostname()
		}
		if err := ask("Enter a name for the runner. This is stored only in the local config.toml file:", &o.Name, false); err != nil {
			return err
		}
	} else {
		if o.Description == "" {
			o.Description, _ = os.Hostname()
		}
		if err := ask("Enter a description for the runner:", &o.Description, false); err != nil {
			return err
		}
		o.Name = o.Description
		if err := ask("Enter tags for the runner (comma-separated):", &o.TagList, true); err != nil {
			return err
		}
		if err := ask("Enter optional maintenance note for the runner:", &o.MaintenanceNote, true); err != nil {
			return err
		}
	}
	for {
		if err := ask("Enter an executor: "+strings.Join(config.Executors, ", ")+":", &o.Executor, false); err != nil {
			return err
		}
		if slices.Contains(config.Executors, o.Executor) {
			break
		}
		fmt.Fprintf(out, "Invalid executor %q\n", o.Executor)
		o.Executor = ""
	}
	if o.Executor == config.ExecutorDockerAutoscaler {
		if err := ask("Enter the default Docker image (for example, ruby:3.3):", &o.DockerImage, false); err != nil {
			return err
		}
	}
	return ask("Enter the fleeting plugin of the pool (for example, aws, googlecloud, azure, local):", &o.Plugin, false)
}

func listCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the runner entries of config.toml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := config.Load(path)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			// GitLab Runner's layout: the message, then its fields.
			fmt.Fprintf(out, "%-50s ConfigFile=%s\n", "Listing configs", path)
			for _, r := range cfg.Runners {
				fmt.Fprintf(out, "%-50s Executor=%s Token=%s URL=%s\n", r.Name, r.Executor, r.Token, r.URL)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", defaultConfigPath(), configUsage)
	return cmd
}

func verifyCmd() *cobra.Command {
	var path, name string
	var del bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every runner entry's token with GitLab",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			res, err := runcmd.Verify(ctx, path, name, del, nil)
			if err != nil {
				return err
			}
			bad := 0
			for _, r := range res {
				if r.Valid {
					fmt.Fprintf(cmd.OutOrStdout(), "Verifying runner %q at %s: is valid\n", r.Name, r.URL)
					continue
				}
				bad++
				fmt.Fprintf(cmd.OutOrStdout(), "Verifying runner %q at %s: %v\n", r.Name, r.URL, r.Err)
			}
			if bad > 0 {
				if del {
					fmt.Fprintln(cmd.OutOrStdout(), "Entries GitLab refused were removed from", path)
				}
				return exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", defaultConfigPath(), configUsage)
	cmd.Flags().StringVarP(&name, "name", "n", "", "verify only this runner")
	envFlag(cmd.Flags(), "name", "RUNNER_NAME")
	cmd.Flags().BoolVar(&del, "delete", false, "remove entries whose token GitLab refuses")
	return cmd
}

func unregisterCmd() *cobra.Command {
	o := runcmd.UnregisterOptions{}
	cmd := &cobra.Command{
		Use:   "unregister",
		Short: "Unregister runners from GitLab and remove their entries from config.toml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			names, err := runcmd.Unregister(ctx, o)
			for _, n := range names {
				fmt.Fprintf(cmd.OutOrStdout(), "Runner %q unregistered and removed from %s\n", n, o.ConfigPath)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.ConfigPath, "config", "c", defaultConfigPath(), configUsage)
	f.StringVarP(&o.Name, "name", "n", "", "the runner entry's name")
	envFlag(f, "name", "RUNNER_NAME")
	f.StringVarP(&o.URL, "url", "u", "", "GitLab URL of the entry (with --token)")
	envFlag(f, "url", "CI_SERVER_URL")
	f.StringVarP(&o.Token, "token", "t", "", "token of the entry (with --url)")
	envFlag(f, "token", "CI_SERVER_TOKEN", "RUNNER_TOKEN")
	f.BoolVar(&o.All, "all-runners", false, "unregister every runner of the file")
	return cmd
}

func resetTokenCmd() *cobra.Command {
	o := runcmd.ResetTokenOptions{}
	cmd := &cobra.Command{
		Use:   "reset-token",
		Short: "Replace runners' authentication tokens with new ones from GitLab and save them in config.toml",
		Long: "reset-token asks GitLab for a new authentication token (POST /api/v4/runners/reset_authentication_token,\n" +
			"with the current token) and writes it into the entry in place of the old one, which stops working.\n" +
			"Select the entry with --name, --url and --id, or --all-runners. With --pat (a personal access token)\n" +
			"the reset goes by runner ID, which works when the token has already expired.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			res, err := runcmd.ResetToken(ctx, o)
			for _, r := range res {
				exp := "never"
				if !r.ExpiresAt.IsZero() {
					exp = r.ExpiresAt.UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Runner %q: token reset and saved in %s (expires %s)\n", r.Name, o.ConfigPath, exp)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.ConfigPath, "config", "c", defaultConfigPath(), configUsage)
	f.StringVarP(&o.Name, "name", "n", "", "the runner entry's name")
	f.StringVarP(&o.URL, "url", "u", "", "GitLab URL of the entry (with --id)")
	f.Int64Var(&o.ID, "id", 0, "runner ID of the entry (with --url)")
	f.StringVar(&o.PAT, "pat", "", "personal access token: reset by runner ID (for an expired token)")
	f.BoolVar(&o.All, "all-runners", false, "reset the token of every runner of the file")
	return cmd
}
