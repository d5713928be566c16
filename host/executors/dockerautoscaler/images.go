package dockerautoscaler

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Pull policies of [runners.docker] pull_policy.
const (
	PullAlways       = "always"
	PullIfNotPresent = "if-not-present"
	PullNever        = "never"
)

// globRegexp turns an allowed_images pattern into a regexp: `**` matches across `/`,
// `*` and `?` within one path segment, as GitLab's doublestar patterns do.
func globRegexp(pattern string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; c {
		case '*':
			if i+1 < len(pattern) && pattern[i+1] == '*' {
				b.WriteString(".*")
				i++
			} else {
				b.WriteString("[^/]*")
			}
		case '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// imageAllowed checks image against allowed_images; an empty list allows everything.
// Docker Hub short names also match their docker.io/library/ forms.
func imageAllowed(image string, allowed []string) error {
	if len(allowed) == 0 {
		return nil
	}
	candidates := []string{image}
	if !strings.Contains(strings.SplitN(image, "/", 2)[0], ".") {
		if strings.Contains(image, "/") {
			candidates = append(candidates, "docker.io/"+image)
		} else {
			candidates = append(candidates, "library/"+image, "docker.io/library/"+image)
		}
	}
	for _, p := range allowed {
		re, err := globRegexp(p)
		if err != nil {
			return fmt.Errorf("allowed_images pattern %q: %w", p, err)
		}
		if slices.ContainsFunc(candidates, re.MatchString) {
			return nil
		}
	}
	return fmt.Errorf("image %q is not allowed: it matches none of [runners.docker] allowed_images %q", image, allowed)
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
