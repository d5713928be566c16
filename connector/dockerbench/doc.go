// Package dockerbench holds the B8 benchmark (docs: README, Performance): the latency
// of a Docker Engine API call made through the SSH tunnel (connector.Client.DialUnix to
// the daemon's socket, forwarded by a real OpenSSH sshd, as the docker-autoscaler
// executor reaches an instance's daemon) against the same call on the local socket,
// measured in the same run. It needs a local Docker Engine and skips without one.
package dockerbench
