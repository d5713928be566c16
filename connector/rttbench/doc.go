// Package rttbench holds the B6/B7 benchmarks (docs: README, Performance) run
// over emulated round-trip times (20 and 80 ms, through sshdtest.DelayProxy) against a
// real OpenSSH sshd. Each iteration takes a fixed number of samples, so `make bench`
// runs this package once (-benchtime 1x); the figures are reported in units of the RTT
// and as a share of the SSH window bound, which is what matters over a WAN.
package rttbench
