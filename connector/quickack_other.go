//go:build !linux

package connector

import "net"

// quickAck returns conn as it is: TCP_QUICKACK is Linux's (see quickack_linux.go).
func quickAck(conn net.Conn) net.Conn { return conn }
