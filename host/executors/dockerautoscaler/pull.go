package dockerautoscaler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/moby/client"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors/dockerauth"
)

// registryAuth is a job's registry credentials, looked up once per registry: the
// sources are read at the job's first pull, so a changed Docker config or
// DOCKER_AUTH_CONFIG applies from the next job on.
type registryAuth struct {
	loaded  bool
	sources []dockerauth.Source
	byHost  map[string]*dockerauth.Credentials
}

// credentials returns the credentials for a registry host, or nil; what was passed
// over on the way (a source that is not a Docker config, a failing helper) goes to the
// job log, never a secret.
func (e *Env) credentials(ctx context.Context, host string, log io.Writer) *dockerauth.Credentials {
	a := &e.auth
	if !a.loaded {
		jobValue, _ := e.job.Variables.Expanded().Get(dockerauth.Variable)
		sources, err := dockerauth.Sources(jobValue, os.Getenv(dockerauth.Variable), dockerauth.ConfigPath())
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				fmt.Fprintf(log, "Warning: %s; its credentials are not used\n", line)
			}
		}
		a.loaded, a.sources, a.byHost = true, sources, map[string]*dockerauth.Credentials{}
	}
	if c, ok := a.byHost[host]; ok {
		return c
	}
	c, notes := dockerauth.Resolve(ctx, a.sources, host)
	for _, n := range notes {
		fmt.Fprintf(log, "Warning: %s\n", n)
	}
	a.byHost[host] = c
	return c
}

// pull pulls img on the instance. A Docker Hub image is tried from each of
// [runners.docker] registry_mirrors first, as <mirror>/<repository>:<tag> tagged
// with img's name afterwards, then from Docker Hub. Every registry gets its own
// credentials.
func (e *Env) pull(ctx context.Context, img string, log io.Writer) error {
	ref, err := reference.ParseNormalizedNamed(img)
	if err != nil {
		return fmt.Errorf("image name %q: %w", img, err)
	}
	host := dockerauth.NormalizeHost(reference.Domain(ref))
	var errs []error
	if host == dockerauth.DockerHub && len(e.opts.RegistryMirrors) > 0 {
		if _, digested := ref.(reference.Digested); digested {
			// Docker cannot give a pulled image a name@digest of another registry, so a
			// container of img could not find what the mirror served.
			fmt.Fprintf(log, "Not using registry mirrors for %s: an image pinned by digest is pulled from Docker Hub itself\n", img)
		} else {
			for _, m := range e.opts.RegistryMirrors {
				mirror, err := e.pullFromMirror(ctx, img, ref, m, log)
				if err == nil {
					fmt.Fprintf(log, "Pulled %s from registry mirror %s\n", img, mirror)
					return nil
				}
				fmt.Fprintf(log, "Registry mirror %s did not serve %s: %v\n", mirror, img, err)
				errs = append(errs, fmt.Errorf("registry mirror %s: %w", mirror, err))
			}
			fmt.Fprintf(log, "Pulling %s from Docker Hub after its mirrors\n", img)
		}
	}
	fmt.Fprintf(log, "Pulling image %s ...\n", img)
	if err := e.pullFrom(ctx, img, host, log); err != nil {
		if len(errs) == 0 {
			return err
		}
		return errors.Join(append(errs, fmt.Errorf("Docker Hub: %w", err))...)
	}
	return nil
}

// pullFromMirror pulls img, whose reference is ref (a Docker Hub image), from mirror as
// <mirror host>/<repository>:<tag> and gives it ref's own name, and returns the
// mirror's host.
func (e *Env) pullFromMirror(ctx context.Context, img string, ref reference.Named, mirror string, log io.Writer) (string, error) {
	host, err := config.RegistryMirrorHost(mirror)
	if err != nil {
		return mirror, fmt.Errorf("[runners.docker] registry_mirrors: %w", err)
	}
	tagged := reference.TagNameOnly(ref).(reference.Tagged)
	name, err := reference.WithName(host + "/" + reference.Path(ref))
	if err != nil {
		return host, fmt.Errorf("name %s on the mirror: %w", ref, err)
	}
	onMirror, err := reference.WithTag(name, tagged.Tag())
	if err != nil {
		return host, fmt.Errorf("name %s on the mirror: %w", ref, err)
	}
	fmt.Fprintf(log, "Pulling image %s from registry mirror %s (as %s) ...\n", img, host, onMirror)
	if err := e.pullFrom(ctx, onMirror.String(), host, log); err != nil {
		return host, err
	}
	target := reference.FamiliarString(tagged)
	if _, err := e.docker.ImageTag(ctx, client.ImageTagOptions{Source: onMirror.String(), Target: target}); err != nil {
		return host, fmt.Errorf("tag %s as %s: %w", onMirror, target, err)
	}
	// The mirror's name is only the way in; without it the instance's image list shows
	// the image as the job named it. Removing a second name only untags, and a failure
	// leaves an extra name behind, nothing worse.
	_, _ = e.docker.ImageRemove(ctx, onMirror.String(), client.ImageRemoveOptions{})
	return host, nil
}

// pullFrom pulls ref from the registry host with the credentials resolved for it,
// and waits for the pull to finish (errors reported in the progress stream included).
func (e *Env) pullFrom(ctx context.Context, ref, host string, log io.Writer) error {
	var opts client.ImagePullOptions
	creds := e.credentials(ctx, host, log)
	if creds != nil {
		fmt.Fprintf(log, "Authenticating with credentials from %s for %s\n", creds.From, host)
		h, err := creds.Header()
		if err != nil {
			return err
		}
		opts.RegistryAuth = h
	}
	resp, err := e.docker.ImagePull(ctx, ref, opts)
	if err == nil {
		err = resp.Wait(ctx)
		resp.Close()
	}
	if err != nil && creds != nil {
		return fmt.Errorf("%w (with the credentials for %s from %s)", err, host, creds.From)
	}
	return err
}
