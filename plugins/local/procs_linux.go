//go:build linux

package local

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Linux values that package syscall lacks.
const (
	fOFDSetLK    = 37         // F_OFD_SETLK: a lock owned by the open file, not the process
	cgroup2Magic = 0x63677270 // CGROUP2_SUPER_MAGIC, statfs f_type of a cgroup v2 file system
)

// server.lock is locked in two bytes.
const (
	// holdByte is OFD-locked by whoever owns the instance: the plugin while it starts,
	// restarts or ends it, else its server. The plugin takes it before it starts a
	// server and hands it over with the open file (inherited as fd 3), so that it is
	// never free while a server of the instance lives: not between the fork and any
	// write, not after the plugin dies. An OFD lock is dropped when the last descriptor
	// of its open file is closed (the server's, when it dies however), and not when the
	// plugin closes another descriptor of the same file, as a POSIX lock would be.
	holdByte = 0
	// serverByte is POSIX-locked by the serving server itself, so that F_GETLK names
	// its PID: the one process to signal, whatever any file says.
	serverByte = 1
)

func lockRange(typ int16, start int64) *syscall.Flock_t {
	return &syscall.Flock_t{Type: typ, Whence: 0, Start: start, Len: 1}
}

// holdLock takes the instance's hold lock through f (an OFD lock, see holdByte);
// false if another open file or process holds it. Taking it again through the open
// file that holds it succeeds.
func holdLock(f *os.File) (bool, error) {
	err := syscall.FcntlFlock(f.Fd(), fOFDSetLK, lockRange(syscall.F_WRLCK, holdByte))
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
		return false, nil
	}
	return err == nil, err
}

// lockHeld reports whether anything but f holds the instance's hold lock.
func lockHeld(f *os.File) bool {
	lk := lockRange(syscall.F_WRLCK, holdByte)
	return syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, lk) == nil && lk.Type != syscall.F_UNLCK
}

// lockServer marks this process as the instance's server (see serverByte). The server
// never opens the file again, so the POSIX lock is not dropped early.
func lockServer(f *os.File) error {
	return syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, lockRange(syscall.F_WRLCK, serverByte))
}

// lockHolder returns the PID of the instance's serving server, or 0.
func lockHolder(f *os.File) int {
	lk := lockRange(syscall.F_WRLCK, serverByte)
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, lk); err != nil || lk.Type == syscall.F_UNLCK {
		return 0
	}
	return int(lk.Pid)
}

// onCgroup2 reports whether path, or the nearest existing directory above it, is on a
// cgroup v2 file system.
func onCgroup2(path string) bool {
	for p := path; p != "/" && p != "."; p = filepath.Dir(p) {
		var st syscall.Statfs_t
		if err := syscall.Statfs(p, &st); err == nil {
			return st.Type == cgroup2Magic
		} else if !errors.Is(err, syscall.ENOENT) {
			return false
		}
	}
	return false
}

// cgroupParentFor returns (and creates) the cgroup that holds root_dir's instance
// cgroups: under this process's own cgroup v2, so that they stay within whatever
// contains the plugin (a systemd unit, a container, an outer instance).
func cgroupParentFor(root string) (string, error) {
	mnt, mntRoot, err := cgroup2Mount()
	if err != nil {
		return "", err
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", fmt.Errorf("read /proc/self/cgroup: %w", err)
	}
	own := ""
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			own = rest
		}
	}
	if !strings.HasPrefix(own, "/") {
		return "", fmt.Errorf("%w: this process is in no cgroup v2 (/proc/self/cgroup)", errNoCgroup2)
	}
	if mntRoot != "/" {
		rel, ok := strings.CutPrefix(own, mntRoot)
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) {
			return "", fmt.Errorf("%w: this process's cgroup %s is outside the mounted %s", errNoCgroup2, own, mntRoot)
		}
		own = rel
	}
	parent := filepath.Join(mnt, own, cgroupGroupName(root))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", fmt.Errorf("create cgroup %s: %w", parent, err)
	}
	return parent, nil
}

// cgroup2Mount finds the cgroup v2 mount: its mount point, and the cgroup it shows.
func cgroup2Mount() (string, string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", errNoCgroup2, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		i := slices.Index(fields, "-")
		if i < 5 || i+1 >= len(fields) || fields[i+1] != "cgroup2" {
			continue
		}
		if strings.Contains(fields[3]+fields[4], `\`) {
			continue // an escaped (unusual) path: not worth unescaping
		}
		return fields[4], fields[3], nil
	}
	return "", "", errNoCgroup2
}

// ensureCgroup creates the instance's cgroup if it is missing (first start, or after
// a reboot). A deletion may remove the root_dir's group meanwhile: retry.
func ensureCgroup(cg string) error {
	var err error
	for range 3 {
		if err = os.MkdirAll(cg, 0o755); err == nil {
			return nil
		}
	}
	return fmt.Errorf("create cgroup %s: %w", cg, err)
}

// joinCgroup moves this process into cgroup cg; its children are born there.
func joinCgroup(cg string) error {
	path := filepath.Join(cg, "cgroup.procs")
	if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("join cgroup %s: %w", cg, err)
	}
	return nil
}

// cgroupProcs lists the live processes in cg and the cgroups below it.
func cgroupProcs(cg string) []int {
	var out []int
	_ = filepath.WalkDir(cg, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				if info, ok := readStat(pid); ok && info.state != 'Z' {
					out = append(out, pid)
				}
			}
		}
		return nil
	})
	return out
}

// killCgroup SIGKILLs every process in cg and below: with cgroup.kill (Linux 5.14)
// at once, which no fork can race; else one by one.
func killCgroup(cg string) {
	if err := os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0o644); err == nil {
		return
	}
	for _, pid := range cgroupProcs(cg) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// cgroupEmpty reports whether no process is left in cg or below it, including one
// still exiting: a killed multi-threaded process shows as a zombie, and is gone from
// cgroup.procs, while its last threads still keep the cgroup populated.
func cgroupEmpty(cg string) bool {
	data, err := os.ReadFile(filepath.Join(cg, "cgroup.events"))
	if errors.Is(err, fs.ErrNotExist) {
		return true
	}
	return err == nil && strings.Contains(string(data), "populated 0\n")
}

// removeCgroup removes cg and the cgroups below it, deepest first; a missing cg is
// removed already. It fails while a process is in one of them.
func removeCgroup(cg string) error {
	var dirs []string
	_ = filepath.WalkDir(cg, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
			return err
		}
	}
	return nil
}
