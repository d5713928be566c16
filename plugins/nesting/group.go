// Package nesting is fleeting-plugin-nesting: an instance group whose instances are the
// VMs of one nesting daemon (Flotilla's `nesting serve`, in front of QEMU on Linux or
// Tart on a Mac). It is built as cmd/fleeting-plugin-nesting and builds on
// sdk/instancegroup like the cloud plugins.
//
// Increase creates VMs (Create, one free slot 0 … max_size-1 each, so that the plugin
// never stomps a VM of its own), Decrease deletes them (Delete), Update lists the
// daemon's VMs (List; every VM is running, its ID is the instance ID), and ConnectInfo
// returns the VM's SSH address with the credentials its image accepts. The daemon's
// socket is on this machine, or on a VM host reached over SSH (nesting_ssh): then the
// gRPC connection runs through that SSH connection (direct-streamlocal), and a VM
// whose address is on the VM host's loopback is reported at the VM host's address with
// the VM's port, so the daemon's backend must forward VM ports on an address this
// machine reaches.
package nesting

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/crypto/ssh"

	"github.com/flotilla-ci/flotilla/connector"
	nestingd "github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/sdk/doctor"
	"github.com/flotilla-ci/flotilla/sdk/instancegroup"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Version identifies this build of the plugin. Set its fields with -ldflags.
var Version = plugin.VersionInfo{Name: "fleeting-plugin-nesting", Version: "0.1.0"}

// InstanceGroup is the nesting provider. Its JSON-tagged fields are plugin_config.
type InstanceGroup struct {
	// NestingHost is the daemon's socket, "unix:///path/to/nesting.sock": on this
	// machine, or on the VM host NestingSSH names.
	NestingHost string `json:"nesting_host"`
	// NestingSSH, when set, is the VM host the socket is on, reached over SSH.
	NestingSSH *HostSSH `json:"nesting_ssh"`
	// Image is the nesting image every VM is created from.
	Image string `json:"image"`
	// MaxSize is how many VMs the group may hold, at most the daemon's max_vms; 0
	// means max_vms.
	MaxSize int `json:"max_size"`
	// NestingConfig, when set, is the hypervisor's config (a JSON object of the
	// backend's keys) sent with the daemon's Init; when absent, Init is not called and
	// the daemon must have been started with --config.
	NestingConfig json.RawMessage `json:"nesting_config"`
	// VMSSH is how to log in to a VM: the user and key file (or password) the image
	// accepts. A key left empty is taken from connector_config.
	VMSSH VMSSH `json:"vm_ssh"`

	// Base holds the logger and the host's settings.
	instancegroup.Base

	socket   string                   // the socket's path on the daemon's host
	hostInfo provider.ConnectInfo     // the VM host, when NestingSSH is set
	sshHost  string                   // NestingSSH's host, without the port
	vmKey    []byte                   // VMSSH.KeyFile's content
	vm       provider.ConnectorConfig // credentials of the VMs (settings + VMSSH)
	maxSize  int                      // MaxSize, or the daemon's max_vms

	mu      sync.Mutex
	client  *nestingd.Client
	pool    *connector.Pool
	closed  bool         // client and pool are closed
	pending map[int]bool // slots of VMs being created
}

// HostSSH is how the plugin reaches a VM host over SSH.
type HostSSH struct {
	// Address is host or host:port (port 22 by default).
	Address string `json:"address"`
	// Username logs in; the user must be allowed to open the daemon's socket.
	Username string `json:"username"`
	// KeyFile is an unencrypted private key; Password is used when there is none.
	KeyFile  string `json:"key_file"`
	Password string `json:"password"`
	// HostKey is the VM host's public key ("ssh-ed25519 AAAA…"); when empty, the
	// first key seen is trusted for as long as the plugin runs.
	HostKey string `json:"host_key"`
}

// VMSSH is how the runner logs in to the VMs.
type VMSSH struct {
	Username string `json:"username"`
	KeyFile  string `json:"key_file"`
	Password string `json:"password"`
}

var (
	_ provider.InstanceGroup = (*InstanceGroup)(nil)
	_ provider.Validator     = (*InstanceGroup)(nil)
	_ plugin.Commander       = (*InstanceGroup)(nil)
)

// New returns an unconfigured group, as plugin.Main wants it.
func New() *InstanceGroup { return &InstanceGroup{} }

