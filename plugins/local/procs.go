package local

// How the plugin knows an instance's processes, and ends them.
//
// Every record is made by the one process that knows it, before the thing it describes
// can exist; so a kill -9 of the plugin or of a server at any point, even between a
// fork and any write, leaves nothing the next plugin cannot find:
//
//   - server.lock, hold byte: who owns the instance now. The plugin takes it (an OFD
//     lock) before it forks a server and hands the open file to the server (fd 3), so
//     the lock is never free while a server of the instance lives: from before the
//     fork until the server dies, however, even if the plugin dies in between. A server
//     serves only once it holds it, so there is never a second server: a start nobody
//     handed the lock to (a stray or hand-made start) fails and exits having done
//     nothing. "Is the server alive" is asked of the kernel (F_GETLK), never of a file.
//     The plugin takes the lock itself to restart or end an instance, stopping the
//     server that holds it: while it holds it, no server of the instance can run.
//   - server.lock, server byte: POSIX-locked by the serving server, so that F_GETLK
//     names the PID to signal.
//   - cgroup (file): the instance's cgroup v2, chosen by the plugin and written into the
//     instance directory while it is still being built, before any server of it can
//     exist. The plugin creates the cgroup before it starts a server; the server moves
//     itself into it first thing, so every process it ever starts is inside (setsid
//     does not leave a cgroup). Ending the instance is cgroup.kill.
//   - server.pid: the server's PID (also its session ID: it leads its own session),
//     start time and boot ID, written by the server once it holds the lock and before
//     it starts any command. Without cgroups the instance's processes are that
//     session's members; a server killed before writing it had started none.
//
// Crash points, then: the plugin killed before it takes the lock or forks leaves no
// server, and a free lock: the next Update starts one. Killed between taking the lock
// and the fork: the kernel drops the lock with the plugin. Killed after the fork,
// before or after anything else: the server holds the lock through the inherited
// file and records itself; nothing depended on the plugin writing anything. A server
// killed before joining its cgroup or writing server.pid had started nothing; after,
// its cgroup and its session hold all it started, and the next Update (restart) or
// Decrease, holding the lock, kills them.

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// serverStopGrace is how long a server has, after SIGTERM, to end its commands and
// exit before it is killed.
const serverStopGrace = 3 * time.Second

// serverRecord is server.pid: the server that holds server.lock, written by itself.
type serverRecord struct {
	pid   int
	start uint64 // clock ticks after boot (/proc/PID/stat field 22); 0 in a legacy record
	boot  string // the boot ID the start time counts from
}

func (r serverRecord) String() string {
	return fmt.Sprintf("%d %d %s\n", r.pid, r.start, r.boot)
}

// readServerRecord reads dir's server.pid; a legacy file holds the PID alone.
func readServerRecord(dir string) serverRecord {
	data, err := os.ReadFile(filepath.Join(dir, serverPIDFile))
	if err != nil {
		return serverRecord{}
	}
	f := strings.Fields(string(data))
	var r serverRecord
	if len(f) > 0 {
		r.pid, _ = strconv.Atoi(f[0])
	}
	if len(f) > 2 {
		r.start, _ = strconv.ParseUint(f[1], 10, 64)
		r.boot = f[2]
	}
	return r
}

// bootID identifies this boot of the machine ("" where unknown).
func bootID() string {
	data, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(data))
}

// recordSelf is the server's own server.pid record.
func recordSelf() serverRecord {
	r := serverRecord{pid: os.Getpid(), boot: bootID()}
	if info, ok := readProc(r.pid); ok {
		r.start = info.start
	}
	return r
}

// sessionMembers lists the live processes of the session a recorded server led,
// including those it left when it died. A session ID is not reused while any member
// lives, so if the PID now belongs to another process (another start time), the
// recorded session is over; members must also have started after the server.
func sessionMembers(dir string, r serverRecord) []int {
	if r.pid <= 0 || (r.boot != "" && r.boot != bootID()) {
		return nil
	}
	if leader, ok := readProc(r.pid); ok && leader.state != 'Z' {
		if r.start != 0 && leader.start != r.start {
			return nil
		}
		if r.start == 0 && !leader.isServer(dir) {
			return nil // a legacy record: the PID was reused
		}
	}
	var out []int
	for _, pid := range procPIDs() {
		if info, ok := readStat(pid); ok && info.sid == r.pid && info.state != 'Z' && info.start >= r.start {
			out = append(out, pid)
		}
	}
	return out
}

func procPIDs() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cgroupGroupName names the cgroup that holds root_dir's instance cgroups: a plugin
// puts one per root_dir under its own cgroup, each instance's cgroup named by its ID.
func cgroupGroupName(root string) string {
	h := fnv.New64a()
	h.Write([]byte(root))
	return fmt.Sprintf("flotilla-local-%016x", h.Sum64())
}

// abandonedCgroupAge is how long the cgroups of another root_dir must have been left
// untouched, and empty, before a plugin removes them: long enough that no plugin is
// between creating one and moving an instance server into it.
const abandonedCgroupAge = 10 * time.Minute

// sweepAbandonedCgroups removes the groups of other root_dirs beside parent (this
// plugin's group) that hold no process and whose cgroups are all older than
// abandonedCgroupAge. Such a group is left when a root_dir is removed while its
// instances lived (a test's temporary directory, say): their servers exit, and no
// plugin for that root_dir starts again to remove their empty cgroups. A live
// plugin's group is never touched: it holds its instance servers' processes.
func sweepAbandonedCgroups(parent string, now time.Time) (removed []string) {
	dir := filepath.Dir(parent)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		cg := filepath.Join(dir, e.Name())
		if !e.IsDir() || cg == parent || !strings.HasPrefix(e.Name(), "flotilla-local-") || !cgroupEmpty(cg) {
			continue
		}
		fresh := false
		_ = filepath.WalkDir(cg, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				if fi, err := d.Info(); err != nil || now.Sub(fi.ModTime()) < abandonedCgroupAge {
					fresh = true
					return filepath.SkipAll
				}
			}
			return nil
		})
		if !fresh && removeCgroup(cg) == nil {
			removed = append(removed, e.Name())
		}
	}
	return removed
}

