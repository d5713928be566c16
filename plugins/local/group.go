package local

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// InstanceGroup is the local provider: every instance is a sandbox on this machine, a
// directory under RootDir with its own SSH server on 127.0.0.1. Its JSON-tagged fields
// are the plugin_config.
type InstanceGroup struct {
	// MaxInstances caps the group; 0 means no cap.
	MaxInstances int `json:"max_instances"`
	// BootDelay is a Go duration ("5s"): instances stay creating, refusing SSH
	// connections, for that long after Increase, as a cloud VM boots.
	BootDelay string `json:"boot_delay"`
	// RootDir holds one directory per instance. Default: DefaultRootDir().
	RootDir string `json:"root_dir"`
	// Isolation is "none" (default), "namespaces" or "auto".
	Isolation string `json:"isolation"`
	// DockerSocket, when set, is the host's Docker socket that an instance's
	// /var/run/docker.sock (reached with direct-streamlocal) is mapped to.
	DockerSocket string `json:"docker_socket"`
	// Shared lets several plugin processes use RootDir at once (the plugins of several
	// runner managers of one instance group on this machine): each lists, connects
	// to, restarts and deletes the instances any of them created. Every plugin on
	// RootDir must set it; by default one plugin process owns RootDir alone.
	Shared bool `json:"shared"`

	self      []string // this program as the plugin: binary and the arguments selecting it
	log       hclog.Logger
	root      string
	bootDelay time.Duration
	isolation string
	user      string
	keyPEM    []byte // the configured client key, if any
	authKey   []byte // its public key, authorized_keys form
	settings  provider.ConnectorConfig
	lock      *os.File // held open while the plugin uses root_dir
	// cgroupParent holds the cgroups of the instances this plugin creates; "" when
	// cgroup v2 is not usable here, and instances' processes are their server's session.
	cgroupParent string
	noCgroups    bool // tests: behave as where cgroup v2 is not usable

	mu       sync.Mutex // serialises creating, restarting and deleting instances
	deleting map[string]bool
	wg       sync.WaitGroup // background deletions
}

var (
	_ provider.InstanceGroup = (*InstanceGroup)(nil)
	_ provider.Validator     = (*InstanceGroup)(nil)
	_ plugin.Commander       = (*InstanceGroup)(nil)
)

// New returns an unconfigured group. self is the command that runs this program as the
// local plugin (the binary, then the arguments that select the plugin, e.g. the runner's
// "plugin-local"); the group re-executes it to start detached instance servers. Nil
// means this executable with no arguments.
func New(self []string) *InstanceGroup {
	return &InstanceGroup{self: self}
}

// DefaultRootDir is where instances live when root_dir is not set:
// $XDG_STATE_HOME/flotilla/local, else ~/.local/state/flotilla/local, else a directory
// in the system temporary directory named for the user ID.
func DefaultRootDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "flotilla", "local")
	}
	if home, err := os.UserHomeDir(); err == nil && filepath.IsAbs(home) {
		return filepath.Join(home, ".local", "state", "flotilla", "local")
	}
	return filepath.Join(os.TempDir(), "flotilla-local-"+strconv.Itoa(os.Getuid()))
}

// defaultUser is the login name when connector_config sets none: the current user's,
// else "flotilla".
func defaultUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "flotilla"
}

// Validate reports every configuration problem at once, each naming its key.
func (g *InstanceGroup) Validate() error {
	var errs []error
	if g.MaxInstances < 0 {
		errs = append(errs, fmt.Errorf("plugin_config.max_instances: %d is negative: use 0 for no limit", g.MaxInstances))
	}
	if g.BootDelay != "" {
		d, err := time.ParseDuration(g.BootDelay)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("plugin_config.boot_delay: %q is not a Go duration: write e.g. \"5s\" or \"1m30s\"", g.BootDelay))
		case d < 0:
			errs = append(errs, fmt.Errorf("plugin_config.boot_delay: %q is negative", g.BootDelay))
		}
	}
	switch g.Isolation {
	case "", IsolationNone, IsolationNamespaces, IsolationAuto:
	default:
		errs = append(errs, fmt.Errorf("plugin_config.isolation: %q is not one of \"none\", \"namespaces\", \"auto\"", g.Isolation))
	}
	if g.DockerSocket != "" && !filepath.IsAbs(g.DockerSocket) {
		errs = append(errs, fmt.Errorf("plugin_config.docker_socket: %q is not an absolute path: write e.g. \"/var/run/docker.sock\"", g.DockerSocket))
	}
	return errors.Join(errs...)
}

