package local

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// Files of an instance directory. The directory is the instance: it is created by
// Increase and removed by Decrease, and everything the plugin knows about the instance
// is in it, so that a relaunched plugin finds the same instances.
const (
	metaFile          = "instance.json" // instanceMeta, written once at creation
	hostKeyFile       = "ssh_host_ed25519_key"
	authorizedKeyFile = "authorized_keys" // the client public key the server accepts
	clientKeyFile     = "client_key"      // the generated client key, when none was configured
	passwordFile      = "password"        // connector_config password, when set
	cgroupFile        = "cgroup"          // the instance's cgroup v2 path, when cgroups are used
	serverLockFile    = "server.lock"     // locked by the live server for its whole life (procs.go)
	serverPIDFile     = "server.pid"      // serverRecord, written by the server once it holds the lock
	serverFile        = "server.json"     // serverState, written by the server once listening
	serverLogFile     = "server.log"
	deletingFile      = "deleting" // marker: Decrease accepted the instance
	homeDir           = "home"     // the sandbox: commands' working directory and HOME
	tmpDir            = "tmp"      // commands' TMPDIR
)

// serveCommand is the hidden subcommand that runs one instance's SSH server.
const serveCommand = "instance-serve"

// idPattern matches instance IDs, and so the only directory names the plugin ever
// deletes under root_dir.
var idPattern = regexp.MustCompile(`^local-[a-z2-7]{12}$`)

// instanceMeta is instance.json.
type instanceMeta struct {
	ID           string    `json:"id"`
	CreatedAt    time.Time `json:"created_at"`
	ReadyAt      time.Time `json:"ready_at"`
	User         string    `json:"user"`
	Port         int       `json:"port"`
	DockerSocket string    `json:"docker_socket,omitempty"`
	Isolation    string    `json:"isolation"`
}

// serverState is server.json.
type serverState struct {
	PID       int       `json:"pid"`
	Port      int       `json:"port"`
	StartedAt time.Time `json:"started_at"`
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// writeFileAtomic writes data so that readers see the old file or the whole new one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(data, '\n'), 0o600)
}

// reservePort finds a free loopback port for a new instance, so that ConnectInfo can
// name the address while the instance is still "booting" (connections are refused
// until the server listens, as with a cloud VM).
func reservePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port on 127.0.0.1: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// procInfo is what /proc says about a process.
type procInfo struct {
	state   byte
	sid     int
	start   uint64 // clock ticks after boot
	cmdline []string
}

// readProc reads pid's stat and command line.
func readProc(pid int) (procInfo, bool) {
	info, ok := readStat(pid)
	if ok {
		if cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
			info.cmdline = strings.Split(strings.TrimRight(string(cl), "\x00"), "\x00")
		}
	}
	return info, ok
}

// readStat reads pid's stat only (no command line): enough to scan for members of a
// session.
func readStat(pid int) (procInfo, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procInfo{}, false
	}
	// The command name is in parentheses and may hold spaces: parse after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procInfo{}, false
	}
	// Fields from the third (state) on: session is the 6th, start time the 22nd.
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 20 {
		return procInfo{}, false
	}
	var info procInfo
	info.state = fields[0][0]
	info.sid, _ = strconv.Atoi(fields[3])
	info.start, _ = strconv.ParseUint(fields[19], 10, 64)
	return info, true
}

// isServer reports whether the process is a live instance-serve of dir: a recorded PID
// alone is not trusted, since PIDs are reused.
func (p procInfo) isServer(dir string) bool {
	if p.state == 'Z' || len(p.cmdline) < 2 {
		return false
	}
	n := len(p.cmdline)
	return p.cmdline[n-2] == serveCommand && p.cmdline[n-1] == dir
}

// readPID reads the PID a file starts with (server.pid), or 0.
func readPID(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}

// serverAlive reports whether dir's server is running (or starting), and the PID of
// the one serving (0 while it starts), as the kernel's locks say: a file could be stale
// or never written. A killed server whose last threads still exit holds its locks a
// moment longer, but is a zombie already: dead.
func serverAlive(dir string) (int, bool) {
	f, err := os.Open(filepath.Join(dir, serverLockFile))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	pid, held := lockHolder(f), lockHeld(f)
	if pid > 0 {
		if info, ok := readStat(pid); !ok || info.state == 'Z' {
			return pid, false
		}
	}
	return pid, held
}

