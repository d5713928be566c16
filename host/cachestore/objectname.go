package cachestore

import (
	"fmt"
	"path"
	"strconv"
	"strings"
	"unicode"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
)

// ObjectName is where the cache archive of key lives in the store, in GitLab Runner's
// layout, so that a team that switches runners finds its caches:
// <Path>/runner/<short token>/project/<projectID>/<key>, without runner/<short token>
// when [runners.cache] Shared is set. key is the job's cache key (GitLab appends the
// archive's suffix to it); it is sanitised as GitLab does, and a key that sanitises to
// nothing, or that would name an object outside the project's prefix, is an error.
// Path is joined as GitLab joins it: a leading slash stays (and is part of the name).
func ObjectName(c *config.Cache, runnerToken string, projectID int64, key string) (string, error) {
	clean, err := sanitizeKey(key)
	if err != nil {
		return "", err
	}
	var prefix, namespace string
	if c != nil {
		prefix = c.Path
	}
	if c == nil || !c.Shared {
		if runnerToken == "" {
			return "", fmt.Errorf("cache object for key %q: no runner token to name the runner's caches by", key)
		}
		namespace = path.Join("runner", gitlab.ShortToken(runnerToken))
	}
	base := path.Join(prefix, namespace, "project", strconv.FormatInt(projectID, 10))
	full := path.Join(base, clean)
	// sanitizeKey keeps the key inside its virtual root, but trimming whitespace can
	// still leave a final ".." ("a/.. " → "a/.."): the joined name must stay below base.
	if !strings.HasPrefix(full, base+"/") {
		return "", fmt.Errorf("cache key %q names an object outside the project's caches: remove ../ from the key", key)
	}
	return full, nil
}

// keyNormaliser decodes the encoded slashes and dots GitLab decodes and turns
// backslashes into slashes, in one pass (so "%252f" stays as it is, as in GitLab).
var keyNormaliser = strings.NewReplacer("%2f", "/", "%2F", "/", "%2e", ".", "%2E", ".", `\`, "/")

// sanitizeKey normalises a cache key the way GitLab Runner does, so both name the same
// object: encoded separators decoded, "." and ".." resolved against a virtual root (a
// key cannot climb out of it), trailing whitespace trimmed from the last segments and
// the segments left empty dropped.
func sanitizeKey(key string) (string, error) {
	if key == "" {
		return "", fmt.Errorf("cache key is empty")
	}
	cleaned := path.Clean("/" + keyNormaliser.Replace(key))
	parts := strings.Split(cleaned[1:], "/")
	n := len(parts)
	for n > 0 {
		parts[n-1] = strings.TrimRightFunc(parts[n-1], unicode.IsSpace)
		if parts[n-1] != "" {
			break
		}
		n--
	}
	if n == 0 {
		return "", fmt.Errorf("cache key %q is empty once sanitised (only separators, dots or whitespace): use a key with a name in it", key)
	}
	return strings.Join(parts[:n], "/"), nil
}
