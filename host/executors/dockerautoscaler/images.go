package dockerautoscaler

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/moby/moby/client"

	"github.com/flotilla-ci/flotilla/host/executors"
)

// ErrNoImage is the error of a job that names no image on a runner without a default.
var ErrNoImage = errors.New("the job names no image and [runners.docker] image is not set: " +
	"add image: to the job, set image in [runners.docker] of config.toml, or pass `runner exec --image IMAGE`")

// Pull policies of [runners.docker] pull_policy.
const (
	PullAlways       = "always"
	PullIfNotPresent = "if-not-present"
	PullNever        = "never"
)

// imageAllowed checks image against [runners.docker] allowed_images.
func imageAllowed(image string, allowed []string) error {
	return executors.ImageAllowed(image, allowed, "[runners.docker]")
}

// pullPolicies returns the policies to apply to an image: the job's own (image: or
// services: pull_policy) when it has some, else the runner's (always when unset). As in
// GitLab Runner, a job's policy must be in allowed_pull_policies, or, when that is
// unset, in the runner's pull_policy.
func pullPolicies(configured, job, allowed []string) ([]string, error) {
	policies := configured
	if len(policies) == 0 {
		policies = []string{PullAlways}
	}
	for _, p := range policies {
		if err := knownPullPolicy(p); err != nil {
			return nil, err
		}
		if len(allowed) > 0 && !slices.Contains(allowed, p) {
			return nil, fmt.Errorf("pull_policy %q is not in [runners.docker] allowed_pull_policies %q", p, allowed)
		}
	}
	if len(job) == 0 {
		return policies, nil
	}
	allowedForJob, which := allowed, "allowed_pull_policies"
	if len(allowedForJob) == 0 {
		allowedForJob, which = policies, "pull_policy (allowed_pull_policies is unset)"
	}
	for _, p := range job {
		if err := knownPullPolicy(p); err != nil {
			return nil, fmt.Errorf("the job's image: %w", err)
		}
		if !slices.Contains(allowedForJob, p) {
			return nil, fmt.Errorf("the job's image pull_policy %q is not allowed by the runner's [runners.docker] %s %q", p, which, allowedForJob)
		}
	}
	return job, nil
}

func knownPullPolicy(p string) error {
	switch p {
	case PullAlways, PullIfNotPresent, PullNever:
		return nil
	}
	return fmt.Errorf("pull_policy %q is not one of always, if-not-present, never", p)
}

// loadImages loads each LoadImages archive into the instance's Docker Engine through
// the executor's connection (the local plugin's instance is this machine; a cloud
// instance is reached over SSH) and records the image names each held.
func (e *Env) loadImages(ctx context.Context, log io.Writer) error {
	for _, path := range e.opts.LoadImages {
		names, err := LoadImage(ctx, e.docker, path)
		if err != nil {
			return err
		}
		if e.loaded == nil {
			e.loaded = map[string]string{}
		}
		for _, n := range names {
			e.loaded[n] = path
		}
		fmt.Fprintf(log, "Loaded %s from %s\n", strings.Join(names, ", "), path)
	}
	return nil
}

// LoadImage loads the `docker save` archive at path into the Docker Engine of docker
// and returns the image names it held ("busybox:1.37", or the image ID for an
// untagged image).
func LoadImage(ctx context.Context, docker *client.Client, path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load image archive: %w", err)
	}
	defer f.Close()
	res, err := docker.ImageLoad(ctx, f, client.ImageLoadWithQuiet(true))
	if err != nil {
		return nil, fmt.Errorf("load image archive %s into the instance's Docker: %w", path, err)
	}
	defer res.Close()
	var names []string
	sc := bufio.NewScanner(res)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var msg struct {
			Stream      string `json:"stream"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if json.Unmarshal(sc.Bytes(), &msg) != nil {
			continue
		}
		if msg.ErrorDetail != nil {
			return nil, fmt.Errorf("load image archive %s: %s", path, msg.ErrorDetail.Message)
		}
		for _, prefix := range []string{"Loaded image: ", "Loaded image ID: "} {
			if n, ok := strings.CutPrefix(strings.TrimSpace(msg.Stream), prefix); ok {
				names = append(names, n)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("load image archive %s: %w", path, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("load image archive %s: Docker reported no image; make it with `docker save IMAGE -o FILE.tar`", path)
	}
	return names, nil
}
