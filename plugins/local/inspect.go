package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ServerPID returns the PID recorded for instance id's SSH server under root, or 0.
// Together with CheckGone it lets a caller verify a deletion from outside the plugin.
func ServerPID(root, id string) int {
	if !idPattern.MatchString(id) {
		return 0
	}
	return readPID(filepath.Join(root, id, serverPIDFile))
}

// CheckGone returns an error if instance id's directory still exists under root, or
// if any process of the session its server (PID serverPID, from ServerPID) led is
// still running.
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
	return errors.Join(errs...)
}