// startServer starts dir's server as a detached process (its own session, so that
// killing the plugin does not kill it), after creating the instance's cgroup if it has
// one. claim is the plugin's hold lock on the instance (from tryClaim): the server
// inherits it, so it is never free while the server lives (see procs.go). startServer
// closes the plugin's copy. It records nothing: the server records itself.
func (g *InstanceGroup) startServer(dir string, claim *os.File) error {
	defer claim.Close()
	if cg := instanceCgroup(dir); cg != "" {
		if err := ensureCgroup(cg); err != nil {
			g.log.Warn("instance cgroup unavailable; its processes are tracked by session only", "dir", dir, "error", err)
		}
	}
	logf, err := os.OpenFile(filepath.Join(dir, serverLogFile), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer logf.Close()
	args := append(append([]string{}, g.self[1:]...), serveCommand, dir)
	cmd := exec.Command(g.self[0], args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{claim} // fd 3
	cmd.Env = []string{"PATH=" + envOr("PATH", DefaultPath), "FLEETING_PLUGIN_LOG_LEVEL=" + os.Getenv("FLEETING_PLUGIN_LOG_LEVEL")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start instance server %s: %w", g.self[0], err)
	}
	// Reap it if it dies while this plugin lives; after a plugin restart, init does.
	go func() { _ = cmd.Wait() }()
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// sessionProcesses lists the live processes of session sid: the server and every
// command it started, including orphans of a server that was killed.
func sessionProcesses(sid int) []int {
	var pids []int
	for _, pid := range procPIDs() {
		if info, ok := readStat(pid); ok && info.sid == sid && info.state != 'Z' {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitUntil polls cond until it holds, d has passed or ctx is done.
func waitUntil(ctx context.Context, d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// removeInstanceDir deletes an instance directory, making read-only directories a
// command left behind writable first. instance.json and then the deleting marker are
// removed last, in that order: until the end the directory is an instance being
// deleted (the next Update finishes a removal that failed), and a plugin process
// sharing root_dir that re-creates server.lock in it meanwhile (restart) finds the
// marker, or else no instance.json, and leaves it (stillInstance).
func removeInstanceDir(dir string) error {
	if err := removeInOrder(dir); err == nil {
		return nil
	}
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(path, 0o700)
		}
		return nil
	})
	if err := removeInOrder(dir); err != nil {
		return fmt.Errorf("remove instance directory: %w", err)
	}
	return nil
}

// removeInOrder is removeInstanceDir's one attempt.
func removeInOrder(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if name := e.Name(); name != metaFile && name != deletingFile {
			if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
				return err
			}
		}
	}
	for _, name := range []string{metaFile, deletingFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return os.RemoveAll(dir) // and whatever was created meanwhile
}

// serveInstance is the instance-serve subcommand: it runs dir's SSH server until ctx
// ends (SIGTERM), then kills every command it started.
func serveInstance(ctx context.Context, self []string, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel()}))
	lock, err := becomeServer(dir, log)
	if err != nil {
		return err
	}
	defer lock.Close() // held until this process exits; the kernel drops it if killed
	var meta instanceMeta
	if err := readJSON(filepath.Join(dir, metaFile), &meta); err != nil {
		return fmt.Errorf("read instance: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, hostKeyFile))
	if err != nil {
		return fmt.Errorf("read host key: %w", err)
	}
	hostKey, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return fmt.Errorf("parse host key %s: %w", filepath.Join(dir, hostKeyFile), err)
	}
	var authorized []ssh.PublicKey
	if data, err := os.ReadFile(filepath.Join(dir, authorizedKeyFile)); err == nil {
		for len(bytes.TrimSpace(data)) > 0 {
			k, _, _, rest, err := ssh.ParseAuthorizedKey(data)
			if err != nil {
				return fmt.Errorf("parse %s: %w", filepath.Join(dir, authorizedKeyFile), err)
			}
			authorized = append(authorized, k)
			data = rest
		}
	}
	password, _ := os.ReadFile(filepath.Join(dir, passwordFile))

	// Boot delay: the port refuses connections until the instance is "up".
	if wait := time.Until(meta.ReadyAt); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(meta.Port)))
	if err != nil {
		log.Warn("reserved port taken, using another", "port", meta.Port, "error", err)
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return fmt.Errorf("listen on 127.0.0.1: %w", err)
		}
	}
	srv, err := NewServer(ServerConfig{
		HostKey: hostKey, User: meta.User, AuthorizedKeys: authorized, Password: string(password),
		WorkDir: filepath.Join(dir, homeDir), TmpDir: filepath.Join(dir, tmpDir),
		DockerSocket: meta.DockerSocket, Isolation: meta.Isolation, Hostname: meta.ID,
		SelfCommand: self, Logger: log,
	})
	if err != nil {
		ln.Close()
		return err
	}
	st := serverState{PID: os.Getpid(), Port: ln.Addr().(*net.TCPAddr).Port, StartedAt: time.Now().UTC()}
	if err := writeJSON(filepath.Join(dir, serverFile), st); err != nil {
		ln.Close()
		return fmt.Errorf("record server address: %w", err)
	}
	log.Info("instance server listening", "instance", meta.ID, "addr", ln.Addr().String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		log.Info("instance server stopping", "instance", meta.ID)
	case err = <-served:
	}
	_ = srv.Close()
	return err
}

