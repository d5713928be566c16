package executors

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
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

// ImageAllowed checks a job's image against allowed_images of table (such as
// "[runners.docker]"); an empty list allows everything. Docker Hub short names also
// match their docker.io/library/ forms.
func ImageAllowed(image string, allowed []string, table string) error {
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
	return fmt.Errorf("image %q is not allowed: it matches none of %s allowed_images %q", image, table, allowed)
}