func invalidConfig(format string, args ...any) error {
	return fmt.Errorf("%w: %s", provider.ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// Init prepares root_dir, the credentials and the isolation mode.
func (g *InstanceGroup) Init(ctx context.Context, logger hclog.Logger, settings provider.Settings) (provider.ProviderInfo, error) {
	if err := g.Validate(); err != nil {
		return provider.ProviderInfo{}, fmt.Errorf("%w: %w", provider.ErrInvalidConfig, err)
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	g.log = logger
	g.deleting = map[string]bool{}
	if len(g.self) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return provider.ProviderInfo{}, fmt.Errorf("find this plugin's executable to start instance servers: %w", err)
		}
		g.self = []string{exe}
	}
	if g.BootDelay != "" {
		g.bootDelay, _ = time.ParseDuration(g.BootDelay)
	}

	root := g.RootDir
	if root == "" {
		root = DefaultRootDir()
	}
	root, err := filepath.Abs(root)
	if err != nil {
		return provider.ProviderInfo{}, invalidConfig("plugin_config.root_dir: %v", err)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return provider.ProviderInfo{}, invalidConfig("plugin_config.root_dir: create %s: %v", root, err)
	}
	g.root = root

	g.settings = settings.ConnectorConfig
	g.user = settings.Username
	if g.user == "" {
		g.user = defaultUser()
	}
	if len(settings.Key) > 0 {
		signer, err := ssh.ParsePrivateKey(settings.Key)
		if err != nil {
			return provider.ProviderInfo{}, invalidConfig("connector_config key: %v: give an unencrypted PEM or OpenSSH private key", err)
		}
		g.keyPEM = settings.Key
		g.authKey = ssh.MarshalAuthorizedKey(signer.PublicKey())
	} else if settings.UseStaticCredentials && settings.Password == "" {
		return provider.ProviderInfo{}, invalidConfig("connector_config: use_static_credentials is true but neither key nor password is set: set one, or set use_static_credentials = false to let the plugin generate a key per instance")
	}

	g.isolation = IsolationNone
	switch g.Isolation {
	case IsolationNamespaces, IsolationAuto:
		if err := probeNamespaces(ctx, g.self); err != nil {
			if g.Isolation == IsolationNamespaces {
				return provider.ProviderInfo{}, invalidConfig("plugin_config.isolation: %q does not work here: %v: run the plugin as root (or with CAP_SYS_ADMIN), or set isolation to \"auto\" or \"none\"", g.Isolation, err)
			}
			logger.Warn("namespaces isolation unavailable, running commands without it", "error", err)
		} else {
			g.isolation = IsolationNamespaces
		}
	}
	if g.DockerSocket != "" {
		if fi, err := os.Stat(g.DockerSocket); err != nil || fi.Mode()&os.ModeSocket == 0 {
			logger.Warn("docker_socket is not a unix socket (yet); Docker connections through instances will fail until it is", "docker_socket", g.DockerSocket)
		}
	}
	alone, err := g.lockRoot(ctx)
	if err != nil {
		return provider.ProviderInfo{}, err
	}
	if !g.noCgroups {
		parent, err := cgroupParentFor(root)
		if err != nil {
			logger.Info("cgroup v2 is not usable: an instance's processes are known by its server's session, and one that leaves the session (setsid) escapes deletion", "error", err)
		} else {
			g.cgroupParent = parent
			if gone := sweepAbandonedCgroups(parent, time.Now()); len(gone) > 0 {
				logger.Info("removed the empty cgroups of root_dirs no plugin uses any more", "cgroups", gone)
			}
		}
	}
	// What looks abandoned in root_dir may be another live plugin's work in progress (a
	// half-built instance, the cgroup of one whose directory is not in place yet):
	// remove it only while no other plugin uses root_dir.
	if alone {
		g.cleanStaleCreations()
		g.endOrphanCgroups(ctx)
	} else {
		logger.Info("root_dir is shared with other live local plugins: leaving half-built instance directories and orphan cgroups, which may be theirs, to a plugin that starts alone", "root_dir", root)
	}
	if g.Shared && alone {
		// Now let the other shared plugins in.
		if err := setRootLock(g.lock, syscall.F_RDLCK); err != nil {
			g.lock.Close()
			g.lock = nil
			return provider.ProviderInfo{}, fmt.Errorf("share the lock on %s: %w", filepath.Join(root, LockFileName), err)
		}
	}

	host, _ := os.Hostname()
	return provider.ProviderInfo{
		ID:        "local/" + host + root,
		MaxSize:   g.MaxInstances,
		Version:   Version.Version,
		BuildInfo: Version.BuildInfo(),
	}, nil
}

// LockFileName is the file in root_dir that the plugin processes using root_dir hold
// a lock on: a plugin with shared = false holds it exclusively, since two plugins
// on one root_dir would each take the other's instances for their own; plugins with
// shared = true hold it shared, and so exclude a plugin with shared = false (and it
// them). It is a POSIX record lock, owned by the process, so that a group re-made in
// the same process (the conformance kit in process) is not locked out by itself.
const LockFileName = ".lock"

// lockWait is how long Init waits for root_dir's lock: a plugin process being replaced
// may take a moment to exit.
const lockWait = 5 * time.Second

// sharedMark follows the PID in LockFileName when the plugin that last held root_dir
// alone has shared = true: a plugin refused by it says so, rather than that it is one
// with shared = false.
const sharedMark = "shared"

// setRootLock takes (or converts to) the lock of type typ on the whole of f, without
// waiting.
func setRootLock(f *os.File, typ int16) error {
	return syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &syscall.Flock_t{Type: typ, Whence: 0})
}

