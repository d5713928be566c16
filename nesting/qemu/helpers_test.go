package qemu

import (
	"fmt"
	"os"
	"strings"
)

func fmtSscan(s string, pid *int) (int, error) { return fmt.Sscan(s, pid) }

// ownsDirAny says whether pid is a live, non-zombie process.
func ownsDirAny(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z'
}
