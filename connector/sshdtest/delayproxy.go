package sshdtest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// DelayProxy listens on 127.0.0.1 and forwards every connection to target, holding
// each direction's bytes back for rtt/2, so that loopback behaves like a link with that
// round-trip time (bandwidth stays unlimited). Benchmarks use it to measure what SSH
// costs over a WAN without tc/netem. It stops with the test.
func DelayProxy(tb testing.TB, target string, rtt time.Duration) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); delayedCopy(out, in, rtt/2) }()
			go func() { defer wg.Done(); delayedCopy(in, out, rtt/2) }()
		}
	}()
	return ln.Addr().String()
}

type delayedChunk struct {
	data []byte
	due  time.Time
}

// delayedCopy copies src to dst, each chunk written delay after it was read, in order.
// When src ends, dst's write side is closed after the last chunk.
func delayedCopy(dst, src net.Conn, delay time.Duration) {
	chunks := make(chan delayedChunk, 4096)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				chunks <- delayedChunk{buf[:n], time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.data); err != nil {
			src.Close()
			for range chunks { // let the reader finish
			}
			break
		}
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(src, 0))
}