// lockRoot takes root_dir's lock, and reports whether this plugin holds root_dir alone:
// it holds the lock exclusively. With shared = false that is the only way it takes it;
// with shared = true it tries that first, else takes it shared, and Init converts an
// exclusive one to shared once it has cleaned up.
func (g *InstanceGroup) lockRoot(ctx context.Context) (alone bool, err error) {
	path := filepath.Join(g.root, LockFileName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return false, invalidConfig("plugin_config.root_dir: open %s: %v", path, err)
	}
	locked := waitUntil(ctx, lockWait, func() bool {
		if setRootLock(f, syscall.F_WRLCK) == nil {
			alone = true
			return true
		}
		return g.Shared && setRootLock(f, syscall.F_RDLCK) == nil
	})
	if !locked {
		err := g.rootConflict(f)
		f.Close()
		return false, err
	}
	if alone {
		record := strconv.Itoa(os.Getpid())
		if g.Shared {
			record += " " + sharedMark
		}
		_ = f.Truncate(0)
		_, _ = f.WriteAt([]byte(record+"\n"), 0)
	}
	g.lock = f
	return alone, nil
}

// rootConflict explains why root_dir's lock was refused: which plugin holds it, and
// whether it shares root_dir.
func (g *InstanceGroup) rootConflict(f *os.File) error {
	record, _ := io.ReadAll(io.NewSectionReader(f, 0, 64))
	fields := strings.Fields(string(record))
	pid, holderShared := "", false
	if len(fields) > 0 {
		pid, holderShared = fields[0], len(fields) > 1 && fields[1] == sharedMark
	}
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0}
	if g.Shared {
		lk.Type = syscall.F_RDLCK
	}
	// The kernel names a holder (the record may be stale): a shared lock is a shared
	// plugin's; an exclusive one is a shared plugin's only while it cleans up alone.
	if syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk) == nil && lk.Type != syscall.F_UNLCK {
		if holder := strconv.Itoa(int(lk.Pid)); lk.Pid > 0 && holder != pid {
			pid, holderShared = holder, false
		}
		if lk.Type == syscall.F_RDLCK {
			holderShared = true
		}
	}
	if pid == "" {
		pid = "unknown"
	}
	switch {
	case !g.Shared && holderShared:
		return invalidConfig("plugin_config.root_dir: %s is shared by other local plugins (pid %s has shared = true) and this plugin has shared = false: set shared = true on every manager's plugin config that uses this root_dir, or give this [[runners]] entry its own root_dir",
			g.root, pid)
	case !g.Shared:
		return invalidConfig("plugin_config.root_dir: %s is in use by another local plugin (pid %s): give each [[runners]] entry that uses the local plugin its own root_dir; for several managers of one [[runners]] entry, set shared = true on every manager's plugin config",
			g.root, pid)
	case holderShared:
		return invalidConfig("plugin_config.root_dir: %s is shared, and another local plugin (pid %s) has held it alone, cleaning it up, for over %s: try again",
			g.root, pid, lockWait)
	default:
		return invalidConfig("plugin_config.root_dir: %s is in use by another local plugin (pid %s) that has shared = false and owns it alone: set shared = true on every manager's plugin config that uses this root_dir, or give this [[runners]] entry its own root_dir",
			g.root, pid)
	}
}

