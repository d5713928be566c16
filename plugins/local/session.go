package local

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// outputGrace bounds how long a session waits, after its command exited and its process
// group was killed, for output pipes held open by a process that left the group.
const outputGrace = 2 * time.Second

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// sshSignals maps RFC 4254 signal names to signals.
var sshSignals = map[ssh.Signal]syscall.Signal{
	ssh.SIGABRT: syscall.SIGABRT, ssh.SIGALRM: syscall.SIGALRM, ssh.SIGFPE: syscall.SIGFPE,
	ssh.SIGHUP: syscall.SIGHUP, ssh.SIGILL: syscall.SIGILL, ssh.SIGINT: syscall.SIGINT,
	ssh.SIGKILL: syscall.SIGKILL, ssh.SIGPIPE: syscall.SIGPIPE, ssh.SIGQUIT: syscall.SIGQUIT,
	ssh.SIGSEGV: syscall.SIGSEGV, ssh.SIGTERM: syscall.SIGTERM, ssh.SIGUSR1: syscall.SIGUSR1,
	ssh.SIGUSR2: syscall.SIGUSR2,
}

func signalName(sig syscall.Signal) string {
	for name, s := range sshSignals {
		if s == sig {
			return string(name)
		}
	}
	return fmt.Sprintf("SIG%d", int(sig))
}

// process is a command started by a session.
type process struct {
	cmd  *exec.Cmd
	pgid int
	done chan struct{} // closed when the command has been waited for
}

// exited reports whether the command has been waited for; its group is then gone too
// and must not be signalled (the number could be reused).
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends sig to the command's whole process group.
func (p *process) kill(sig syscall.Signal) {
	if p != nil && p.pgid > 0 {
		_ = syscall.Kill(-p.pgid, sig)
	}
}

// session serves one "session" channel: env, exec or shell, signal. When the channel
// closes (client close or lost connection) the command's process group is killed.
func (s *Server) session(nch ssh.NewChannel) {
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	var env []string
	var proc *process
	var mu sync.Mutex // guards proc against the exit goroutine
	for req := range reqs {
		switch req.Type {
		case "env":
			var kv struct{ Name, Value string }
			ok := ssh.Unmarshal(req.Payload, &kv) == nil && envNameRE.MatchString(kv.Name)
			if ok {
				env = append(env, kv.Name+"="+kv.Value)
			}
			_ = req.Reply(ok, nil)
		case "exec", "shell":
			var command string
			if req.Type == "exec" {
				var p struct{ Command string }
				if ssh.Unmarshal(req.Payload, &p) != nil {
					_ = req.Reply(false, nil)
					continue
				}
				command = p.Command
			}
			mu.Lock()
			if proc != nil {
				mu.Unlock()
				_ = req.Reply(false, nil)
				continue
			}
			p, run, err := s.start(ch, command, req.Type == "shell", env)
			if err != nil {
				mu.Unlock()
				s.log.Warn("start command", "command", command, "error", err)
				fmt.Fprintf(ch.Stderr(), "flotilla-local: %v\n", err)
				_ = req.Reply(false, nil)
				continue
			}
			proc = p
			mu.Unlock()
			if testHookBeforeReply != nil {
				testHookBeforeReply(p.pgid)
			}
			// Reply first, then relay the command: a command that ends at once must not
			// close the channel before the client knows its exec succeeded (it would
			// see EOF, and a job runner could run the job again).
			_ = req.Reply(true, nil)
			run()
		case "signal":
			var p struct{ Signal string }
			sig, known := syscall.Signal(0), false
			if ssh.Unmarshal(req.Payload, &p) == nil {
				sig, known = sshSignals[ssh.Signal(p.Signal)]
			}
			mu.Lock()
			if known && proc != nil && !proc.exited() {
				proc.kill(sig)
			}
			mu.Unlock()
			if req.WantReply {
				_ = req.Reply(known, nil)
			}
		default: // pty-req, subsystem, window-change, x11-req…: not offered
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
	// The channel is closed: nothing may outlive it.
	mu.Lock()
	defer mu.Unlock()
	if proc != nil {
		if !proc.exited() {
			proc.kill(syscall.SIGKILL)
		}
		<-proc.done
	}
}

// commandEnv is the clean environment of a sandbox command, plus what the client set.
func (s *Server) commandEnv(extra []string) []string {
	env := []string{
		"PATH=" + s.cfg.Path,
		"HOME=" + s.cfg.WorkDir,
		"USER=" + s.cfg.User,
		"LOGNAME=" + s.cfg.User,
		"SHELL=/bin/sh",
		"TMPDIR=" + s.cfg.TmpDir,
	}
	return append(env, extra...)
}

// testHookBeforeReply, when set by a test, runs after a command started and before
// the reply to its exec or shell request.
var testHookBeforeReply func(pid int)

// start runs command (or an interactive-less shell reading stdin) with the channel as
// its stdio. run relays its stdio and reports its exit on the channel when it ends.
func (s *Server) start(ch ssh.Channel, command string, shell bool, env []string) (p *process, run func(), err error) {
	argv := []string{"/bin/sh", "-c", command}
	if shell {
		argv = []string{"/bin/sh"}
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, nil, fmt.Errorf("create stdin pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, nil, fmt.Errorf("create stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, nil, fmt.Errorf("create stderr pipe: %w", err)
	}
	cmd := s.command(argv)
	cmd.Dir = s.cfg.WorkDir
	cmd.Env = s.commandEnv(env)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	err = cmd.Start()
	// The child has its own copies; the parent keeps only its ends.
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	p = &process{cmd: cmd, pgid: cmd.Process.Pid, done: make(chan struct{})}
	return p, func() { p.relay(ch, inW, outR, errR) }, nil
}

// relay copies the channel to the command's stdin and its stdout and stderr to the
// channel, waits for it, kills what it left in its group and reports its exit.
func (p *process) relay(ch ssh.Channel, inW, outR, errR *os.File) {
	cmd := p.cmd
	go func() {
		_, _ = io.Copy(inW, ch)
		inW.Close()
	}()
	var copies sync.WaitGroup
	copies.Add(2)
	go func() { defer copies.Done(); _, _ = io.Copy(ch, outR) }()
	go func() { defer copies.Done(); _, _ = io.Copy(ch.Stderr(), errR) }()

	go func() {
		defer close(p.done)
		waitErr := cmd.Wait()
		// What the command left running in its group goes with it, so that pipes
		// close and nothing outlives the session.
		p.kill(syscall.SIGKILL)
		inW.Close()
		copied := make(chan struct{})
		go func() { copies.Wait(); close(copied) }()
		select {
		case <-copied:
		case <-time.After(outputGrace):
			outR.Close()
			errR.Close()
			<-copied
		}
		outR.Close()
		errR.Close()
		_ = ch.CloseWrite()
		sendExit(ch, cmd.ProcessState, waitErr)
		_ = ch.Close()
	}()
}

// sendExit reports how the command ended: exit-status, or exit-signal if a signal
// killed it.
func sendExit(ch ssh.Channel, st *os.ProcessState, waitErr error) {
	if st == nil {
		msg := "command could not be waited for"
		if waitErr != nil {
			msg = waitErr.Error()
		}
		_, _ = ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{"KILL", false, msg, ""}))
		return
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		_, _ = ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{signalName(ws.Signal()), ws.CoreDump(), "", ""}))
		return
	}
	code := st.ExitCode()
	if code < 0 {
		code = 255
	}
	_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
}
