// Package dockerautoscaler is the `docker-autoscaler` executor: the job runs in
// containers of the job's image on the instance's Docker Engine, which the host reaches
// through the instance's SSH connection (unix-socket forwarding, with a `docker system
// dial-stdio` fallback). The client's host is `internal.tunnel.invalid`, as GitLab's,
// so error messages read the same.
//
// Each script step (script, after_script) runs in a fresh container of the job's image,
// with the script on stdin; steps share the job's builds volume, into which the source
// is copied. Containers and the volume are removed afterwards, also when the job is
// cancelled.
package dockerautoscaler

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/gitsource"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// TunnelHost is the Docker client's host for connections made through the tunnel.
const TunnelHost = "tcp://internal.tunnel.invalid"

// DefaultSocket is the Docker socket on the instance when [runners.docker] host is unset.
const DefaultSocket = "/var/run/docker.sock"

// LabelJob marks every container and volume the executor creates, so that leftovers can
// be found and removed.
const LabelJob = "dev.flotilla.job"

// Tunnel reaches a unix socket on the instance.
type Tunnel interface {
	DialUnix(ctx context.Context, path, fallback string) (net.Conn, error)
}

// Options are the [runners.docker] settings that apply to a job.
type Options struct {
	// Image is used when the job names none.
	Image string
	// Host is the Docker daemon on the instance ("unix:///path"); default DefaultSocket.
	Host                string
	Volumes             []string
	Privileged          bool
	PullPolicy          []string
	AllowedImages       []string
	AllowedPullPolicies []string
	// AllowedServices limits service images like AllowedImages limits job images.
	AllowedServices []string
	// DebugTraceDisabled ignores CI_DEBUG_TRACE (config.toml debug_trace_disabled).
	DebugTraceDisabled bool
	// PreGetSourcesScript and PostGetSourcesScript are config.toml's shell text run
	// for a Git source in a container of the job's image on the builds volume, before
	// and after the sources are put in place (Git itself runs on the runner host).
	PreGetSourcesScript  string
	PostGetSourcesScript string

	// Container and Service are the rest of [runners.docker]: how the job's and the
	// services' containers are made (capabilities, devices, DNS, limits, …).
	Container ContainerOptions
	Service   ServiceOptions
	// NetworkMode puts every container of the job, services included, on this network
	// (a network name, "bridge", "host" or "none") instead of the job's own network;
	// see services.go for how the job then reaches its services.
	NetworkMode string
	// User runs the job's containers as this user (name or uid[:gid]) instead of the
	// image's; a User outside a non-empty AllowedUsers is refused.
	User         string
	AllowedUsers []string
	// WaitForServices is how long the job waits, before its first script container,
	// for each service's exposed TCP ports to accept connections; 0 does not wait.
	WaitForServices time.Duration
	// Dial reaches an address as the instance sees it (the SSH connection's TCP
	// forwarding): how the executor checks the services' ports. Nil does not wait.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// LoadImages are `docker save` archives on the runner host (relative paths from
	// the runner's working directory) loaded into the instance's Docker Engine before
	// the job's image is looked for ([runners.docker] load_images, `runner exec
	// --load-image`): images for instances without registry access. An image they
	// hold is not pulled, whatever the pull policy.
	LoadImages []string
	// RegistryMirrors are [runners.docker] registry_mirrors: Docker Hub images are
	// pulled from the first of them that has the image, then from Docker Hub.
	RegistryMirrors []string
}

// NewClient returns a Docker API client whose every connection goes through tunnel to
// the daemon's socket on the instance.
func NewClient(tunnel Tunnel, host string) (*client.Client, error) {
	socket, err := socketPath(host)
	if err != nil {
		return nil, err
	}
	fallback := connector.DockerDialStdio
	if host != "" {
		fallback = "docker -H " + host + " system dial-stdio"
	}
	// The client negotiates the API version with the daemon on its first request.
	return client.New(
		client.WithHost(TunnelHost),
		client.WithDialContext(func(ctx context.Context, _, _ string) (net.Conn, error) {
			return tunnel.DialUnix(ctx, socket, fallback)
		}),
	)
}

// socketPath is the Docker daemon's socket on the instance that host names
// ([runners.docker] host; "" is DefaultSocket).
func socketPath(host string) (string, error) {
	if host == "" {
		return DefaultSocket, nil
	}
	rest, ok := strings.CutPrefix(host, "unix://")
	if !ok {
		return "", fmt.Errorf("[runners.docker] host %q: only unix:// sockets on the instance are supported", host)
	}
	return rest, nil
}

