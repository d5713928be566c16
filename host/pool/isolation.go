package pool

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// vmDeleteTimeout bounds deleting a job's VM after the job.
const vmDeleteTimeout = 2 * time.Minute

// isolation runs each job of a runner entry with [runners.autoscaler.vm_isolation] in a
// VM of the nesting daemon on the job's instance, as GitLab does: the daemon is reached
// through the instance's SSH connection (its unix socket forwarded), initialised once
// per instance with nesting_config, asked for a VM in the job's slot, and the job's
// executor connects to that VM through the instance. There is no fallback: a job whose
// VM cannot be had fails as a system failure and never runs on the instance itself.
type isolation struct {
	cfg       config.VMIsolation
	socket    string
	init      []byte // nesting_config as JSON; nil: the daemon is initialised already
	connector provider.ConnectorConfig
	allowed   []string

	mu          sync.Mutex
	initialized map[string]bool // instance IDs whose daemon got Init
}

func newIsolation(r *config.Runner, cfgDir string) (*isolation, error) {
	vi := r.Autoscaler.VMIsolation
	socket, err := nesting.SocketPath(vi.NestingHost)
	if err != nil {
		return nil, fmt.Errorf("vm_isolation.nesting_host: %w", err)
	}
	cc, err := vi.ConnectorConfig.Provider(cfgDir)
	if err != nil {
		return nil, fmt.Errorf("vm_isolation.connector_config: %w", err)
	}
	iso := &isolation{cfg: vi, socket: socket, connector: cc, allowed: r.Instance.AllowedImages, initialized: map[string]bool{}}
	if len(vi.NestingConfig) > 0 {
		if iso.init, err = vi.NestingConfigJSON(); err != nil {
			return nil, err
		}
	}
	return iso, nil
}

// daemon returns a client of the nesting daemon on the instance inst is connected to.
func (iso *isolation) daemon(inst *connector.Client) (*nesting.Client, error) {
	return nesting.NewClient(func(ctx context.Context) (net.Conn, error) {
		return inst.DialUnix(ctx, iso.socket, "")
	})
}

// ready initialises the daemon of instance id once.
func (iso *isolation) ready(ctx context.Context, id string, d *nesting.Client) error {
	if iso.init == nil {
		return nil
	}
	iso.mu.Lock()
	done := iso.initialized[id]
	iso.mu.Unlock()
	if done {
		return nil
	}
	if _, err := d.Init(ctx, iso.init); err != nil {
		return err
	}
	iso.mu.Lock()
	iso.initialized[id] = true
	iso.mu.Unlock()
	return nil
}

// forget drops what is known of instance id (it is gone).
func (iso *isolation) forget(id string) {
	iso.mu.Lock()
	delete(iso.initialized, id)
	iso.mu.Unlock()
}

// image is the VM image of job: with the instance executor its image:, else
// vm_isolation.image; with docker-autoscaler, whose image: names the job's container
// image, always vm_isolation.image. It must be allowed.
func (iso *isolation) image(job *jobs.Job, executor string) (string, error) {
	img := job.Image.Name
	if executor == config.ExecutorDockerAutoscaler {
		img = ""
	}
	if img == "" {
		img = iso.cfg.Image
	}
	if img == "" {
		return "", errors.New("the job names no image and [runners.autoscaler.vm_isolation] image is not set")
	}
	if err := executors.ImageAllowed(img, iso.allowed, "[runners.instance]"); err != nil {
		return "", err
	}
	return img, nil
}

