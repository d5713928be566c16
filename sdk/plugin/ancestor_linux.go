package plugin

import (
	"bytes"
	"os"
	"strconv"
	"strings"
)

// isAncestor reports whether process host is pid or one of its ancestors, following
// the parent links in /proc. A host that died is no ancestor: its children were
// reparented when it exited, even while it waits, a zombie, to be reaped.
func isAncestor(host, pid int) bool {
	for i := 0; pid > 1 && i < 64; i++ { // 64: a bound against a racing, changing chain
		if pid == host {
			return true
		}
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return false
		}
		// pid (comm) state ppid …: comm may hold anything, so parse after the last ')'.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 2 {
			return false
		}
		if pid, err = strconv.Atoi(fields[1]); err != nil {
			return false
		}
	}
	return pid == host
}