// Env runs one job in containers on one instance. It implements executors.Env.
type Env struct {
	docker *client.Client
	job    *jobs.Job
	opts   Options
	image  string
	volume string
	paths  executors.Paths
	// network is the job's own bridge network when it has services and no
	// network_mode ("" otherwise): the job's containers reach each service there by
	// its aliases.
	network string
	// networkMode is the network of every container of the job: network_mode, else
	// network ("" is Docker's default bridge).
	networkMode string
	// links are "container:alias" links from the job's containers to the services,
	// on a network_mode shared with others (see services.go).
	links []string

	// loaded are the image names the LoadImages archives held, to the archive.
	loaded map[string]string
	// auth is the job's registry credentials, resolved per registry (pull.go).
	auth registryAuth

	mu         sync.Mutex
	containers []string
}

// New prepares nothing yet; it checks the configuration against the job.
func New(docker *client.Client, job *jobs.Job, opts Options) (*Env, error) {
	img := job.Image.Name
	if img == "" {
		img = opts.Image
	}
	// No image is refused by Prepare, as an image failure: a configuration problem
	// that retrying on a new instance cannot mend (a New error is a system failure).
	project := "project"
	if job.Source.Dir != "" {
		project = path.Base(strings.TrimRight(job.Source.Dir, "/"))
	}
	return &Env{docker: docker, job: job, opts: opts, image: img, networkMode: opts.NetworkMode,
		volume: "flotilla-job-" + sanitize(job.ID) + "-" + strings.ToLower(rand.Text()[:8]),
		paths:  executors.Paths{BuildsDir: "/builds", ProjectDir: "/builds/" + project, TmpDir: "/builds/" + project + ".tmp"}}, nil
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, s)
}

// Prepare checks the daemon, the image (allow-list and pull policy), creates the builds
// volume and copies the source into it.
func (e *Env) Prepare(ctx context.Context, log io.Writer) error {
	if e.image == "" {
		return errors.Join(executors.ErrImagePull, ErrNoImage)
	}
	if _, err := e.docker.Ping(ctx, client.PingOptions{}); err != nil {
		return fmt.Errorf("reach Docker on the instance: %w", err)
	}
	if err := e.loadImages(ctx, log); err != nil {
		return errors.Join(executors.ErrImagePull, err)
	}
	if err := imageAllowed(e.image, e.opts.AllowedImages); err != nil {
		return errors.Join(executors.ErrImagePull, err)
	}
	if err := e.userAllowed(); err != nil {
		return errors.Join(executors.ErrRefused, err)
	}
	policies, err := pullPolicies(e.opts.PullPolicy, e.job.Image.PullPolicy, e.opts.AllowedPullPolicies)
	if err != nil {
		return errors.Join(executors.ErrImagePull, err)
	}
	if err := e.ensureImage(ctx, e.image, policies, log); err != nil {
		return errors.Join(executors.ErrImagePull, err)
	}
	if e.debugTrace() {
		fmt.Fprintln(log, gitsource.DebugTraceWarning)
	}
	if err := e.startServices(ctx, log); err != nil {
		return err
	}
	if _, err := e.docker.VolumeCreate(ctx, client.VolumeCreateOptions{Name: e.volume, Labels: map[string]string{LabelJob: e.job.ID}}); err != nil {
		return fmt.Errorf("create builds volume: %w", err)
	}
	fmt.Fprintf(log, "Using image %s with builds volume %s\n", e.image, e.volume)
	// A container that is never started gives CopyToContainer a way into the volume.
	id, err := e.create(ctx, []string{"true"})
	if err != nil {
		return err
	}
	srcDir := ""
	gitSource := e.job.Source.Kind == jobs.SourceGit
	switch e.job.Source.Kind {
	case jobs.SourceLocal:
		plan, err := gitsource.PlanFor(e.job)
		if err != nil {
			return executors.SourcesError(err)
		}
		// The builds volume is the job's own: none and empty both start empty.
		if plan.Strategy == gitsource.StrategyNone || plan.Strategy == gitsource.StrategyEmpty {
			fmt.Fprintf(log, "Skipping the copy of the working tree (GIT_STRATEGY=%s): the project directory starts empty\n", plan.Strategy)
		} else {
			srcDir = e.job.Source.Dir
		}
	case jobs.SourceGit:
		// sourcesOnHost validates the Git variables before any script runs.
		if _, err := gitsource.PlanFor(e.job); err != nil {
			return executors.SourcesError(err)
		}
		if err := e.getSourcesScript(ctx, "pre_get_sources_script", e.opts.PreGetSourcesScript, log); err != nil {
			return err
		}
		dir, cleanup, err := sourcesOnHost(ctx, e.job, log)
		if err != nil {
			return err
		}
		defer cleanup()
		srcDir = dir
	}
	if err := e.copyToBuilds(ctx, id, func(w io.Writer) error {
		if srcDir != "" {
			return executors.TarDir(w, srcDir, path.Base(e.paths.ProjectDir))
		}
		return emptyDirTar(w, path.Base(e.paths.ProjectDir))
	}); err != nil {
		return fmt.Errorf("copy the source into the builds volume: %w", err)
	}
	// A job that runs as another user owns its temporary directory too (file
	// variables): the builds volume's root is not its.
	if e.user() != "" {
		if err := e.copyToBuilds(ctx, id, func(w io.Writer) error { return emptyDirTar(w, path.Base(e.paths.TmpDir)) }); err != nil {
			return fmt.Errorf("create the job's temporary directory: %w", err)
		}
	}
	if gitSource {
		return e.getSourcesScript(ctx, "post_get_sources_script", e.opts.PostGetSourcesScript, log)
	}
	return nil
}