// Validate reports every configuration problem at once, each naming its key.
func (g *InstanceGroup) Validate() error {
	var p instancegroup.Problems
	p.Required("nesting_host", g.NestingHost, `the daemon's socket, such as "unix:///run/nesting.sock"`)
	if g.NestingHost != "" {
		if path, err := nestingd.SocketPath(g.NestingHost); err != nil {
			p.Add("nesting_host", "%v", err)
		} else if !strings.HasPrefix(path, "/") {
			p.Add("nesting_host", "%q is not an absolute socket path: write it like \"unix:///run/nesting.sock\"", g.NestingHost)
		}
	}
	p.Required("image", g.Image, "the nesting image the VMs are created from")
	p.NotNegative("max_size", g.MaxSize)
	if len(g.NestingConfig) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(g.NestingConfig, &obj); err != nil || obj == nil {
			p.Add("nesting_config", "%s is not a JSON object (a table in config.toml) of the hypervisor's keys", g.NestingConfig)
		}
	}
	if s := g.NestingSSH; s != nil {
		p.Required("nesting_ssh.address", s.Address, "the VM host's host or host:port")
		p.Required("nesting_ssh.username", s.Username, "the user to log in to the VM host as")
		if s.KeyFile == "" && s.Password == "" {
			p.Add("nesting_ssh", "no credentials: set key_file (an unencrypted private key) or password")
		}
		if s.HostKey != "" {
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s.HostKey)); err != nil {
				p.Add("nesting_ssh.host_key", "%q is not a public key such as \"ssh-ed25519 AAAA…\": %v", s.HostKey, err)
			}
		}
	}
	return p.Err()
}

// daemonState is what the daemon said at Init: what runs its VMs, and the VMs.
type daemonState struct {
	info nestingd.Info
	vms  []nestingd.VM
}

// spec is the nesting part of the shared instance-group flow.
func (g *InstanceGroup) spec() instancegroup.Spec[daemonState] {
	return instancegroup.Spec[daemonState]{
		Group:         "nesting daemon " + g.NestingHost,
		Connect:       g.connect,
		Close:         g.closeClient,
		Describe:      g.describe,
		DescribeCheck: "daemon",
		DescribeFix:   "start the daemon on that socket (`nesting serve --hypervisor qemu|tart --config FILE --socket PATH`) and check plugin_config.nesting_host and nesting_ssh",
		Check:         g.check,
		Config:        g,
		Flags: func(fs *flag.FlagSet) {
			fs.StringVar(&g.NestingHost, "nesting-host", "", `the daemon's socket ("unix:///run/nesting.sock")`)
			fs.StringVar(&g.Image, "image", "", "the nesting image")
			fs.IntVar(&g.MaxSize, "max-size", 0, "how many VMs the group may hold (0: the daemon's max_vms)")
		},
	}
}

// Commands offers `doctor`.
func (g *InstanceGroup) Commands() []plugin.Command {
	return []plugin.Command{instancegroup.DoctorCommand(&g.Base, "check that the nesting daemon answers and can hold max_size VMs", g.spec())}
}

// Init connects to the daemon, sends it nesting_config if there is one, checks that it
// can hold max_size VMs, and settles the VMs' credentials.
func (g *InstanceGroup) Init(ctx context.Context, logger hclog.Logger, settings provider.Settings) (provider.ProviderInfo, error) {
	st, err := instancegroup.Init(ctx, &g.Base, logger, settings, g.spec())
	if err != nil {
		return provider.ProviderInfo{}, err
	}
	g.maxSize = g.MaxSize
	if g.maxSize == 0 {
		g.maxSize = st.info.MaxVMs
	}
	g.vm = settings.ConnectorConfig
	if g.VMSSH.Username != "" {
		g.vm.Username = g.VMSSH.Username
	}
	if len(g.vmKey) > 0 {
		g.vm.Key = g.vmKey
	}
	if g.VMSSH.Password != "" {
		g.vm.Password = g.VMSSH.Password
	}
	var errs []error
	if g.vm.Username == "" {
		errs = append(errs, fmt.Errorf("plugin_config.vm_ssh.username: no user to log in to the VMs as: set it to the user the image %q accepts (or username in connector_config): %w", g.Image, provider.ErrInvalidConfig))
	}
	if len(g.vm.Key) == 0 && g.vm.Password == "" {
		errs = append(errs, fmt.Errorf("plugin_config.vm_ssh: no credentials for the VMs: set key_file or password to what the image %q accepts (or key_path or password in connector_config): %w", g.Image, provider.ErrInvalidConfig))
	}
	if err := errors.Join(errs...); err != nil {
		return provider.ProviderInfo{}, err
	}
	g.Log.Info("nesting daemon ready", "nesting_host", g.where(), "hypervisor", st.info.Name,
		"accelerator", st.info.Accelerator, "max_vms", st.info.MaxVMs, "max_size", g.maxSize, "vms", len(st.vms))
	return instancegroup.Info(Version, g.id(), g.maxSize), nil
}

