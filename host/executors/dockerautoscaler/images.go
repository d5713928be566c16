package dockerautoscaler

import (
	"fmt"
	"slices"

	"github.com/flotilla-ci/flotilla/host/executors"
)

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

// pullPolicies returns the policies to apply, checked against allowed_pull_policies.
func pullPolicies(configured, allowed []string) ([]string, error) {
	policies := configured
	if len(policies) == 0 {
		policies = []string{PullAlways}
	}
	for _, p := range policies {
		switch p {
		case PullAlways, PullIfNotPresent, PullNever:
		default:
			return nil, fmt.Errorf("pull_policy %q is not one of always, if-not-present, never", p)
		}
		if len(allowed) > 0 && !slices.Contains(allowed, p) {
			return nil, fmt.Errorf("pull_policy %q is not in [runners.docker] allowed_pull_policies %q", p, allowed)
		}
	}
	return policies, nil
}
