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
	"slices"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// B5 (reference/benchmarks.md): the plugin protocol's overhead. A call round trip over a
// real subprocess for a trivial Update and for an Update listing 1k instances, and the
// launch time (start + handshake + dispense), each reported next to a raw unix-socket
// ping-pong to another process measured in the same run: the floor any IPC pays here.

// percentiles returns the p50 and p99 of d in microseconds.
func percentiles(d []time.Duration) (p50, p99 float64) {
	slices.Sort(d)
	at := func(q float64) float64 {
		return float64(d[min(len(d)-1, int(q*float64(len(d))))]) / float64(time.Microsecond)
	}
	return at(0.50), at(0.99)
}

// echoSocketEnv makes the test binary, re-executed, echo bytes on a unix socket: the
// far end of the raw ping-pong, in another process as a plugin is.
const echoSocketEnv = "PLUGINCLIENT_TEST_ECHO_SOCKET"

func serveEcho(sock string) int {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready") // tell the parent it may dial
	c, err := ln.Accept()
	if err != nil {
		return 1
	}
	buf := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0
		}
		if _, err := c.Write(buf); err != nil {
			return 0
		}
	}
}

// rawPingPong measures n one-byte round trips over a unix socket to a child process.
func rawPingPong(b *testing.B, n int) []time.Duration {
	b.Helper()
	sock := filepath.Join(b.TempDir(), "pingpong.sock")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), echoSocketEnv+"="+sock)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		b.Fatalf("echo peer: %q, %v", line, err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := []byte{1}
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		out = append(out, time.Since(start))
	}
	return out
}

func launchForBench(b *testing.B, synthetic int) *pluginclient.Plugin {
	b.Helper()
	if testPluginBinary == "" {
		b.Skip("the test plugin needs the go command to build it")
	}
	config := fmt.Sprintf(`{"dir": %q, "synthetic": %d}`, filepath.Join(b.TempDir(), "instances"), synthetic)
	ctx := context.Background()
	p, err := pluginclient.Launch(ctx, testPluginBinary, []byte(config), pluginclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
		p.Kill()
		b.Fatal(err)
	}
	return p
}

// reportAgainstRaw reports the measured latencies and the raw ping-pong beside them.
func reportAgainstRaw(b *testing.B, lat []time.Duration, unit string) {
	raw := rawPingPong(b, 2000)
	p50, p99 := percentiles(lat)
	rawP50, rawP99 := percentiles(raw)
	div := 1.0
	if unit == "ms" {
		div = 1000
	}
	b.ReportMetric(p50/div, "p50-"+unit)
	b.ReportMetric(p99/div, "p99-"+unit)
	b.ReportMetric(rawP50, "raw-p50-µs")
	b.ReportMetric(rawP99, "raw-p99-µs")
	b.ReportMetric(p50/rawP50, "p50/raw")
}

func BenchmarkB5UpdateRoundTrip(b *testing.B) {
	for _, tt := range []struct {
		name      string
		instances int
	}{{"trivial", 0}, {"1k-instances", 1000}} {
		b.Run(tt.name, func(b *testing.B) {
			p := launchForBench(b, tt.instances)
			defer p.Kill()
			ctx := context.Background()
			var lat []time.Duration
			for b.Loop() {
				n := 0
				start := time.Now()
				if err := p.Update(ctx, func(string, provider.State) { n++ }); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				if n != tt.instances {
					b.Fatalf("Update listed %d instances, want %d", n, tt.instances)
				}
			}
			var total time.Duration
			for _, d := range lat {
				total += d
			}
			b.ReportMetric(float64(len(lat))/total.Seconds(), "calls/s")
			reportAgainstRaw(b, lat, "µs")
		})
	}
}

func BenchmarkB5Launch(b *testing.B) {
	if testPluginBinary == "" {
		b.Skip("the test plugin needs the go command to build it")
	}
	ctx := context.Background()
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		p, err := pluginclient.Launch(ctx, testPluginBinary, []byte(`{}`), pluginclient.Options{})
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		p.Kill()
		b.StartTimer()
	}
	reportAgainstRaw(b, lat, "ms")
}