// instanceCgroup returns the cgroup recorded for the instance in dir, or "" if none
// is recorded, or if the record does not name a cgroup v2 directory of that instance
// (a command of the instance could have rewritten it).
func instanceCgroup(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, cgroupFile))
	if err != nil {
		return ""
	}
	p := strings.TrimSpace(string(data))
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || filepath.Base(p) != filepath.Base(dir) ||
		!strings.HasPrefix(filepath.Base(filepath.Dir(p)), "flotilla-local-") || !onCgroup2(p) {
		return ""
	}
	return p
}

// instanceProcesses lists every live process of the instance in dir: its cgroup's
// and its recorded server session's. The server is among them while it lives.
func instanceProcesses(dir string) []int {
	seen := map[int]bool{}
	var out []int
	add := func(pids []int) {
		for _, p := range pids {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	if cg := instanceCgroup(dir); cg != "" {
		add(cgroupProcs(cg))
	}
	add(sessionMembers(dir, readServerRecord(dir)))
	return out
}

// claimInstance takes dir's hold lock for the plugin, stopping the server that holds
// it (SIGTERM, then SIGKILL after serverStopGrace; a server still starting is killed
// with the instance's cgroup, or else waited for): while the plugin holds it no server
// of the instance runs. Close the file to release it.
func claimInstance(ctx context.Context, dir string) (*os.File, error) {
	path := filepath.Join(dir, serverLockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	start := time.Now()
	var termAt time.Time
	for {
		held, err := holdLock(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if held {
			return f, nil
		}
		pid := lockHolder(f)
		switch {
		case pid > 0 && termAt.IsZero():
			_ = syscall.Kill(pid, syscall.SIGTERM)
			termAt = time.Now()
		case pid > 0 && time.Since(termAt) > serverStopGrace:
			_ = syscall.Kill(pid, syscall.SIGKILL)
		case pid <= 0 && time.Since(start) > serverStopGrace:
			if cg := instanceCgroup(dir); cg != "" {
				killCgroup(cg)
			}
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("stop the server of %s (pid %d): %w", dir, pid, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// tryClaim takes dir's hold lock for the plugin unless a server (alive or starting)
// holds it.
func tryClaim(dir string) (*os.File, bool, error) {
	path := filepath.Join(dir, serverLockFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("open %s: %w", path, err)
	}
	held, err := holdLock(f)
	if err != nil || !held {
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("lock %s: %w", path, err)
		}
		return nil, false, nil
	}
	return f, true, nil
}

// endProcesses kills every process of the instance in dir and waits until none is
// left; it returns how many there were. The caller holds the hold lock, so none of
// them is a server still serving, and no new one can start serving.
func endProcesses(ctx context.Context, dir string) (int, error) {
	cg := instanceCgroup(dir)
	rec := readServerRecord(dir)
	first := -1
	for attempt := 0; ; attempt++ {
		left := instanceProcesses(dir)
		if first < 0 {
			first = len(left)
		}
		if len(left) == 0 {
			return first, nil
		}
		if attempt == 3 || ctx.Err() != nil {
			return first, fmt.Errorf("end the processes of instance %s: %v survive SIGKILL", filepath.Base(dir), left)
		}
		if cg != "" {
			killCgroup(cg)
		}
		for _, pid := range sessionMembers(dir, rec) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		waitUntil(ctx, 2*time.Second, func() bool { return len(instanceProcesses(dir)) == 0 })
	}
}

// deleteInstance ends the instance in dir: its server (SIGTERM first, so that it ends
// its commands itself), every process left, its cgroup, then its directory. The
// hold lock is held throughout and released only once the directory is gone.
func deleteInstance(ctx context.Context, dir string) error {
	f, err := claimInstance(ctx, dir)
	if err != nil {
		return err
	}
	defer f.Close()
	// The marker is removed last but for the directory (removeInstanceDir): a plugin
	// process sharing root_dir that claims the instance meanwhile must see that it is
	// going (stillInstance). Decrease wrote it already; a failed creation did not.
	marker := filepath.Join(dir, deletingFile)
	if _, err := os.Lstat(marker); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			return fmt.Errorf("mark instance %s deleting: %w", filepath.Base(dir), err)
		}
	}
	cg := instanceCgroup(dir)
	for attempt := 0; ; attempt++ {
		if _, err := endProcesses(ctx, dir); err != nil {
			return err
		}
		if cg == "" {
			break
		}
		// A start nobody handed the lock to may still join the cgroup (and then exit:
		// the lock is ours); rmdir fails while it, or a process still exiting, is there.
		waitUntil(ctx, 5*time.Second, func() bool { return cgroupEmpty(cg) })
		err := removeCgroup(cg)
		if err == nil {
			_ = syscall.Rmdir(filepath.Dir(cg)) // the root_dir's group, once empty
			break
		}
		if attempt == 3 {
			return fmt.Errorf("remove cgroup %s: %w", cg, err)
		}
	}
	return removeInstanceDir(dir)
}

// errNoCgroup2 reports that cgroup v2 cannot hold the instances' processes here.
var errNoCgroup2 = errors.New("no cgroup v2 hierarchy")
