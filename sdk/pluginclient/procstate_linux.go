package pluginclient

import (
	"bytes"
	"os"
	"strconv"
)

// processState is the scheduler state of process pid as /proc shows it ("stopped",
// "sleeping", …), or "unknown".
func processState(pid int) string {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stateUnknown
	}
	// pid (comm) state …: comm may hold anything, so the state follows the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return stateUnknown
	}
	switch stat[i+2] {
	case 'R':
		return "running"
	case 'S':
		return "sleeping"
	case 'D':
		return "in uninterruptible sleep"
	case 'T':
		return stateStopped
	case 't':
		return "stopped by a tracer"
	case 'Z':
		return "zombie"
	case 'X':
		return "dead"
	case 'I':
		return "idle"
	}
	return stateUnknown
}