// id names the group: the daemon's host and socket, stable across restarts.
func (g *InstanceGroup) id() string {
	where := "local"
	if g.NestingSSH != nil {
		where = g.NestingSSH.Address
	}
	return "nesting/" + strings.Join(strings.Fields(where+g.socket), "_")
}

// where names the daemon in errors and logs.
func (g *InstanceGroup) where() string {
	if g.NestingSSH == nil {
		return g.NestingHost
	}
	return fmt.Sprintf("%s on %s@%s (over SSH)", g.NestingHost, g.NestingSSH.Username, g.NestingSSH.Address)
}

// describe sends nesting_config (if any) and lists the daemon.
func (g *InstanceGroup) describe(ctx context.Context) (daemonState, error) {
	c := g.daemon()
	if len(g.NestingConfig) > 0 {
		if _, err := c.Init(ctx, g.NestingConfig); err != nil {
			if errors.Is(err, nestingd.ErrInvalid) || errors.Is(err, nestingd.ErrUnavailable) {
				return daemonState{}, fmt.Errorf("plugin_config.nesting_config: the daemon at %s refused it: %w: %w", g.where(), err, provider.ErrInvalidConfig)
			}
			return daemonState{}, g.daemonErr(err)
		}
	}
	vms, info, err := c.List(ctx)
	if err != nil {
		return daemonState{}, g.daemonErr(err)
	}
	return daemonState{info: info, vms: vms}, nil
}

// check is the doctor's view of the daemon.
func (g *InstanceGroup) check(_ context.Context, st daemonState) []doctor.Finding {
	var out []doctor.Finding
	add := func(check string, sev doctor.Severity, msg, fix string) {
		out = append(out, doctor.Finding{Check: check, Severity: sev, Message: msg, Fix: fix})
	}
	if st.info.MaxVMs == 0 {
		add("initialized", doctor.Error, fmt.Sprintf("the daemon at %s has no hypervisor config yet", g.where()),
			"start it with `nesting serve --config FILE`, or set plugin_config.nesting_config")
		return out
	}
	add("daemon", doctor.OK, fmt.Sprintf("%s (accelerator %s), max_vms %d, %d VMs", st.info.Name, st.info.Accelerator, st.info.MaxVMs, len(st.vms)), "")
	if g.MaxSize > st.info.MaxVMs {
		add("max-size", doctor.Error, fmt.Sprintf("plugin_config.max_size %d is above the daemon's max_vms %d", g.MaxSize, st.info.MaxVMs),
			fmt.Sprintf("set max_size to at most %d, or raise max_vms in the daemon's config", st.info.MaxVMs))
	}
	if st.info.Accelerator == "tcg" {
		add("accelerator", doctor.Warning, "the VMs run under QEMU's software emulation (TCG): jobs run several times slower than with KVM",
			"run the daemon on a host where KVM works (/dev/kvm usable)")
	}
	return out
}

// Update reports every VM of the daemon as running.
func (g *InstanceGroup) Update(ctx context.Context, fn func(string, provider.State)) error {
	vms, _, err := g.daemon().List(ctx)
	if err != nil {
		return g.daemonErr(err)
	}
	for _, vm := range vms {
		fn(vm.ID, provider.StateRunning)
	}
	return nil
}

// Increase creates up to n VMs, each in a free slot, and returns how many it created.
func (g *InstanceGroup) Increase(ctx context.Context, n int) (int, error) {
	if n <= 0 {
		return 0, nil
	}
	slots, held, err := g.reserve(ctx, n)
	if err != nil {
		return 0, err
	}
	defer g.release(slots)
	var errs []error
	if len(slots) < n {
		errs = append(errs, fmt.Errorf("%w: created %d of %d VMs: the group holds %d of max_size %d", provider.ErrCapacity, len(slots), n, held, g.maxSize))
	}
	results := make([]error, len(slots))
	var wg sync.WaitGroup
	for i, slot := range slots {
		wg.Go(func() { results[i] = g.create(ctx, slot) })
	}
	wg.Wait()
	created := 0
	for _, err := range results {
		if err == nil {
			created++
		} else {
			errs = append(errs, err)
		}
	}
	return created, errors.Join(errs...)
}