// newPrefix names a directory that is being built into an instance; Increase renames
// it into place only when it is complete.
const newPrefix = ".new-"

// cleanStaleCreations removes half-built instance directories a crashed plugin left.
func (g *InstanceGroup) cleanStaleCreations() {
	entries, _ := os.ReadDir(g.root)
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() && strings.HasPrefix(name, newPrefix) && idPattern.MatchString(strings.TrimPrefix(name, newPrefix)) {
			if err := removeInstanceDir(filepath.Join(g.root, name)); err != nil {
				g.log.Warn("remove half-created instance", "dir", name, "error", err)
			}
		}
	}
}

// endOrphanCgroups ends the cgroups of this root_dir's instances whose directory is
// gone (removed behind the plugin's back): their processes can belong to no instance
// any more, so they are killed, and the cgroups removed.
func (g *InstanceGroup) endOrphanCgroups(ctx context.Context) {
	if g.cgroupParent == "" {
		return
	}
	entries, _ := os.ReadDir(g.cgroupParent)
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || !idPattern.MatchString(id) {
			continue
		}
		if _, err := os.Lstat(filepath.Join(g.root, id)); !errors.Is(err, os.ErrNotExist) {
			continue // its directory is there: the instance is Update's and Decrease's
		}
		cg := filepath.Join(g.cgroupParent, id)
		left := cgroupProcs(cg)
		killCgroup(cg)
		waitUntil(ctx, 5*time.Second, func() bool { return cgroupEmpty(cg) })
		if err := removeCgroup(cg); err != nil {
			g.log.Warn("remove the cgroup of a vanished instance", "cgroup", cg, "error", err)
			continue
		}
		if len(left) > 0 {
			g.log.Warn("killed the processes of an instance whose directory is gone", "instance", id, "processes", left)
		}
	}
}

// instance is one directory found under root_dir.
type instance struct {
	id, dir  string
	meta     instanceMeta
	deleting bool
}

// lookup returns instance id if it is an instance of this group, else ErrNotFound.
func (g *InstanceGroup) lookup(id string) (instance, error) {
	if !idPattern.MatchString(id) {
		return instance{}, fmt.Errorf("instance %q: %w", id, provider.ErrNotFound)
	}
	dir := filepath.Join(g.root, id)
	in := instance{id: id, dir: dir}
	if err := readJSON(filepath.Join(dir, metaFile), &in.meta); err != nil || in.meta.ID != id {
		return instance{}, fmt.Errorf("instance %q: %w", id, provider.ErrNotFound)
	}
	_, err := os.Stat(filepath.Join(dir, deletingFile))
	in.deleting = err == nil
	return in, nil
}

func (g *InstanceGroup) list() ([]instance, error) {
	entries, err := os.ReadDir(g.root)
	if err != nil {
		return nil, fmt.Errorf("list instances in %s: %w", g.root, err)
	}
	var out []instance
	for _, e := range entries {
		if !e.IsDir() || !idPattern.MatchString(e.Name()) {
			continue
		}
		in, err := g.lookup(e.Name())
		if err != nil {
			continue // vanished meanwhile, or not ours
		}
		out = append(out, in)
	}
	return out, nil
}

// restartWait bounds how long Update waits for a restarted server to listen again.
const restartWait = 2 * time.Second

// Update reports every instance under root_dir. It also finishes deletions a previous
// plugin process left half done, and restarts an instance server that died (as a cloud
// restarts a crashed VM): the instance keeps its directory, keys and, if free, port.
func (g *InstanceGroup) Update(ctx context.Context, fn func(string, provider.State)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	instances, err := g.list()
	if err != nil {
		return err
	}
	for _, in := range instances {
		if err := ctx.Err(); err != nil {
			return err
		}
		if in.deleting {
			g.startDelete(in)
			fn(in.id, provider.StateDeleting)
			continue
		}
		if _, alive := serverAlive(in.dir); !alive {
			if err := g.restart(ctx, in); err != nil {
				// On a shared root_dir another plugin process may be deleting it.
				now, lerr := g.lookup(in.id)
				switch {
				case lerr != nil: // gone
				case now.deleting:
					fn(in.id, provider.StateDeleting)
				default:
					g.log.Error("restart instance server", "instance", in.id, "error", err)
					fn(in.id, provider.StateCreating)
				}
				continue
			}
			if !time.Now().Before(in.meta.ReadyAt) {
				waitUntil(ctx, restartWait, func() bool { return g.listening(in.dir) })
			}
		}
		if g.listening(in.dir) {
			fn(in.id, provider.StateRunning)
		} else {
			fn(in.id, provider.StateCreating)
		}
	}
	return nil
}