// env makes job's environment in a new VM on the instance inst is connected to, in
// the job's slot. The environment's Release deletes the VM.
func (m *Pool) isolatedEnv(ctx context.Context, job *jobs.Job, slot Slot, inst *connector.Client) (executors.Env, error) {
	iso := m.isolation
	fail := func(err error) (executors.Env, error) {
		return nil, fmt.Errorf("vm_isolation on instance %s: %w", slot.InstanceID(), err)
	}
	image, err := iso.image(job, m.kind.Name)
	if err != nil {
		return fail(err)
	}
	d, err := iso.daemon(inst)
	if err != nil {
		return fail(err)
	}
	if err := iso.ready(ctx, slot.InstanceID(), d); err != nil {
		d.Close()
		return fail(err)
	}
	vm, stomped, err := d.Create(ctx, image, slot.Slot())
	if err != nil {
		d.Close()
		return fail(err)
	}
	if stomped != "" {
		m.log.Warn("a VM was left in the job's slot; the nesting daemon deleted it", "instance", slot.InstanceID(), "slot", slot.Slot(), "vm", stomped)
	}
	m.log.Debug("job VM created", "instance", slot.InstanceID(), "vm", vm.ID, "image", image, "addr", vm.Addr)
	release := func(ctx context.Context) error {
		defer d.Close()
		ctx, cancel := context.WithTimeout(ctx, vmDeleteTimeout)
		defer cancel()
		if err := d.Delete(ctx, vm.ID); err != nil && !errors.Is(err, nesting.ErrVMNotFound) {
			return fmt.Errorf("delete VM %s on instance %s: %w", vm.ID, slot.InstanceID(), err)
		}
		return nil
	}
	info := provider.ConnectInfo{ConnectorConfig: iso.connector, ID: slot.InstanceID() + "/" + vm.ID, InternalAddr: vm.Addr}
	conn, err := connector.DialSSH(ctx, info, connector.DialOptions{DialFn: inst.Dial, Logger: m.log,
		// A VM's host key is made at its boot: pinned for its life only.
		HostKeys: connector.NewMemoryHostKeyStore()})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("vm_isolation: connect to VM %s (%s) through instance %s: %w", vm.ID, vm.Addr, slot.InstanceID(), err),
			release(context.WithoutCancel(ctx)))
	}
	if m.kind.Name == config.ExecutorDockerAutoscaler {
		// The job's containers run on the VM's Docker Engine; an image without one is a
		// configuration error, said as such rather than as a failed Docker call.
		sock := m.runner.Docker.Host
		if sock == "" {
			sock = "unix:///var/run/docker.sock"
		}
		path, _ := strings.CutPrefix(sock, "unix://")
		if err := conn.Run(ctx, connector.RunOptions{Command: "test -S " + shellQuote(path)}); err != nil {
			conn.Close()
			return nil, errors.Join(fmt.Errorf("vm_isolation with the docker-autoscaler executor: VM image %q has no Docker Engine socket at %s: use an image with Docker Engine, or executor \"instance\"", image, path),
				release(context.WithoutCancel(ctx)))
		}
	}
	env, err := m.kind.New(ctx, executors.Target{Conn: conn, Slot: slot.Slot(), Runner: m.runner}, job)
	if err != nil {
		conn.Close()
		return nil, errors.Join(err, release(context.WithoutCancel(ctx)))
	}
	return &vmEnv{Env: env, release: func(ctx context.Context) error { conn.Close(); return release(ctx) }}, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// vmEnv is a job's environment in its own VM.
type vmEnv struct {
	executors.Env
	release func(ctx context.Context) error
}

// Release deletes the job's VM.
func (e *vmEnv) Release(ctx context.Context) error { return e.release(ctx) }

// cleanAdopted deletes every VM of the daemon on an instance adopted after a restart:
// they were the jobs of a runner that died, and nobody will delete them otherwise.
func (m *Pool) cleanAdopted(ctx context.Context, inst taskscaler.InstanceInfo) error {
	conn, err := m.conns.Client(ctx, inst.ConnectInfo)
	if err != nil {
		return fmt.Errorf("vm_isolation: dialing host: %w", err)
	}
	d, err := m.isolation.daemon(conn)
	if err != nil {
		return err
	}
	defer d.Close()
	vms, _, err := d.List(ctx)
	if err != nil {
		return fmt.Errorf("vm_isolation: list the VMs a previous run left: %w", err)
	}
	for _, vm := range vms {
		if err := d.Delete(ctx, vm.ID); err != nil && !errors.Is(err, nesting.ErrVMNotFound) {
			return fmt.Errorf("vm_isolation: delete VM %s a previous run left: %w", vm.ID, err)
		}
		m.log.Info("deleted a VM a previous run left", "instance", inst.ID, "vm", vm.ID)
	}
	return nil
}
