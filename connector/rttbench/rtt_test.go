package rttbench

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
)

// sshWindow is the channel window of OpenSSH and x/crypto/ssh: one channel moves at most
// this much per round trip.
const sshWindow = 2 << 20

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func sample(b *testing.B, n int, op func()) time.Duration {
	ds := make([]time.Duration, n)
	for i := range ds {
		start := time.Now()
		op()
		ds[i] = time.Since(start)
	}
	return median(ds)
}

// sink accepts connections and counts what they send.
func sink(b *testing.B) (string, chan int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	got := make(chan int64, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { n, _ := io.Copy(io.Discard, c); c.Close(); got <- n }()
		}
	}()
	return ln.Addr().String(), got
}

func BenchmarkB6B7OverRTT(b *testing.B) {
	if ok, why := sshdtest.Available(); !ok {
		b.Skip(why)
	}
	u, _ := sshdtest.LoginUser()
	srv := sshdtest.Start(b, sshdtest.Options{MaxSessions: 64, User: u})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, rtt := range []time.Duration{20 * time.Millisecond, 80 * time.Millisecond} {
		b.Run("rtt="+rtt.String(), func(b *testing.B) {
			info := srv.ConnectInfo("rtt")
			info.InternalAddr = sshdtest.DelayProxy(b, srv.Addr, rtt)
			opts := connector.DialOptions{HostKeys: connector.NewMemoryHostKeyStore(), Logger: quiet}
			ctx := context.Background()
			for range b.N {
				newConn := sample(b, 5, func() {
					c, err := connector.Dial(ctx, info, opts)
					if err != nil {
						b.Fatal(err)
					}
					c.Close()
				})
				c, err := connector.Dial(ctx, info, opts)
				if err != nil {
					b.Fatal(err)
				}
				channel := sample(b, 10, func() {
					s, err := c.SSH().NewSession()
					if err != nil {
						b.Fatal(err)
					}
					s.Close()
				})
				execTrue := sample(b, 10, func() {
					if err := c.Run(ctx, connector.RunOptions{Command: "true"}); err != nil {
						b.Fatal(err)
					}
				})
				b.ReportMetric(float64(newConn)/float64(rtt), "new-conn-rtts")
				b.ReportMetric(float64(channel)/float64(rtt), "channel-open-rtts")
				b.ReportMetric(float64(execTrue)/float64(rtt), "exec-true-rtts")
				for _, channels := range []int{1, 4} {
					share := throughput(b, c, channels, rtt)
					b.ReportMetric(share, "share-of-window-bound-"+map[int]string{1: "1ch", 4: "4ch"}[channels])
				}
				c.Close()
			}
		})
	}
}

// throughput sends data through channels tunnels to a local sink and returns the rate
// as a share of the window bound channels × 2 MiB / RTT.
func throughput(b *testing.B, c *connector.Client, channels int, rtt time.Duration) float64 {
	addr, got := sink(b)
	const perChannel = 8 << 20
	conns := make([]net.Conn, channels)
	for i := range conns {
		var err error
		if conns[i], err = c.Dial(context.Background(), "tcp", addr); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, 32<<10)
	start := time.Now()
	var wg sync.WaitGroup
	for _, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left := perChannel; left > 0; left -= len(buf) {
				if _, err := conn.Write(buf); err != nil {
					b.Error(err)
					return
				}
			}
			conn.Close()
		}()
	}
	wg.Wait()
	for range conns {
		if n := <-got; n != perChannel {
			b.Fatalf("sink got %d bytes, want %d", n, perChannel)
		}
	}
	rate := float64(channels*perChannel) / time.Since(start).Seconds()
	bound := float64(channels) * sshWindow / rtt.Seconds()
	return rate / bound
}
