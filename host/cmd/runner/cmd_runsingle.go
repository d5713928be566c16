package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/runcmd"
)

// singleOptions are the flags of `runner run-single`.
type singleOptions struct {
	url, token, name, executor, shell, image, plugin, caFile, buildsDir string
	env                                                                 []string
	capacity, maxInstances, maxBuilds, waitTimeout                      int
}

// `runner run-single`: one runner from flags and environment, without a config file,
// one job at a time, as GitLab Runner's run-single; --max-builds and --wait-timeout
// end it.
func init() {
	var o singleOptions
	cmd := &cobra.Command{
		Use:   "run-single",
		Short: "Serve one runner given by flags, without config.toml, one job at a time",
		Long: "run-single serves one runner described by flags (or their environment variables) instead of a\n" +
			"config file, one job at a time, on a pool of --max-instances instances of --plugin that is\n" +
			"deleted when it ends. --max-builds N exits after N jobs; --wait-timeout S exits when no job came\n" +
			"for S seconds since the start or the end of the last job. Signals are those of `runner run`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSingle(cmd, o)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.url, "url", "u", "", "GitLab instance URL")
	envFlag(f, "url", "CI_SERVER_URL")
	f.StringVarP(&o.token, "token", "t", "", "runner authentication token")
	envFlag(f, "token", "CI_SERVER_TOKEN", "RUNNER_TOKEN")
	f.StringVar(&o.name, "name", "run-single", "runner name")
	envFlag(f, "name", "RUNNER_NAME")
	f.StringVar(&o.executor, "executor", config.ExecutorInstance, "instance or docker-autoscaler")
	envFlag(f, "executor", "RUNNER_EXECUTOR")
	f.StringVar(&o.shell, "shell", "bash", "shell of the job scripts")
	envFlag(f, "shell", "RUNNER_SHELL")
	f.StringVar(&o.buildsDir, "builds-dir", "", "where projects are checked out on the instance")
	envFlag(f, "builds-dir", "RUNNER_BUILDS_DIR")
	f.StringArrayVar(&o.env, "env", nil, "KEY=VALUE added to every job (repeatable)")
	envFlag(f, "env", "RUNNER_ENV")
	f.StringVar(&o.image, "docker-image", "busybox:latest", "default job image (docker-autoscaler)")
	envFlag(f, "docker-image", "DOCKER_IMAGE")
	f.StringVar(&o.caFile, "tls-ca-file", "", "PEM file of CAs to trust for GitLab")
	envFlag(f, "tls-ca-file", "CI_SERVER_TLS_CA_FILE")
	f.StringVar(&o.plugin, "plugin", "local", "fleeting plugin of the pool (Flotilla)")
	f.IntVar(&o.capacity, "capacity-per-instance", 1, "jobs per instance (Flotilla)")
	f.IntVar(&o.maxInstances, "max-instances", 1, "instances at most (Flotilla)")
	f.IntVar(&o.maxBuilds, "max-builds", 0, "exit after this many jobs (0: never)")
	f.IntVar(&o.waitTimeout, "wait-timeout", 0, "exit when no job came for this many seconds (0: never)")
	root.AddCommand(cmd)
}

func runSingle(cmd *cobra.Command, o singleOptions) error {
	switch {
	case o.url == "":
		return usageError{cmd, fmt.Errorf("run-single: --url is required (or CI_SERVER_URL)")}
	case o.token == "":
		return usageError{cmd, fmt.Errorf("run-single: --token is required (or CI_SERVER_TOKEN)")}
	case o.maxBuilds < 0 || o.waitTimeout < 0:
		return usageError{cmd, fmt.Errorf("run-single: --max-builds and --wait-timeout cannot be negative")}
	}
	dir, err := os.MkdirTemp("", "runner-single-")
	if err != nil {
		return fmt.Errorf("run-single: %w", err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(singleConfig(o, dir)), 0o600); err != nil {
		return fmt.Errorf("run-single: %w", err)
	}
	log := slog.Default() // set up by the global --debug, --log-level and --log-format
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return fmt.Errorf("run-single: --tls-ca-file: %w", err)
		}
		pool, _ := x509.SystemCertPool()
		if pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("run-single: --tls-ca-file %s: no PEM certificates found", o.caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	obs := &jobWatch{base: tr, maxBuilds: o.maxBuilds, wait: time.Duration(o.waitTimeout) * time.Second, log: log}
	svc, err := runcmd.New(runcmd.Options{ConfigPath: path, Logger: log, ReloadPoll: -1, HTTP: &http.Client{Transport: obs},
		StateDir: filepath.Join(dir, "state")})
	if err != nil {
		return err
	}
	obs.drain = svc.Drain
	obs.idle()
	defer obs.stop()
	return runcmd.RunWithSignals(cmd.Context(), svc)
}

// singleConfig is the config.toml of run-single: one runner, one job at a time, its
// instances deleted at the end.
func singleConfig(o singleOptions, dir string) string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var b strings.Builder
	fmt.Fprintf(&b, "concurrent = 1\n\n[[runners]]\n  name = %s\n  url = %s\n  token = %s\n  executor = %s\n  shell = %s\n  limit = 1\n",
		q(o.name), q(o.url), q(o.token), q(o.executor), q(o.shell))
	if o.buildsDir != "" {
		fmt.Fprintf(&b, "  builds_dir = %s\n", q(o.buildsDir))
	}
	if len(o.env) > 0 {
		parts := make([]string, len(o.env))
		for i, e := range o.env {
			parts[i] = q(e)
		}
		fmt.Fprintf(&b, "  environment = [%s]\n", strings.Join(parts, ", "))
	}
	if o.executor == config.ExecutorDockerAutoscaler {
		fmt.Fprintf(&b, "  [runners.docker]\n    image = %s\n", q(o.image))
	}
	fmt.Fprintf(&b, "  [runners.autoscaler]\n    plugin = %s\n    capacity_per_instance = %d\n    max_instances = %d\n    delete_instances_on_shutdown = true\n",
		q(o.plugin), max(o.capacity, 1), max(o.maxInstances, 1))
	if o.plugin == "local" {
		fmt.Fprintf(&b, "    [runners.autoscaler.plugin_config]\n      root_dir = %s\n", q(filepath.Join(dir, "instances")))
	}
	b.WriteString("    [[runners.autoscaler.policy]]\n      idle_count = 0\n      idle_time = \"0s\"\n")
	return b.String()
}

// jobWatch watches the job requests to GitLab for run-single's limits: with one job
// at a time, a 201 answer starts a job and the next request means it ended.
type jobWatch struct {
	base      http.RoundTripper
	maxBuilds int
	wait      time.Duration
	log       *slog.Logger
	drain     func()

	mu      sync.Mutex
	jobs    int
	running bool
	timer   *time.Timer
}

// RoundTrip passes the request on and counts the jobs GitLab hands out.
func (w *jobWatch) RoundTrip(req *http.Request) (*http.Response, error) {
	isJobRequest := req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/api/v4/jobs/request")
	if isJobRequest {
		w.mu.Lock()
		wasRunning := w.running
		w.running = false
		w.mu.Unlock()
		if wasRunning {
			w.idle()
		}
	}
	resp, err := w.base.RoundTrip(req)
	if err == nil && isJobRequest && resp.StatusCode == http.StatusCreated {
		w.mu.Lock()
		w.jobs++
		w.running = true
		if w.timer != nil {
			w.timer.Stop()
		}
		done := w.maxBuilds > 0 && w.jobs >= w.maxBuilds
		w.mu.Unlock()
		if done {
			w.log.Info("run-single: --max-builds reached: finishing this job, then exiting", "max_builds", w.maxBuilds)
			w.drain()
		}
	}
	return resp, err
}

// idle starts the wait timeout: no job for that long drains the service.
func (w *jobWatch) idle() {
	if w.wait <= 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
	w.timer = time.AfterFunc(w.wait, func() {
		w.log.Info("run-single: no job within --wait-timeout: exiting", "wait_timeout", w.wait)
		w.drain()
	})
}

func (w *jobWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
}