// restart starts a new server for an instance whose server died, as a cloud restarts a
// crashed VM: first it ends every process the dead server left (its commands'
// orphans), so that nothing of the old server runs on beside the new one. If a server
// holds the lock meanwhile, it is alive: nothing to do. If a deletion began since in
// was looked up (by another plugin process sharing root_dir), it fails with errGoing.
func (g *InstanceGroup) restart(ctx context.Context, in instance) error {
	f, claimed, err := tryClaim(in.dir)
	if err != nil || !claimed {
		return err
	}
	if !stillInstance(in.dir, in.id, f) {
		f.Close()
		return fmt.Errorf("instance %s: %w", in.id, errGoing)
	}
	old := readPID(filepath.Join(in.dir, serverPIDFile))
	n, err := endProcesses(ctx, in.dir)
	if err == nil {
		err = os.Remove(filepath.Join(in.dir, serverFile))
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	}
	if err != nil {
		f.Close()
		return err
	}
	g.log.Warn("instance server is not running; restarting it", "instance", in.id, "old_pid", old, "processes_ended", n)
	return g.startServer(in.dir, f) // the new server inherits the lock
}

// errGoing reports that an instance is being deleted, or is gone.
var errGoing = errors.New("being deleted")

// stillInstance reports whether the instance id in dir is still one to serve, once
// claim (its server.lock, from tryClaim) is held: the file claimed is the one in
// the directory, no deletion is under way, and instance.json is there. On a shared
// root_dir, another plugin process may have accepted a Decrease since Update looked,
// and be removing the directory: its claim held to the end, tryClaim got either the
// removed server.lock or one it created anew in the directory being removed
// (removeInstanceDir keeps the deleting marker, then instance.json, until last).
func stillInstance(dir, id string, claim *os.File) bool {
	var opened, linked syscall.Stat_t
	if syscall.Fstat(int(claim.Fd()), &opened) != nil || syscall.Stat(filepath.Join(dir, serverLockFile), &linked) != nil ||
		opened.Ino != linked.Ino || opened.Dev != linked.Dev {
		return false
	}
	if _, err := os.Lstat(filepath.Join(dir, deletingFile)); !errors.Is(err, os.ErrNotExist) {
		return false
	}
	var meta instanceMeta
	return readJSON(filepath.Join(dir, metaFile), &meta) == nil && meta.ID == id
}

// listening reports whether dir's live server has recorded its address.
func (g *InstanceGroup) listening(dir string) bool {
	pid, alive := serverAlive(dir)
	if !alive {
		return false
	}
	var st serverState
	return readJSON(filepath.Join(dir, serverFile), &st) == nil && st.PID == pid
}

// Increase creates delta instances, each with its server started (it listens once
// boot_delay has passed). Past max_instances it stops with ErrCapacity.
func (g *InstanceGroup) Increase(ctx context.Context, delta int) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	instances, err := g.list()
	if err != nil {
		return 0, err
	}
	live := 0
	for _, in := range instances {
		if !in.deleting {
			live++
		}
	}
	for i := range delta {
		if err := ctx.Err(); err != nil {
			return i, fmt.Errorf("increase: %w", err)
		}
		if g.MaxInstances > 0 && live+i >= g.MaxInstances {
			return i, fmt.Errorf("max_instances %d reached: %w", g.MaxInstances, provider.ErrCapacity)
		}
		if err := g.create(); err != nil {
			return i, err
		}
	}
	return delta, nil
}

