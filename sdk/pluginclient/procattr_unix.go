//go:build unix

package pluginclient

import (
	"os/exec"
	"syscall"
)

// ownProcessGroup starts the plugin in a process group of its own. Signals sent to the
// host's group (Ctrl-C in a terminal, `kill -TERM -PGID`, timeout(1)) then reach only
// the host, which handles them and stops its plugin over the protocol: a plugin that
// got them too would exit first and leave the host unable to delete its instances.
func ownProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}
