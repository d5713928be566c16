package dockerbench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
)

// dockerSocket is the Docker Engine's socket, both locally and, through the tunnel, on
// the "instance" (sshd runs on this machine).
const dockerSocket = "/var/run/docker.sock"

// block is how many calls through the tunnel, then on the local socket, are timed back
// to back before switching to the other: both see the same machine load as it changes
// during the run.
const block = 10

type dialFunc func(ctx context.Context) (net.Conn, error)

// apiClient returns an HTTP client whose connections come from dial; with keepAlive
// false every call opens a new connection, as the Docker client does for each attach
// or exec stream.
func apiClient(dial dialFunc, keepAlive bool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		DisableKeepAlives: !keepAlive,
		MaxIdleConns:      1,
	}}
}

// call makes one Docker API request and reads the whole answer, so that a kept
// connection can serve the next one.
func call(ctx context.Context, c *http.Client, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("GET %s: read the answer: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %.200s", path, resp.Status, body)
	}
	return nil
}

// timed makes n calls and appends each one's latency to out.
func timed(b *testing.B, c *http.Client, path string, n int, out []time.Duration) []time.Duration {
	b.Helper()
	ctx := context.Background()
	for range n {
		start := time.Now()
		if err := call(ctx, c, path); err != nil {
			b.Fatal(err)
		}
		out = append(out, time.Since(start))
	}
	return out
}

// percentiles returns the p50 and p99 of d in microseconds.
func percentiles(d []time.Duration) (p50, p99 float64) {
	slices.Sort(d)
	at := func(q float64) float64 {
		return float64(d[min(len(d)-1, int(q*float64(len(d))))]) / float64(time.Microsecond)
	}
	return at(0.50), at(0.99)
}

// BenchmarkB8DockerAPILatency times a cheap Docker API call (GET /_ping, and GET
// /version, which the daemon answers with more work) through the SSH tunnel, as the
// docker-autoscaler executor makes it, and, in alternating blocks, the same call on the
// local socket with the same kind of connection. "kept-connection" reuses one
// connection (one forwarded channel) for every call, as the Docker client does for API
// requests; "new-connection" opens one per call (a channel open through the tunnel), as
// it does for each attach or exec stream. ns/op counts the tunnel's calls only;
// "tunnel/local" is the tunnel's p50 over the local socket's p50.
func BenchmarkB8DockerAPILatency(b *testing.B) {
	ctx := context.Background()
	local := func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", dockerSocket)
	}
	if err := call(ctx, apiClient(local, false), "/_ping"); err != nil {
		b.Skipf("no Docker Engine reachable at %s (scripts/test-services.sh starts one as root): %v", dockerSocket, err)
	}
	// Logged in as the current user (root here): the socket is root:docker 0660, and
	// sshd opens a forwarded socket with the rights of the account logged in.
	srv := sshdtest.Start(b, sshdtest.Options{})
	c, err := connector.Dial(ctx, srv.ConnectInfo("b8"), connector.DialOptions{
		HostKeys: connector.NewMemoryHostKeyStore(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatalf("dial sshd on %s: %v", srv.Addr, err)
	}
	defer c.Close()
	tunnel := func(ctx context.Context) (net.Conn, error) {
		// No fallback command: a refused forward must fail the benchmark, not measure
		// `docker system dial-stdio` instead.
		return c.DialUnix(ctx, dockerSocket, "")
	}

	for _, path := range []string{"/_ping", "/version"} {
		for _, keepAlive := range []bool{true, false} {
			name := path[1:] + "/kept-connection"
			if !keepAlive {
				name = path[1:] + "/new-connection"
			}
			b.Run(name, func(b *testing.B) {
				tc, lc := apiClient(tunnel, keepAlive), apiClient(local, keepAlive)
				defer tc.CloseIdleConnections()
				defer lc.CloseIdleConnections()
				// Connect (kept-connection) and warm the daemon's handler before timing.
				for _, c := range []*http.Client{tc, lc} {
					if err := call(ctx, c, path); err != nil {
						b.Fatal(err)
					}
				}
				var lat, raw []time.Duration
				for b.Loop() {
					start := time.Now()
					if err := call(ctx, tc, path); err != nil {
						b.Fatalf("through the tunnel: %v", err)
					}
					lat = append(lat, time.Since(start))
					if len(lat)%block == 0 {
						b.StopTimer()
						raw = timed(b, lc, path, block, raw)
						b.StartTimer()
					}
				}
				b.StopTimer()
				raw = timed(b, lc, path, len(lat)-len(raw), raw) // the last, partial block
				p50, p99 := percentiles(lat)
				rawP50, rawP99 := percentiles(raw)
				b.ReportMetric(p50, "tunnel-p50-µs")
				b.ReportMetric(p99, "tunnel-p99-µs")
				b.ReportMetric(rawP50, "local-p50-µs")
				b.ReportMetric(rawP99, "local-p99-µs")
				b.ReportMetric(p50/rawP50, "tunnel/local")
			})
		}
	}
}
