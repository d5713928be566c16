package local

import (
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Benchmarks B6 and B7 of the reference (benchmarks.md) against the local plugin's SSH
// server on loopback, each reported as a ratio to the raw TCP figure measured in the
// same run, so that the numbers compare across machines.

func startBenchSandbox(b *testing.B) (*Sandbox, *ssh.ClientConfig) {
	b.Helper()
	sb, err := StartSandbox(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { sb.Close() })
	signer, err := ssh.ParsePrivateKey(sb.Info.Key)
	if err != nil {
		b.Fatal(err)
	}
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey(sb.Info.HostKey)
	if err != nil {
		b.Fatal(err)
	}
	return sb, &ssh.ClientConfig{User: sb.Info.Username, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey), Timeout: 10 * time.Second}
}

// rawConnectNanos measures a plain TCP connect+close on loopback (median of n).
func rawConnectNanos(b *testing.B, n int) float64 {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	d := make([]time.Duration, n)
	for i := range d {
		t0 := time.Now()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		d[i] = time.Since(t0)
		c.Close()
	}
	return float64(percentile(d, 50))
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

// reportLatency reports p50 and p99 of the per-operation durations and the p50 as a
// multiple of the raw TCP connect.
func reportLatency(b *testing.B, d []time.Duration, raw float64) {
	p50 := percentile(d, 50)
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(d, 99).Microseconds()), "p99-µs")
	b.ReportMetric(float64(p50)/raw, "x-raw-tcp-connect")
}

// BenchmarkB6SSHSetup is B6: the cost of a new connection (TCP, key exchange, auth),
// of a channel opened on a reused connection, and of `exec true` on a reused one.
func BenchmarkB6SSHSetup(b *testing.B) {
	sb, cfg := startBenchSandbox(b)
	raw := rawConnectNanos(b, 200)
	b.Run("new-connection", func(b *testing.B) {
		d := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			c, err := ssh.Dial("tcp", sb.Addr, cfg)
			if err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
			c.Close()
		}
		reportLatency(b, d, raw)
		b.ReportMetric(1, "conns/op")
	})
	c, err := ssh.Dial("tcp", sb.Addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.Run("channel-open-reused", func(b *testing.B) {
		d := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			s, err := c.NewSession()
			if err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
			s.Close()
		}
		reportLatency(b, d, raw)
		b.ReportMetric(0, "conns/op")
	})
	b.Run("exec-true-reused", func(b *testing.B) {
		d := make([]time.Duration, 0, b.N)
		for b.Loop() {
			t0 := time.Now()
			s, err := c.NewSession()
			if err != nil {
				b.Fatal(err)
			}
			if err := s.Run("true"); err != nil {
				b.Fatal(err)
			}
			d = append(d, time.Since(t0))
			s.Close()
		}
		reportLatency(b, d, raw)
		b.ReportMetric(0, "conns/op")
	})
}

// zeroSource serves an endless stream of zeros to every connection on ln.
func zeroSource(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		buf := make([]byte, 256<<10)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln
}

// b7Chunk is what each stream reads per operation.
const b7Chunk = 256 << 10

// readChunks reads b7Chunk per operation from each of conns in parallel and returns
// the throughput in MiB/s.
func readChunks(b *testing.B, conns []net.Conn) float64 {
	b.Helper()
	b.SetBytes(int64(b7Chunk * len(conns)))
	bufs := make([][]byte, len(conns))
	for i := range bufs {
		bufs[i] = make([]byte, b7Chunk)
	}
	b.ResetTimer()
	t0 := time.Now()
	for range b.N {
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := io.ReadFull(c, bufs[i]); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	el := time.Since(t0)
	b.StopTimer()
	return float64(b.N*b7Chunk*len(conns)) / (1 << 20) / el.Seconds()
}

// BenchmarkB7TunnelThroughput is B7: bytes through direct-tcpip channels of one
// connection (1 and 4 channels), against raw TCP from the same source in the same run.
func BenchmarkB7TunnelThroughput(b *testing.B) {
	sb, cfg := startBenchSandbox(b)
	src := zeroSource(b)
	for _, channels := range []int{1, 4} {
		name := "1-channel"
		if channels > 1 {
			name = "4-channels"
		}
		b.Run(name, func(b *testing.B) {
			rawConns := make([]net.Conn, channels)
			for i := range rawConns {
				c, err := net.Dial("tcp", src.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				rawConns[i] = c
			}
			// The raw figure: as many operations as the tunnel gets, straight over TCP.
			rawMiBs := readChunks(b, rawConns)

			client, err := ssh.Dial("tcp", sb.Addr, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer client.Close()
			tunnel := make([]net.Conn, channels)
			for i := range tunnel {
				c, err := client.Dial("tcp", src.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				tunnel[i] = c
			}
			mibs := readChunks(b, tunnel)
			b.ReportMetric(mibs, "MiB/s")
			b.ReportMetric(rawMiBs, "raw-MiB/s")
			b.ReportMetric(mibs/rawMiBs, "share-of-raw")
		})
	}
}