// create builds an instance directory under a temporary name, renames it into place
// and starts its server.
func (g *InstanceGroup) create() error {
	id := "local-" + strings.ToLower(rand.Text()[:12])
	tmp := filepath.Join(g.root, newPrefix+id)
	dir := filepath.Join(g.root, id)
	fail := func(err error) error {
		_ = removeInstanceDir(tmp)
		return fmt.Errorf("create instance %s: %w", id, err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fail(err)
	}
	for _, sub := range []string{homeDir, tmpDir} {
		if err := os.Mkdir(filepath.Join(tmp, sub), 0o700); err != nil {
			return fail(err)
		}
	}
	_, hostPEM, err := GenerateKey(id)
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, hostKeyFile), hostPEM, 0o600); err != nil {
		return fail(err)
	}
	authKey := g.authKey
	if len(g.keyPEM) == 0 && !g.settings.UseStaticCredentials {
		client, clientPEM, err := GenerateKey("flotilla@" + id)
		if err != nil {
			return fail(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, clientKeyFile), clientPEM, 0o600); err != nil {
			return fail(err)
		}
		authKey = ssh.MarshalAuthorizedKey(client.PublicKey())
	}
	if err := os.WriteFile(filepath.Join(tmp, authorizedKeyFile), authKey, 0o600); err != nil {
		return fail(err)
	}
	if g.settings.Password != "" {
		if err := os.WriteFile(filepath.Join(tmp, passwordFile), []byte(g.settings.Password), 0o600); err != nil {
			return fail(err)
		}
	}
	port, err := reservePort()
	if err != nil {
		return fail(err)
	}
	now := time.Now().UTC()
	meta := instanceMeta{ID: id, CreatedAt: now, ReadyAt: now.Add(g.bootDelay), User: g.user, Port: port,
		DockerSocket: g.DockerSocket, Isolation: g.isolation}
	if err := writeJSON(filepath.Join(tmp, metaFile), meta); err != nil {
		return fail(err)
	}
	// The cgroup is recorded before the directory is in place, so before any server
	// of it can run: whatever is killed when, its processes are found (procs.go).
	if g.cgroupParent != "" {
		if err := os.WriteFile(filepath.Join(tmp, cgroupFile), []byte(filepath.Join(g.cgroupParent, id)+"\n"), 0o600); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fail(err)
	}
	claim, claimed, err := tryClaim(dir)
	if err == nil && !claimed {
		err = errors.New("its lock is held by another process")
	}
	if err == nil {
		err = g.startServer(dir, claim)
	}
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
		defer cancel()
		_ = deleteInstance(ctx, dir)
		return fmt.Errorf("create instance %s: %w", id, err)
	}
	g.log.Debug("instance created", "instance", id, "port", port, "ready_at", meta.ReadyAt)
	return nil
}

// Decrease marks the named instances as deleting and removes them in the background:
// their servers and every process they started are killed, then their directories are
// removed. Only directories named like instances, holding an instance.json with the same
// ID, are ever touched.
func (g *InstanceGroup) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var done []string
	var errs []error
	for _, id := range ids {
		in, err := g.lookup(id)
		if err != nil {
			errs = append(errs, fmt.Errorf("decrease: %w", err))
			continue
		}
		if !in.deleting {
			if err := os.WriteFile(filepath.Join(in.dir, deletingFile), nil, 0o600); err != nil {
				errs = append(errs, fmt.Errorf("decrease: mark instance %s deleting: %w", id, err))
				continue
			}
		}
		done = append(done, id)
		g.startDelete(in)
	}
	return done, errors.Join(errs...)
}

// deleteTimeout bounds one background deletion.
const deleteTimeout = time.Minute

// startDelete removes an instance in the background unless that is already under way.
// On failure the deleting marker stays, and the next Update tries again. Call with g.mu.
func (g *InstanceGroup) startDelete(in instance) {
	if g.deleting[in.id] {
		return
	}
	g.deleting[in.id] = true
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
		defer cancel()
		if err := deleteInstance(ctx, in.dir); err != nil {
			if _, statErr := os.Lstat(in.dir); errors.Is(statErr, os.ErrNotExist) {
				// Another plugin process sharing root_dir removed it first.
				g.log.Debug("instance deleted by another plugin process", "instance", in.id)
			} else {
				g.log.Error("delete instance", "instance", in.id, "error", err)
			}
		} else {
			g.log.Debug("instance deleted", "instance", in.id)
		}
		g.mu.Lock()
		delete(g.deleting, in.id)
		g.mu.Unlock()
	}()
}

