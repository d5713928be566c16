package dockerautoscaler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// serviceAliases are the host names a job reaches a service by, as GitLab derives them:
// the image name without tag or digest with "/" turned into "__" and into "-" (so
// "postgres:15" is "postgres" and "team/db:1" is "team__db" and "team-db"), plus the
// aliases given (separated by commas or spaces).
func serviceAliases(svc jobs.Image) []string {
	name := svc.Name
	if i := strings.Index(name, "@"); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	var out []string
	add := func(a string) {
		if a != "" && !strings.ContainsAny(a, " ,") && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	add(strings.ReplaceAll(name, "/", "__"))
	add(strings.ReplaceAll(name, "/", "-"))
	for _, a := range strings.FieldsFunc(svc.Alias, func(r rune) bool { return r == ',' || r == ' ' }) {
		add(a)
	}
	return out
}

var invalidHostChars = regexp.MustCompile(`[^a-zA-Z0-9_.-]`)

// startServices creates the job's network and starts every service container on it,
// with the job's variables in its environment, as GitLab does. The job's own containers
// join the network, so a service is reachable by its aliases.
func (e *Env) startServices(ctx context.Context, policies []string, log io.Writer) error {
	if len(e.job.Services) == 0 {
		return nil
	}
	for _, svc := range e.job.Services {
		allowed := e.opts.AllowedServices
		if err := imageAllowed(svc.Name, allowed); err != nil {
			return errors.Join(executors.ErrImagePull, fmt.Errorf("service %w (allowed_services)", err))
		}
		if err := e.ensureImage(ctx, svc.Name, policies, log); err != nil {
			return errors.Join(executors.ErrImagePull, fmt.Errorf("service %s: %w", svc.Name, err))
		}
	}
	name := e.volume // unique per job, like the volume
	if _, err := e.docker.NetworkCreate(ctx, name, client.NetworkCreateOptions{Labels: map[string]string{LabelJob: e.job.ID}}); err != nil {
		return fmt.Errorf("create the job's network: %w", err)
	}
	e.network = name
	var env []string
	for _, v := range e.job.Variables.Expanded().Effective() {
		env = append(env, v.Key+"="+v.Value)
	}
	for i, svc := range e.job.Services {
		aliases := serviceAliases(svc)
		cfg := &container.Config{Image: svc.Name, Env: env, Labels: map[string]string{LabelJob: e.job.ID},
			Hostname: invalidHostChars.ReplaceAllString(aliases[0], "-")}
		if svc.Entrypoint != nil {
			cfg.Entrypoint = svc.Entrypoint
		}
		if svc.Command != nil {
			cfg.Cmd = svc.Command
		}
		host := &container.HostConfig{NetworkMode: container.NetworkMode(name), Privileged: e.opts.Privileged}
		netCfg := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{name: {Aliases: aliases}}}
		resp, err := e.docker.ContainerCreate(ctx, client.ContainerCreateOptions{Config: cfg, HostConfig: host,
			NetworkingConfig: netCfg, Name: fmt.Sprintf("%s-svc-%d", name, i)})
		if err != nil {
			return fmt.Errorf("create service %s: %w", svc.Name, err)
		}
		e.mu.Lock()
		e.containers = append(e.containers, resp.ID)
		e.mu.Unlock()
		if _, err := e.docker.ContainerStart(ctx, resp.ID, client.ContainerStartOptions{}); err != nil {
			return fmt.Errorf("start service %s: %w", svc.Name, err)
		}
		fmt.Fprintf(log, "Started service %s as %s\n", svc.Name, strings.Join(aliases, ", "))
	}
	return nil
}
