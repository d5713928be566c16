package local

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ServerPID returns the PID recorded for instance id's SSH server under root (by the
// server itself, once it serves the instance), or 0. Together with CheckGone it lets a
// caller verify a deletion from outside the plugin.
func ServerPID(root, id string) int {
	if !idPattern.MatchString(id) {
		return 0
	}
	return readPID(filepath.Join(root, id, serverPIDFile))
}

// CheckGone returns an error if instance id's directory still exists under root, or
// if any of its processes still runs: a member of the session its server (PID
// serverPID, from ServerPID) led, or any process in the instance's cgroup, wherever it
// went (setsid included).
func CheckGone(root, id string, serverPID int) error {
	var errs []error
	if _, err := os.Stat(filepath.Join(root, id)); !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("instance %s: directory %s is still there", id, filepath.Join(root, id)))
	}
	if serverPID > 0 {
		if left := sessionProcesses(serverPID); len(left) > 0 {
			errs = append(errs, fmt.Errorf("instance %s: processes %v of its server session are still running", id, left))
		}
	}
	if abs, err := filepath.Abs(root); err == nil && idPattern.MatchString(id) {
		if left := inInstanceCgroup(abs, id); len(left) > 0 {
			errs = append(errs, fmt.Errorf("instance %s: processes %v of its cgroup are still running", id, left))
		}
	}
	return errors.Join(errs...)
}

// inInstanceCgroup lists the live processes whose cgroup v2 is instance id's of
// root_dir root, or one below it. It reads each process's /proc/PID/cgroup, so it
// needs no record: the instance directory may be gone.
func inInstanceCgroup(root, id string) []int {
	name := "/" + cgroupGroupName(root) + "/" + id
	var out []int
	for _, pid := range procPIDs() {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/cgroup")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			p, ok := strings.CutPrefix(sc.Text(), "0::")
			if ok && (strings.HasSuffix(p, name) || strings.Contains(p, name+"/")) {
				if info, ok := readStat(pid); ok && info.state != 'Z' {
					out = append(out, pid)
				}
				break
			}
		}
		f.Close()
	}
	return out
}