// ConnectInfo returns the instance's address, user, client key and host key.
func (g *InstanceGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	if err := ctx.Err(); err != nil {
		return provider.ConnectInfo{}, err
	}
	in, err := g.lookup(id)
	if err != nil {
		return provider.ConnectInfo{}, err
	}
	port := in.meta.Port
	var st serverState
	if pid, alive := serverAlive(in.dir); alive && readJSON(filepath.Join(in.dir, serverFile), &st) == nil && st.PID == pid {
		port = st.Port
	}
	hostPEM, err := os.ReadFile(filepath.Join(in.dir, hostKeyFile))
	if err != nil {
		return provider.ConnectInfo{}, fmt.Errorf("instance %s: read host key: %w", id, err)
	}
	hostKey, err := ssh.ParsePrivateKey(hostPEM)
	if err != nil {
		return provider.ConnectInfo{}, fmt.Errorf("instance %s: parse host key: %w", id, err)
	}
	cc := g.settings
	cc.Protocol = provider.ProtocolSSH
	cc.ProtocolPort = port
	cc.Username = in.meta.User
	cc.OS, cc.Arch = runtime.GOOS, runtime.GOARCH
	cc.Key = g.keyPEM
	if key, err := os.ReadFile(filepath.Join(in.dir, clientKeyFile)); err == nil {
		cc.Key = key
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return provider.ConnectInfo{
		ConnectorConfig: cc,
		ID:              id,
		InternalAddr:    addr,
		ExternalAddr:    addr,
		HostKey:         bytes.TrimSpace(ssh.MarshalAuthorizedKey(hostKey.PublicKey())),
	}, nil
}

// heartbeatTimeout bounds the SSH banner check of Heartbeat.
const heartbeatTimeout = 2 * time.Second

// Heartbeat checks that a running instance's server answers with an SSH banner. A
// creating instance whose server process is alive is healthy.
func (g *InstanceGroup) Heartbeat(ctx context.Context, id string) error {
	in, err := g.lookup(id)
	if err != nil {
		return err
	}
	if in.deleting {
		return fmt.Errorf("instance %s is being deleted: %w", id, provider.ErrInstanceUnhealthy)
	}
	if _, alive := serverAlive(in.dir); !alive {
		return fmt.Errorf("instance %s: its SSH server is not running: %w", id, provider.ErrInstanceUnhealthy)
	}
	if !g.listening(in.dir) {
		return nil // still booting
	}
	info, err := g.ConnectInfo(ctx, id)
	if err != nil {
		return err
	}
	d := net.Dialer{Timeout: heartbeatTimeout}
	conn, err := d.DialContext(ctx, "tcp", info.InternalAddr)
	if err != nil {
		return fmt.Errorf("instance %s: dial %s: %v: %w", id, info.InternalAddr, err, provider.ErrInstanceUnhealthy)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(heartbeatTimeout))
	banner := make([]byte, 4)
	if _, err := io.ReadFull(conn, banner); err != nil || string(banner) != "SSH-" {
		return fmt.Errorf("instance %s: no SSH banner from %s: %w", id, info.InternalAddr, provider.ErrInstanceUnhealthy)
	}
	return nil
}

// Shutdown waits for deletions under way. Instances and their servers stay: they
// outlive the plugin, and a relaunched plugin finds them.
func (g *InstanceGroup) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() { g.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("shutdown: waiting for deletions: %w", ctx.Err())
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cgroupParent != "" {
		_ = syscall.Rmdir(g.cgroupParent) // only if no instance is left in it
	}
	if g.lock != nil {
		g.lock.Close() // releases root_dir for the next plugin process
		g.lock = nil
	}
	return nil
}

// Commands are the hidden subcommands the plugin binary runs for itself.
func (g *InstanceGroup) Commands() []plugin.Command {
	return []plugin.Command{
		{Name: serveCommand, Usage: "DIR: run one instance's SSH server (internal)",
			Run: func(ctx context.Context, args []string, _ io.Writer) error {
				if len(args) != 1 {
					return errors.New("usage: " + serveCommand + " DIR")
				}
				self := g.self
				if len(self) == 0 {
					exe, err := os.Executable()
					if err != nil {
						return err
					}
					self = []string{exe}
				}
				return serveInstance(ctx, self, args[0])
			}},
		{Name: nsInitCommand, Usage: "HOSTNAME -- COMMAND...: PID 1 of an isolated command (internal)",
			Run: func(_ context.Context, args []string, _ io.Writer) error { return runNSInit(args) }},
	}
}