// reserve picks up to n free slots (taken by no VM of the daemon nor by a creation
// under way) within max_size, and holds them until release. held is how many VMs the
// group holds or is creating.
func (g *InstanceGroup) reserve(ctx context.Context, n int) (slots []int, held int, err error) {
	vms, _, err := g.daemon().List(ctx)
	if err != nil {
		return nil, 0, g.daemonErr(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	held = len(vms) + len(g.pending)
	taken := map[int]bool{}
	for _, vm := range vms {
		taken[vm.Slot] = true
	}
	for slot := 0; slot < g.maxSize && len(slots) < min(n, g.maxSize-held); slot++ {
		if !taken[slot] && !g.pending[slot] {
			slots = append(slots, slot)
			g.pending[slot] = true
		}
	}
	return slots, held, nil
}

func (g *InstanceGroup) release(slots []int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range slots {
		delete(g.pending, s)
	}
}

// create creates one VM in slot. A daemon restarted without its config is given
// nesting_config again.
func (g *InstanceGroup) create(ctx context.Context, slot int) error {
	c := g.daemon()
	vm, stomped, err := c.Create(ctx, g.Image, slot)
	if errors.Is(err, nestingd.ErrNotInitialized) && len(g.NestingConfig) > 0 {
		g.Log.Info("the nesting daemon lost its config (restarted?); sending nesting_config again", "nesting_host", g.where())
		if _, ierr := c.Init(ctx, g.NestingConfig); ierr != nil {
			return g.daemonErr(fmt.Errorf("init again after %w: %w", err, ierr))
		}
		vm, stomped, err = c.Create(ctx, g.Image, slot)
	}
	if err != nil {
		if errors.Is(err, nestingd.ErrCapacity) {
			return fmt.Errorf("%w: %w", provider.ErrCapacity, g.daemonErr(err))
		}
		return g.daemonErr(err)
	}
	if stomped != "" {
		g.Log.Warn("the daemon deleted a VM that held the slot: another client creates VMs in this daemon's slots", "slot", slot, "deleted", stomped, "vm", vm.ID)
	}
	g.Log.Debug("VM created", "vm", vm.ID, "slot", slot, "addr", vm.Addr)
	return nil
}

// Decrease deletes the named VMs.
func (g *InstanceGroup) Decrease(ctx context.Context, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	c := g.daemon()
	results := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() { results[i] = c.Delete(ctx, id) })
	}
	wg.Wait()
	var done []string
	var errs []error
	for i, err := range results {
		switch {
		case err == nil:
			done = append(done, ids[i])
		case errors.Is(err, nestingd.ErrVMNotFound):
			errs = append(errs, fmt.Errorf("%w: %w", provider.ErrNotFound, g.daemonErr(err)))
		default:
			errs = append(errs, g.daemonErr(err))
		}
	}
	return done, errors.Join(errs...)
}

// ConnectInfo returns the VM's SSH address and the credentials its image accepts.
func (g *InstanceGroup) ConnectInfo(ctx context.Context, id string) (provider.ConnectInfo, error) {
	vm, err := g.find(ctx, id)
	if err != nil {
		return provider.ConnectInfo{}, err
	}
	return provider.ConnectInfo{ConnectorConfig: g.vm, ID: vm.ID, InternalAddr: g.vmAddr(vm.Addr)}, nil
}

// Heartbeat reports a VM healthy while the daemon lists it.
func (g *InstanceGroup) Heartbeat(ctx context.Context, id string) error {
	_, err := g.find(ctx, id)
	return err
}

func (g *InstanceGroup) find(ctx context.Context, id string) (nestingd.VM, error) {
	vms, _, err := g.daemon().List(ctx)
	if err != nil {
		return nestingd.VM{}, g.daemonErr(err)
	}
	if i := slices.IndexFunc(vms, func(vm nestingd.VM) bool { return vm.ID == id }); i >= 0 {
		return vms[i], nil
	}
	return nestingd.VM{}, fmt.Errorf("VM %s: the nesting daemon at %s does not list it: %w", id, g.where(), provider.ErrNotFound)
}

// vmAddr is where the runner dials a VM. A VM of a remote daemon whose address is
// on the VM host's loopback (or any address) is reached at the VM host's address, on
// the VM's port.
func (g *InstanceGroup) vmAddr(addr string) string {
	if g.NestingSSH == nil {
		return addr
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !(ip.IsLoopback() || ip.IsUnspecified())) {
		return addr
	}
	return net.JoinHostPort(g.sshHost, port)
}

// Shutdown closes the connection to the daemon. The VMs stay.
func (g *InstanceGroup) Shutdown(context.Context) error {
	return g.closeClient()
}

// daemonErr names the daemon in an error of a call to it.
func (g *InstanceGroup) daemonErr(err error) error {
	return fmt.Errorf("nesting daemon at %s: %w", g.where(), err)
}

// readKey reads a configured key file; key names it in the error.
func readKey(key, path string) ([]byte, error) {
	path = instancegroup.ExpandHome(path)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("plugin_config.%s: %w: %w", key, err, provider.ErrInvalidConfig)
	}
	if _, err := connector.ParsePrivateKey(data); err != nil {
		return nil, fmt.Errorf("plugin_config.%s: %s: %w: %w", key, path, err, provider.ErrInvalidConfig)
	}
	return data, nil
}
