//go:build linux

package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// nsCloneFlags are the namespaces a command gets under IsolationNamespaces.
const nsCloneFlags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC

// command builds the exec.Cmd for argv under the server's isolation. Every command
// leads its own process group, so that it can be signalled and killed as a whole, and
// is killed if the server dies (Pdeathsig; with namespaces that is their init, so all
// of them go): a killed server must not leave commands running for good. What they
// started in the background the plugin ends at its next Update or Decrease. Pdeathsig
// follows the thread that forked the command; Go retires a thread only when a goroutine
// locked to it exits, which this server never does.
func (s *Server) command(argv []string) *exec.Cmd {
	attr := &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if s.cfg.Isolation == IsolationNamespaces {
		args := append(append([]string{}, s.cfg.SelfCommand[1:]...), nsInitCommand, s.cfg.Hostname, "--")
		args = append(args, argv...)
		cmd := exec.Command(s.cfg.SelfCommand[0], args...)
		attr.Cloneflags = nsCloneFlags
		cmd.SysProcAttr = attr
		return cmd
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = attr
	return cmd
}

// probeNamespaces checks that this process may create the namespaces of
// IsolationNamespaces, by starting self's ns-init with /bin/true in them.
func probeNamespaces(ctx context.Context, self []string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	args := append(append([]string{}, self[1:]...), nsInitCommand, "probe", "--", "/bin/true")
	cmd := exec.CommandContext(ctx, self[0], args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: nsCloneFlags}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if len(out) > 0 {
			return fmt.Errorf("create mount/pid/uts/ipc namespaces: %w: %s", err, out)
		}
		return fmt.Errorf("create mount/pid/uts/ipc namespaces: %w", err)
	}
	return nil
}

// runNSInit is PID 1 of a command's namespaces: it gives the namespace its own /proc
// and host name, runs the command as its child, reaps orphans (which the kernel hands
// to PID 1) and exits with the command's status (128+n if signal n killed it).
// Signals sent to the process group reach the command directly; PID 1 must not die of
// them first, so it catches and drops them.
func runNSInit(args []string) error {
	if len(args) < 3 || args[1] != "--" {
		return errors.New("usage: ns-init HOSTNAME -- COMMAND [ARG...]")
	}
	hostname, argv := args[0], args[2:]
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if hostname != "" {
		if err := syscall.Sethostname([]byte(hostname)); err != nil {
			return fmt.Errorf("set host name: %w", err)
		}
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGALRM, syscall.SIGPIPE)
	go func() {
		for range sigs {
		}
	}()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", argv[0], err)
	}
	child := cmd.Process.Pid
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for %s: %w", argv[0], err)
		}
		if pid != child {
			continue // an orphan reparented to us
		}
		if ws.Signaled() {
			os.Exit(128 + int(ws.Signal()))
		}
		os.Exit(ws.ExitStatus())
	}
}
