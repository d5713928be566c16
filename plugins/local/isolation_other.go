//go:build !linux

package local

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
)

// command builds the exec.Cmd for argv; without Linux namespaces every isolation
// setting runs it as an ordinary child leading its own process group.
func (s *Server) command(argv []string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

func probeNamespaces(context.Context, []string) error {
	return errors.New("namespaces isolation needs Linux")
}

func runNSInit([]string) error { return errors.New("ns-init needs Linux") }
