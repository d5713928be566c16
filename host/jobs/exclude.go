package jobs

import (
	"fmt"
	"strings"

	"github.com/bmatcuk/doublestar/v4"
)

// MatchExclude reports whether name, a slash-separated path relative to the project
// directory, matches pattern as GitLab Runner matches artifacts:exclude: with the
// doublestar library it uses ("**" as a whole path element matches any number of
// elements, none included; "*", "?" and "[…]" match within one element; "{a,b}" is
// either). Exclude patterns are not recursive: "out/tmp" leaves out the directory
// entry only, and "out/tmp/**" everything under it, as GitLab documents. A leading
// "./" and a trailing "/" are ignored. A malformed pattern matches nothing
// (ValidExclude reports it).
func MatchExclude(pattern, name string) bool {
	ok, err := doublestar.Match(cleanPattern(pattern), strings.Trim(strings.TrimPrefix(name, "./"), "/"))
	return ok && err == nil
}

// ValidExclude reports a pattern MatchExclude cannot use.
func ValidExclude(pattern string) error {
	if strings.TrimSpace(pattern) == "" {
		return fmt.Errorf("empty exclude pattern")
	}
	if !doublestar.ValidatePattern(cleanPattern(pattern)) {
		return fmt.Errorf("exclude %q: malformed pattern (an unclosed [ or {?)", pattern)
	}
	return nil
}

func cleanPattern(p string) string { return strings.Trim(strings.TrimPrefix(p, "./"), "/") }
