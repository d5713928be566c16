package connector

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Stage names the step of reaching an instance that failed, so that an error tells the
// operator where to look: the network (tcp), the SSH server (handshake), the host key,
// the credentials (auth), or what the server allows on an established connection
// (channel).
type Stage string

// The stages an Error can report.
const (
	StageConfig    Stage = "config"
	StageTCP       Stage = "tcp"
	StageHandshake Stage = "handshake"
	StageHostKey   Stage = "host key"
	StageAuth      Stage = "auth"
	StageChannel   Stage = "channel"
)

// Error is a failure to reach or use an instance. Its message names the address, the
// user, the authentication methods offered and the stage, e.g.
// "dial ssh 127.0.0.1:2222 as ci (auth: publickey,password): handshake: EOF".
type Error struct {
	// Op is what was being done: "dial ssh", "run", "open session", "dial unix", ….
	Op string
	// Instance is the instance ID, when known.
	Instance string
	// Addr and User are where and as whom the connection was made.
	Addr string
	User string
	// Methods lists the authentication methods offered, in order.
	Methods []string
	// Stage is the step that failed.
	Stage Stage
	// Attempts is how many dial attempts were made (0 when not dialling).
	Attempts int
	// Err is the cause.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Addr != "" {
		b.WriteString(" " + e.Addr)
	}
	if e.User != "" {
		b.WriteString(" as " + e.User)
	}
	if len(e.Methods) > 0 {
		b.WriteString(" (auth: " + strings.Join(e.Methods, ",") + ")")
	}
	if e.Instance != "" {
		fmt.Fprintf(&b, " [instance %s]", e.Instance)
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " after %d attempts", e.Attempts)
	}
	if e.Stage != "" {
		b.WriteString(": " + string(e.Stage))
	}
	b.WriteString(": ")
	b.WriteString(errString(e.Err))
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	// x/crypto prefixes its errors with "ssh: "; the Op already says ssh.
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "ssh: handshake failed: "), "ssh: ")
}

// ErrWinRMNotSupported is returned for protocol "winrm" and "winrm+https".
var ErrWinRMNotSupported = errors.New(`WinRM is not supported yet: install the OpenSSH server on the ` +
	`Windows instance and set protocol = "ssh" in [runners.autoscaler.connector_config]`)

// ErrChannelLimit is returned when the instance's SSH server refuses a new session
// because too many are open on the connection (OpenSSH's MaxSessions).
var ErrChannelLimit = errors.New("the instance's SSH server refused a new session " +
	"(administratively prohibited), most likely because its MaxSessions limit (OpenSSH default 10) " +
	"is reached: every job uses up to 2 sessions, so set MaxSessions in the instance's sshd_config " +
	"to at least 2 × capacity_per_instance, or lower capacity_per_instance")

// ErrStreamLocalRefused is returned by Client.Dial("unix", …) when the server does not
// open the socket. OpenSSH answers the same way whether nothing listens on the path or
// forwarding to unix sockets is off (AllowStreamLocalForwarding no), so the error names
// both; DialUnix falls back to a remote command in either case.
var ErrStreamLocalRefused = errors.New("the instance's SSH server did not open the unix socket " +
	"(direct-streamlocal@openssh.com): nothing listens on that path, or its sshd_config has " +
	"AllowStreamLocalForwarding no; fix that or use a dial-stdio fallback command")

// ErrConnectionClosed is returned when the SSH connection to the instance is gone. A
// Pool re-dials on the next use.
var ErrConnectionClosed = errors.New("ssh connection closed")

// HostKeyError is a host key that does not match the expected one. It is never retried
// and never ignored: the message says what to do.
type HostKeyError struct {
	Instance string
	Addr     string
	// Want is the expected key, Got the one the server presented.
	Want, Got ssh.PublicKey
	// Pinned is true when Want came from a trust-on-first-use pin, false when the
	// plugin reported it in ConnectInfo.HostKey.
	Pinned bool
	// Store describes where the pin lives (a file path or "memory").
	Store string
}

// Error implements error.
func (e *HostKeyError) Error() string {
	got := ssh.FingerprintSHA256(e.Got) + " (" + e.Got.Type() + ")"
	want := ssh.FingerprintSHA256(e.Want) + " (" + e.Want.Type() + ")"
	if e.Pinned {
		return fmt.Sprintf("host key of instance %q at %s changed: pinned %s on first use, server now presents %s; "+
			"if the instance was re-created under the same ID, remove its pin (the line starting with %q in %s) "+
			"and retry, otherwise the connection may be intercepted", e.Instance, e.Addr, want, got, e.Instance, e.Store)
	}
	return fmt.Sprintf("host key of instance %q at %s does not match the key the plugin reported: want %s, server presents %s; "+
		"the address may belong to another machine now, or the connection is intercepted", e.Instance, e.Addr, want, got)
}

// ExitError is a remote command that ran and exited non-zero, or was killed by a signal.
type ExitError struct {
	// Code is the exit status; for a command killed by a signal it is 128 + the signal
	// number when the signal is known, else -1.
	Code int
	// Signal is the signal name without "SIG" ("KILL"), empty if the command exited.
	Signal string
	// Message is the error message the server sent with a signal, if any.
	Message string
}

// ExitCode returns the remote command's exit status (see Code).
func (e *ExitError) ExitCode() int { return e.Code }

// Error implements error.
func (e *ExitError) Error() string {
	if e.Signal != "" {
		s := fmt.Sprintf("command killed by signal %s", e.Signal)
		if e.Message != "" {
			s += ": " + e.Message
		}
		return s
	}
	return fmt.Sprintf("command exited with code %d", e.Code)
}

var signalNumbers = map[string]int{"HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "ABRT": 6, "FPE": 8, "KILL": 9,
	"SEGV": 11, "PIPE": 13, "ALRM": 14, "TERM": 15, "USR1": 10, "USR2": 12}

func exitErrorFrom(err *ssh.ExitError) *ExitError {
	if sig := err.Signal(); sig != "" {
		code := -1
		if n, ok := signalNumbers[sig]; ok {
			code = 128 + n
		}
		return &ExitError{Code: code, Signal: sig, Message: err.Msg()}
	}
	return &ExitError{Code: err.ExitStatus()}
}
