package pluginclient_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// B5, against gRPC itself: the plugin protocol runs on gRPC over a unix socket, so the
// floor a plugin call can reach is one plain gRPC unary call to another process. The
// reference's goal is a trivial Update within 1.5 × that call.

// grpcHealthSocketEnv makes the test binary, re-executed, serve the standard gRPC health
// service on a unix socket: the far end of the raw gRPC baseline, in another process as
// a plugin is.
const grpcHealthSocketEnv = "PLUGINCLIENT_TEST_GRPC_HEALTH_SOCKET"

// serveGRPCHealth serves grpc_health_v1 on sock until its stdin closes, so that it ends
// with the benchmark even when the benchmark process is killed.
func serveGRPCHealth(sock string) int {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer()) // answers SERVING for ""
	go func() {
		io.Copy(io.Discard, os.Stdin)
		srv.Stop()
	}()
	fmt.Println("ready") // tell the parent it may dial
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startGRPCHealth starts the health server in a child process and returns a client
// connected to it, the connection already established.
func startGRPCHealth(b *testing.B) healthpb.HealthClient {
	b.Helper()
	sock := filepath.Join(b.TempDir(), "health.sock")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), grpcHealthSocketEnv+"="+sock)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start the gRPC health peer: %v", err)
	}
	b.Cleanup(func() {
		stdin.Close() // the peer stops serving and exits
		cmd.Wait()
	})
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		b.Fatalf("gRPC health peer: %q, %v", line, err)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatalf("gRPC client for %s: %v", sock, err)
	}
	b.Cleanup(func() { conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	// The first call connects; the timed ones then run on the established connection,
	// as plugin calls do after Launch.
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		b.Fatalf("gRPC health check over %s: %v", sock, err)
	}
	return hc
}

// grpcBlock is how many Updates, then raw gRPC calls, are timed back to back before
// switching to the other: both see the same machine load as it changes during the
// run, and all but the first call of a block find their peer awake, as calls back to
// back do. (Alternating every call would time mostly the wake-up of an idle peer.)
const grpcBlock = 10

// timeGRPC times n grpc_health_v1 Check calls, back to back, appending to lat.
func timeGRPC(b *testing.B, hc healthpb.HealthClient, n int, lat []time.Duration) []time.Duration {
	b.Helper()
	ctx := context.Background()
	for range n {
		start := time.Now()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			b.Fatalf("health check answered %v, want SERVING", resp.GetStatus())
		}
	}
	return lat
}

// BenchmarkB5UpdateVsRawGRPC times a trivial Update round trip to the test plugin (as
// BenchmarkB5UpdateRoundTrip/trivial does) and, in alternating blocks of grpcBlock, as
// many raw gRPC unary calls (grpc_health_v1 Check) over a unix socket to another child
// process. ns/op counts the Updates only; "p50/grpc" is the Update's p50 over the raw
// call's p50.
func BenchmarkB5UpdateVsRawGRPC(b *testing.B) {
	p := launchForBench(b, 0)
	defer p.Kill()
	hc := startGRPCHealth(b)
	ctx := context.Background()
	var lat, raw []time.Duration
	for b.Loop() {
		start := time.Now()
		if err := p.Update(ctx, func(string, provider.State) {}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if len(lat)%grpcBlock == 0 {
			b.StopTimer()
			raw = timeGRPC(b, hc, grpcBlock, raw)
			b.StartTimer()
		}
	}
	b.StopTimer()
	raw = timeGRPC(b, hc, len(lat)-len(raw), raw) // the last, partial block
	p50, p99 := percentiles(lat)
	rawP50, rawP99 := percentiles(raw)
	b.ReportMetric(p50, "p50-µs")
	b.ReportMetric(p99, "p99-µs")
	b.ReportMetric(rawP50, "grpc-p50-µs")
	b.ReportMetric(rawP99, "grpc-p99-µs")
	b.ReportMetric(p50/rawP50, "p50/grpc")
}
