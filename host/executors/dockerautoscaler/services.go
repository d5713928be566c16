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

// startServices starts every service container, with the job's variables in its
// environment, as GitLab does, then waits for their ports (wait_for_services_timeout).
//
// Without network_mode the job gets a network of its own, on which each service is
// reachable by its aliases. With network_mode, that network wins, as in GitLab Runner:
// every container of the job joins it and no network of the job's own is made. On a
// user-defined network the services get their aliases there (so services reach each
// other) and the job's containers get links to them, which Docker resolves before
// network-wide aliases, so that jobs sharing the network each reach their own
// services; on "bridge" the job gets legacy links; on "host" the services listen on
// the instance's own network (localhost); on "none" they cannot be reached.
func (e *Env) startServices(ctx context.Context, log io.Writer) error {
	if len(e.job.Services) == 0 {
		return nil
	}
	for _, svc := range e.job.Services {
		allowed := e.opts.AllowedServices
		if err := imageAllowed(svc.Name, allowed); err != nil {
			return errors.Join(executors.ErrImagePull, fmt.Errorf("service %w (allowed_services)", err))
		}
		// A service's own pull_policy, like the job image's, within the runner's.
		policies, err := pullPolicies(e.opts.PullPolicy, svc.PullPolicy, e.opts.AllowedPullPolicies)
		if err != nil {
			return errors.Join(executors.ErrImagePull, fmt.Errorf("service %s: %w", svc.Name, err))
		}
		if err := e.ensureImage(ctx, svc.Name, policies, log); err != nil {
			return errors.Join(executors.ErrImagePull, fmt.Errorf("service %s: %w", svc.Name, err))
		}
	}
	name := e.volume // unique per job, like the volume
	if e.opts.NetworkMode == "" {
		if _, err := e.docker.NetworkCreate(ctx, name, client.NetworkCreateOptions{Labels: map[string]string{LabelJob: e.job.ID}}); err != nil {
			return fmt.Errorf("create the job's network: %w", err)
		}
		e.network, e.networkMode = name, name
	}
	mode := container.NetworkMode(e.networkMode)
	shared := e.opts.NetworkMode != "" && (mode.IsUserDefined() || mode.IsBridge() || mode.IsDefault())
	var env []string
	for _, v := range e.job.Variables.Expanded().Effective() {
		env = append(env, v.Key+"="+v.Value)
	}
	started := make([]startedService, 0, len(e.job.Services))
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
		var netCfg *network.NetworkingConfig
		if mode.IsUserDefined() {
			netCfg = &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{e.networkMode: {Aliases: aliases}}}
		}
		cname := fmt.Sprintf("%s-svc-%d", name, i)
		resp, err := e.docker.ContainerCreate(ctx, client.ContainerCreateOptions{Config: cfg, HostConfig: e.serviceHostConfig(),
			NetworkingConfig: netCfg, Name: cname})
		if err != nil {
			return fmt.Errorf("create service %s: %w", svc.Name, err)
		}
		e.mu.Lock()
		e.containers = append(e.containers, resp.ID)
		e.mu.Unlock()
		if _, err := e.docker.ContainerStart(ctx, resp.ID, client.ContainerStartOptions{}); err != nil {
			return fmt.Errorf("start service %s: %w", svc.Name, err)
		}
		if shared {
			for _, a := range aliases {
				if !strings.Contains(a, ":") { // a link is container:alias
					e.links = append(e.links, cname+":"+a)
				}
			}
		}
		started = append(started, startedService{id: resp.ID, image: svc.Name, aliases: aliases})
		fmt.Fprintf(log, "Started service %s as %s\n", svc.Name, strings.Join(aliases, ", "))
	}
	switch {
	case mode.IsHost():
		fmt.Fprintln(log, `Services share the instance's network (network_mode "host"): reach them at localhost`)
	case mode.IsNone() || mode.IsContainer():
		fmt.Fprintf(log, "WARNING: the job cannot reach its services with network_mode %q\n", e.networkMode)
	}
	return e.waitForServices(ctx, started, log)
}