// copyToBuilds copies the tar stream that write makes into the builds volume, through
// the stopped container id. With [runners.docker] user, that user owns what is copied,
// as it would own a clone of its own: a numeric uid[:gid] is written into the tar
// headers; Docker resolves a name in the image's passwd file (CopyUIDGID).
func (e *Env) copyToBuilds(ctx context.Context, id string, write func(io.Writer) error) error {
	uid, gid, numeric := numericUser(e.user())
	pr, pw := io.Pipe()
	go func() {
		if !numeric {
			pw.CloseWithError(write(pw))
			return
		}
		tr, tw := io.Pipe()
		go func() { tw.CloseWithError(write(tw)) }()
		err := chownTar(pw, tr, uid, gid)
		if err == nil {
			_, err = io.Copy(io.Discard, tr) // the writer's padding after the end marker
		}
		tr.CloseWithError(err)
		pw.CloseWithError(err)
	}()
	defer pr.Close()
	_, err := e.docker.CopyToContainer(ctx, id, client.CopyToContainerOptions{DestinationPath: e.paths.BuildsDir, Content: pr,
		CopyUIDGID: e.user() != "" && !numeric})
	return err
}

// getSourcesScript runs config.toml's pre_get_sources_script or
// post_get_sources_script (name) in a container of the job's image on the builds
// volume, in the project directory, with the job's shell and variables as its script
// gets them. A failing script fails the job (script_failure), as in GitLab.
func (e *Env) getSourcesScript(ctx context.Context, name, text string, log io.Writer) error {
	if text == "" {
		return nil
	}
	fmt.Fprintf(log, "Running %s\n", name)
	vars := append(executors.PredefinedVariables(e.job, e.paths, executors.RunOptions{Executor: "docker-autoscaler"}, e.job.Timeout),
		e.job.Variables...).Expanded()
	// Docker creates the container's working directory, the project directory, on
	// the volume if it is not there yet (before the sources).
	s := executors.Script{Dir: e.paths.ProjectDir, FileVarDir: e.paths.TmpDir, Variables: vars, Commands: []string{text}}
	code, err := e.Exec(ctx, s, log)
	switch {
	case err != nil:
		return fmt.Errorf("%s: %w", name, err)
	case code != 0:
		return executors.SourcesError(fmt.Errorf("%s failed with exit code %d", name, code))
	}
	return nil
}

func (e *Env) ensureImage(ctx context.Context, img string, policies []string, log io.Writer) error {
	var errs []error
	if from, ok := e.loaded[img]; ok {
		fmt.Fprintf(log, "Using image %s loaded from %s (not pulled)\n", img, from)
		return nil
	}
	for _, p := range policies {
		if p != PullAlways {
			if _, err := e.docker.ImageInspect(ctx, img); err == nil {
				fmt.Fprintf(log, "Using locally present image %s (pull_policy %s)\n", img, p)
				return nil
			}
			if p == PullNever {
				errs = append(errs, fmt.Errorf("image %s is not present on the instance and pull_policy is never", img))
				continue
			}
		}
		err := e.pull(ctx, img, log)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("pull %s (pull_policy %s): %w", img, p, err))
	}
	return errors.Join(errs...)
}

