package chaos

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// proc is what /proc says about one process.
type proc struct {
	pid, ppid int
	started   uint64 // start time since boot, in clock ticks: with pid, it names a process
	state     byte   // R, S, D, T (stopped), Z (zombie), …
	cmdline   []string
	cwd       string
	environ   []byte // NUL-separated
}

func (p proc) String() string {
	s := fmt.Sprintf("pid %d %q", p.pid, strings.Join(p.cmdline, " "))
	if p.state == 'T' || p.state == 't' {
		s += " (stopped)"
	}
	return s
}

// readProc reads one process; ok is false if it is gone or a zombie (a zombie holds
// nothing but its exit status, so it is not a leak).
func readProc(pid int) (proc, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return proc{}, false
	}
	// The command name is in parentheses and may hold anything: parse after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return proc{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
		return proc{}, false
	}
	p := proc{pid: pid, state: f[0][0]}
	p.ppid, _ = strconv.Atoi(f[1])
	if len(f) > 19 {
		p.started, _ = strconv.ParseUint(f[19], 10, 64) // field 22 of stat; f starts at field 3
	}
	if cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		p.cmdline = strings.Split(strings.TrimRight(string(cl), "\x00"), "\x00")
	}
	return p, true
}

// readDetails adds the working directory and the environment, which only the trial's
// process count needs.
func (p *proc) readDetails() {
	p.cwd, _ = os.Readlink(fmt.Sprintf("/proc/%d/cwd", p.pid))
	p.environ, _ = os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.pid))
}

// allProcs lists every live process but this one.
func allProcs() []proc {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if p, ok := readProc(pid); ok {
			out = append(out, p)
		}
	}
	return out
}

// belongs reports whether p is a process of the trial whose directory is dir and whose
// marker variable is envKV ("CHAOS_TRIAL=<id>"): it carries the marker in its
// environment (the runner, its plugin, job shells and what they start), or names the
// trial's directory on its command line (local instance servers), or works in it.
func (p proc) belongs(dir, envKV string) bool {
	for _, kv := range bytes.Split(p.environ, []byte{0}) {
		if string(kv) == envKV {
			return true
		}
	}
	for _, a := range p.cmdline {
		if a == dir || strings.Contains(a, dir+string(filepath.Separator)) {
			return true
		}
	}
	return p.cwd == dir || strings.HasPrefix(p.cwd, dir+string(filepath.Separator))
}

// trialProcs lists the live processes of a trial.
func trialProcs(dir, envKV string) []proc {
	var out []proc
	for _, p := range allProcs() {
		p.readDetails()
		if p.belongs(dir, envKV) {
			out = append(out, p)
		}
	}
	return out
}

// children lists the live child processes of pid.
func children(pid int) []proc {
	var out []proc
	for _, p := range allProcs() {
		if p.ppid == pid {
			out = append(out, p)
		}
	}
	return out
}

// isInstanceServer reports whether p is a local instance server of an instance under
// root, and which instance.
func (p proc) isInstanceServer(root string) (string, bool) {
	n := len(p.cmdline)
	if n < 2 || p.cmdline[n-2] != "instance-serve" || !strings.HasPrefix(p.cmdline[n-1], root+string(filepath.Separator)) {
		return "", false
	}
	return filepath.Base(p.cmdline[n-1]), true
}

// same reports whether q is the process p was (a PID may have been reused since).
func (p proc) same(q proc) bool { return p.pid == q.pid && p.started == q.started }

// killAll SIGKILLs the processes (a stopped process dies of SIGKILL too).
func killAll(ps []proc) {
	for _, p := range ps {
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
}
