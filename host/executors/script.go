package executors

import (
	"fmt"
	"strings"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// Shells the executors can drive on an instance.
const (
	ShellBash = "bash"
	ShellSh   = "sh"
)

// ValidShell reports an error for a shell the executors do not support. Shells that
// need a script file (pwsh, cmd) are rejected, as GitLab's instance executor does.
func ValidShell(shell string) error {
	switch shell {
	case ShellBash, ShellSh:
		return nil
	case "pwsh", "powershell", "cmd":
		return fmt.Errorf("shell %q: the instance executor doesn't support shells that require a script file; use bash or sh", shell)
	}
	return fmt.Errorf("shell %q is not supported; use bash or sh", shell)
}

// quote makes s one single-quoted shell word.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Script is a shell script sent on stdin to the job's shell.
type Script struct {
	Shell string
	// Dir is where the commands run (the project directory).
	Dir string
	// FileVarDir is where file-type variables are written.
	FileVarDir string
	Variables  jobs.Variables
	Commands   []string
	// Quiet leaves out the echo of each command: for the runtime's own scripts (cache
	// transfers), which are not the job's.
	Quiet bool
}

// String renders the script: strict error handling, exported variables, then each
// command echoed (first line only for multi-line commands) and run in the same shell,
// so the first failing command ends the script with its exit code.
func (s Script) String() string {
	var b strings.Builder
	if s.Shell == ShellBash {
		b.WriteString("set -eo pipefail\n")
	} else {
		b.WriteString("set -e\n")
	}
	b.WriteString("set +o noclobber\n")
	for _, v := range s.Variables.Effective() {
		if v.File {
			// A file variable often holds a key or a token: only the job's user may
			// read it. umask makes the file 0600 from its creation (no window in
			// which it is readable), the subshell keeps the umask from the job's
			// commands, and rm makes sure a file left from before is not reused
			// with its old mode.
			path := strings.TrimRight(s.FileVarDir, "/") + "/" + v.Key
			fmt.Fprintf(&b, "(umask 077 && mkdir -p %s && rm -f %s && printf '%%s' %s > %s)\nexport %s=%s\n",
				quote(s.FileVarDir), quote(path), quote(v.Value), quote(path), v.Key, quote(path))
			continue
		}
		fmt.Fprintf(&b, "export %s=%s\n", v.Key, quote(v.Value))
	}
	if s.Dir != "" {
		fmt.Fprintf(&b, "cd %s\n", quote(s.Dir))
	}
	for _, cmd := range s.Commands {
		shown := cmd
		if first, _, multi := strings.Cut(strings.TrimSpace(cmd), "\n"); multi {
			shown = first + " # collapsed multi-line command"
		}
		if !s.Quiet {
			fmt.Fprintf(&b, "printf '%%s\\n' %s\n", quote(ansiBoldGreen+"$ "+shown+ansiReset))
		}
		b.WriteString(cmd)
		b.WriteString("\n")
	}
	return b.String()
}