func (e *Env) create(ctx context.Context, cmd []string) (string, error) {
	cfg := &container.Config{
		Image: e.image, Cmd: cmd, WorkingDir: e.paths.ProjectDir,
		OpenStdin: true, StdinOnce: true, AttachStdin: true, AttachStdout: true, AttachStderr: true,
		Labels: map[string]string{LabelJob: e.job.ID}, User: e.user(), Hostname: e.opts.Container.Hostname,
	}
	if e.job.Image.Entrypoint != nil {
		cfg.Entrypoint = e.job.Image.Entrypoint
	}
	resp, err := e.docker.ContainerCreate(ctx, client.ContainerCreateOptions{Config: cfg, HostConfig: e.jobHostConfig(),
		NetworkingConfig: e.jobNetworking()})
	if err != nil {
		return "", fmt.Errorf("create container from %s: %w", e.image, err)
	}
	e.mu.Lock()
	e.containers = append(e.containers, resp.ID)
	e.mu.Unlock()
	return resp.ID, nil
}

// Exec runs the script in a new container of the job's image, the script on stdin.
func (e *Env) Exec(ctx context.Context, s executors.Script, out io.Writer) (int, error) {
	s.Shell = executors.ShellSh
	text := s.String()
	if e.debugTrace() {
		text = "set -x\n" + text
	}
	return e.runContainer(ctx, []string{"sh", "-s"}, strings.NewReader(text), out, out)
}

func (e *Env) debugTrace() bool { return !e.opts.DebugTraceDisabled && gitsource.DebugTrace(e.job) }

// runContainer runs cmd in a new container of the job's image with stdin, and returns
// its exit code.
func (e *Env) runContainer(ctx context.Context, cmd []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	id, err := e.create(ctx, cmd)
	if err != nil {
		return -1, err
	}
	att, err := e.docker.ContainerAttach(ctx, id, client.ContainerAttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		return -1, fmt.Errorf("attach to container: %w", err)
	}
	defer att.Close()
	wait := e.docker.ContainerWait(ctx, id, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := e.docker.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		return -1, fmt.Errorf("start container: %w", err)
	}
	copied := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(stdout, stderr, att.Reader)
		copied <- err
	}()
	if stdin != nil {
		if _, err := io.Copy(att.Conn, stdin); err != nil {
			return -1, fmt.Errorf("send input to container: %w", err)
		}
	}
	if err := att.CloseWrite(); err != nil {
		return -1, fmt.Errorf("close container input: %w", err)
	}
	select {
	case w := <-wait.Result:
		<-copied // the output ends when the container does
		if w.Error != nil {
			return -1, fmt.Errorf("wait for container: %s", w.Error.Message)
		}
		return int(w.StatusCode), nil
	case err := <-wait.Error:
		return -1, fmt.Errorf("wait for container: %w", err)
	case <-ctx.Done():
		return -1, context.Cause(ctx)
	}
}

// Pack writes a gzip tar of spec's files in the project directory to archive, from a
// container of the job's image (which needs sh, tar and gzip).
func (e *Env) Pack(ctx context.Context, spec executors.PackSpec, archive, messages io.Writer) error {
	script, err := executors.PackScript(e.paths.ProjectDir, spec)
	if err != nil {
		return err
	}
	if code, err := e.runContainer(ctx, []string{"sh", "-c", script}, nil, archive, messages); err != nil || code != 0 {
		return fmt.Errorf("pack %s (exit %d): %v", strings.Join(spec.Paths, " "), code, err)
	}
	return nil
}

// Unpack extracts a gzip tar into the project directory, in a container of the job's
// image.
func (e *Env) Unpack(ctx context.Context, r io.Reader) error {
	var stderr strings.Builder
	if code, err := e.runContainer(ctx, []string{"sh", "-c", executors.UnpackScript(e.paths.ProjectDir)}, r, io.Discard, &stderr); err != nil || code != 0 {
		return fmt.Errorf("unpack (exit %d): %v %s", code, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Cleanup removes every container of the job and its builds volume.
func (e *Env) Cleanup(ctx context.Context) error {
	e.mu.Lock()
	ids := e.containers
	e.containers = nil
	e.mu.Unlock()
	var errs []error
	for _, id := range ids {
		if _, err := e.docker.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("remove container %s: %w", id[:12], err))
		}
	}
	if _, err := e.docker.VolumeRemove(ctx, e.volume, client.VolumeRemoveOptions{Force: true}); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("remove volume %s: %w", e.volume, err))
	}
	if e.network != "" {
		if _, err := e.docker.NetworkRemove(ctx, e.network, client.NetworkRemoveOptions{}); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("remove network %s: %w", e.network, err))
		}
	}
	return errors.Join(errs...)
}

func isNotFound(err error) bool {
	var se interface{ StatusCode() int }
	if errors.As(err, &se) {
		return se.StatusCode() == http.StatusNotFound
	}
	return strings.Contains(err.Error(), "No such")
}

// Paths returns the job's directories inside its containers.
func (e *Env) Paths() executors.Paths { return e.paths }
