package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// poolCmd is `runner pool`: Flotilla's own view of a running host. (`runner status`
// is the service's status, as in GitLab Runner.)
var poolCmd = &cobra.Command{
	Use:   "pool",
	Short: "Inspect the pools of a running host",
}

func init() {
	var statusURL, instance string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the taskscalers of a running host: capacity, decisions, and why each instance exists",
		Long: "pool status reads the JSON status endpoint of a running `runner run` and prints, per runner, the\n" +
			"capacity in jobs and instances, the last scaling decision, why fewer instances than wanted\n" +
			"were created (throttle, max_instances, circuit breaker), and every instance. With --instance\n" +
			"it explains one instance: its cause and lifecycle history.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			return runStatus(ctx, cmd.OutOrStdout(), statusURL, instance, asJSON)
		},
	}
	cmd.Flags().StringVar(&statusURL, "url", envOr("FLOTILLA_STATUS_URL", "http://127.0.0.1:9252/status"), "status endpoint of the running host (env FLOTILLA_STATUS_URL)")
	cmd.Flags().StringVar(&instance, "instance", "", "explain this instance ID")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the endpoint's JSON unchanged")
	poolCmd.AddCommand(cmd)
	root.AddCommand(poolCmd)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func runStatus(ctx context.Context, out io.Writer, endpoint, instance string, asJSON bool) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return fmt.Errorf("--url %q: want an http URL such as http://127.0.0.1:9252/status", endpoint)
	}
	if instance != "" {
		q := u.Query()
		q.Set("instance", instance)
		u.RawQuery = q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("status request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("read status from %s (is `runner run` running with its status listener?): %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read status from %s: %w", u, err)
	}
	if resp.StatusCode == http.StatusNotFound && instance != "" {
		fmt.Fprintf(out, "instance %s is not known to any scaler of this host\n", instance)
		return exitError{code: 2}
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("read status from %s: HTTP %s", u, resp.Status)
	}
	if asJSON {
		_, err := out.Write(body)
		return err
	}
	if instance != "" {
		var st taskscaler.InstanceStatus
		if err := json.Unmarshal(body, &st); err != nil {
			return fmt.Errorf("decode instance status from %s: %w", u, err)
		}
		return taskscaler.WriteInstance(out, st)
	}
	var rep taskscaler.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		return fmt.Errorf("decode status from %s: %w", u, err)
	}
	return taskscaler.WriteReport(out, rep)
}