// becomeServer makes this process dir's one server, before it does anything else:
// it joins the instance's cgroup (so that all it starts is inside), takes the hold
// lock (inherited from the plugin as fd 3; a start nobody handed it to fails here
// and exits having done nothing), marks itself as the serving server, checks that the
// instance is still there and not being deleted, and records itself in server.pid.
// It returns the lock file, to keep open for the server's life.
func becomeServer(dir string, log *slog.Logger) (*os.File, error) {
	if cg := instanceCgroup(dir); cg != "" {
		if err := joinCgroup(cg); err != nil {
			log.Warn("not in the instance's cgroup; its processes are tracked by session only", "error", err)
		}
	}
	path := filepath.Join(dir, serverLockFile)
	f := inheritedLock(path)
	if f == nil {
		var err error
		if f, err = os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600); err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	}
	fail := func(format string, args ...any) (*os.File, error) {
		f.Close()
		return nil, fmt.Errorf(format, args...)
	}
	held, err := holdLock(f)
	if err != nil {
		return fail("lock %s: %v", path, err)
	}
	if !held {
		return fail("instance %s is held by another server or by the plugin: this start was not handed the lock", dir)
	}
	if err := lockServer(f); err != nil {
		return fail("instance %s is already served by pid %d", dir, lockHolder(f))
	}
	// The plugin releases the lock only after removing the directory: a server that
	// got the lock of a removed file must not serve.
	var opened, linked syscall.Stat_t
	if syscall.Fstat(int(f.Fd()), &opened) != nil || syscall.Stat(path, &linked) != nil ||
		opened.Ino != linked.Ino || opened.Dev != linked.Dev {
		return fail("instance %s was deleted", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, deletingFile)); err == nil {
		return fail("instance %s is being deleted", dir)
	}
	if err := writeFileAtomic(filepath.Join(dir, serverPIDFile), []byte(recordSelf().String()), 0o600); err != nil {
		return fail("record server pid: %v", err)
	}
	return f, nil
}

// inheritedLock returns the lock file the plugin handed over as fd 3, if fd 3 is path,
// made close-on-exec so that no command inherits the hold; else nil.
func inheritedLock(path string) *os.File {
	const fd = 3
	var got, want syscall.Stat_t
	if syscall.Fstat(fd, &got) != nil || syscall.Stat(path, &want) != nil || got.Ino != want.Ino || got.Dev != want.Dev {
		return nil
	}
	syscall.CloseOnExec(fd)
	return os.NewFile(fd, path)
}

func logLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("FLEETING_PLUGIN_LOG_LEVEL"))); err != nil {
		return slog.LevelInfo
	}
	return l
}
