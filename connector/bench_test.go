package connector_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
)

// Benchmark sizes. The reference runs B7 with 1 GiB; the defaults keep each benchmark
// within seconds on 2 shared cores. Raise them for a full run.
const (
	// b7Chunk is the bytes moved per benchmark op (b.SetBytes), so MB/s is reported.
	b7Chunk = 256 << 10
	// b7RawSample is the bytes moved over raw TCP to measure the baseline.
	b7RawSample = 64 << 20
	// b7Channels is N for the N-channel throughput case.
	b7Channels = 4
	// b6RawRounds is the number of raw TCP round trips averaged for the B6 baseline.
	b6RawRounds = 2000
)

// benchServers are the SSH servers every B6/B7 case runs against.
var benchServers = []struct {
	name  string
	start func(testing.TB) *sshdtest.Server
}{
	{"openssh", func(tb testing.TB) *sshdtest.Server {
		// A non-root account when there is one: root's shell startup files on a
		// developer machine (e.g. pyenv in /root/.bashrc, which bash reads under sshd)
		// can cost more than SSH itself, and CI instances log in as non-root users.
		u, _ := sshdtest.LoginUser()
		return sshdtest.Start(tb, sshdtest.Options{MaxSessions: 64, User: u})
	}},
	{"x-crypto", func(tb testing.TB) *sshdtest.Server { return sshdtest.StartGo(tb, sshdtest.GoOptions{}) }},
}

// rawRTT measures a 1-byte TCP round trip on loopback: the unit B6 costs are compared to.
func rawRTT(b *testing.B) time.Duration {
	b.Helper()
	addr := echoServer(b, "tcp", "127.0.0.1:0")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := []byte{0}
	start := time.Now()
	for range b6RawRounds {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start) / b6RawRounds
}

// rawConnect measures a loopback TCP connect + close, the baseline for a new SSH
// connection.
func rawConnect(b *testing.B) time.Duration {
	b.Helper()
	addr := echoServer(b, "tcp", "127.0.0.1:0")
	const n = 200
	start := time.Now()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	return time.Since(start) / n
}

// BenchmarkB6SSHSetup measures per-job SSH setup (reference B6): a new connection
// (TCP + key exchange + auth), a session channel on a reused connection, and `exec true`
// through a Pool (a reused connection), with the pool's dials per job. Each reports
// its cost as a multiple of the raw loopback figure measured in the same run.
func BenchmarkB6SSHSetup(b *testing.B) {
	for _, s := range benchServers {
		b.Run(s.name, func(b *testing.B) {
			srv := s.start(b)
			info := srv.ConnectInfo("bench-" + s.name)
			o := opts()
			rtt, connect := rawRTT(b), rawConnect(b)
			ctx := context.Background()

			b.Run("new-connection", func(b *testing.B) {
				for b.Loop() {
					c, err := connector.Dial(ctx, info, o)
					if err != nil {
						b.Fatal(err)
					}
					c.Close()
				}
				perOp := b.Elapsed() / time.Duration(b.N)
				b.ReportMetric(float64(perOp)/float64(connect), "x-raw-connect")
			})
			c, err := connector.Dial(ctx, info, o)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.Run("channel-open-reused", func(b *testing.B) {
				for b.Loop() {
					sess, err := c.SSH().NewSession()
					if err != nil {
						b.Fatal(err)
					}
					sess.Close()
				}
				b.ReportMetric(float64(b.Elapsed()/time.Duration(b.N))/float64(rtt), "x-raw-rtt")
			})
			b.Run("exec-true-pooled", func(b *testing.B) {
				p := connector.NewPool(o)
				defer p.Shutdown()
				for b.Loop() {
					if err := p.Run(ctx, info, connector.RunOptions{Command: "true"}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed()/time.Duration(b.N))/float64(rtt), "x-raw-rtt")
				b.ReportMetric(float64(p.Stats().Dials)/float64(b.N), "dials/job")
			})
		})
	}
}

// sinkServer accepts connections and discards what they send; each connection's total
// is sent on the returned channel when its sender closes.
func sinkServer(b *testing.B) (string, <-chan int64) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	totals := make(chan int64, 64)
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, _ := io.Copy(io.Discard, c)
				c.Close()
				totals <- n
			}()
		}
	}()
	return ln.Addr().String(), totals
}

// pump writes total bytes over the conns in parallel, closes them and waits until the
// sink has received everything.
func pump(b *testing.B, conns []net.Conn, perConn int64, totals <-chan int64) {
	b.Helper()
	buf := make([]byte, 32<<10)
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left := perConn; left > 0; {
				n := min(left, int64(len(buf)))
				if _, err := c.Write(buf[:n]); err != nil {
					b.Error(err)
					return
				}
				left -= n
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	for range conns {
		if got := <-totals; got != perConn {
			b.Fatalf("sink received %d bytes, want %d", got, perConn)
		}
	}
}

var rawMiBps struct {
	once sync.Once
	v    float64
}

// rawThroughput is loopback TCP throughput in MiB/s, measured once per process.
func rawThroughput(b *testing.B) float64 {
	rawMiBps.once.Do(func() {
		addr, totals := sinkServer(b)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		pump(b, []net.Conn{c}, b7RawSample, totals)
		rawMiBps.v = float64(b7RawSample) / (1 << 20) / time.Since(start).Seconds()
	})
	return rawMiBps.v
}

// BenchmarkB7TunnelThroughput measures bulk data through the SSH tunnel (reference B7)
// over one channel and over b7Channels channels, against raw loopback TCP measured in
// the same run. MB/s comes from b.SetBytes; "share-of-raw" is tunnel / raw.
func BenchmarkB7TunnelThroughput(b *testing.B) {
	b.Run("raw-tcp", func(b *testing.B) {
		addr, totals := sinkServer(b)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(b7Chunk)
		b.ResetTimer()
		pump(b, []net.Conn{c}, int64(b.N)*b7Chunk, totals)
		b.ReportMetric(rawThroughput(b), "raw-MiB/s")
	})
	for _, s := range benchServers {
		for _, channels := range []int{1, b7Channels} {
			name := s.name + "/1-channel"
			if channels > 1 {
				name = s.name + "/" + strconv.Itoa(channels) + "-channels"
			}
			b.Run(name, func(b *testing.B) {
				raw := rawThroughput(b)
				srv := s.start(b)
				addr, totals := sinkServer(b)
				c, err := connector.Dial(context.Background(), srv.ConnectInfo("bench-"+s.name), opts())
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				conns := make([]net.Conn, channels)
				for i := range conns {
					if conns[i], err = c.Dial(context.Background(), "tcp", addr); err != nil {
						b.Fatal(err)
					}
				}
				b.SetBytes(b7Chunk)
				b.ResetTimer()
				pump(b, conns, int64(b.N)*b7Chunk/int64(channels), totals)
				b.StopTimer()
				mibps := float64(b.N) * b7Chunk / (1 << 20) / b.Elapsed().Seconds()
				b.ReportMetric(mibps/raw, "share-of-raw")
			})
		}
	}
}
