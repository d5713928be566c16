// Package connector reaches a CI instance from the provider.ConnectInfo a plugin reports:
// it dials SSH (waiting, with backoff, for an instance whose sshd is not up yet), verifies
// the host key (the one the plugin reported, else trust on first use pinned per instance
// ID), authenticates with a private key or a password, and then runs commands and opens
// TCP or unix-socket connections on the instance over that one connection.
//
// A Pool keeps one SSH connection per instance and shares it between all the jobs on the
// instance: each command or forwarded connection is a channel on it, which costs one
// round trip instead of a new TCP connection, key exchange and authentication.
//
// WinRM is not supported yet; asking for it gives ErrWinRMNotSupported.
package connector
