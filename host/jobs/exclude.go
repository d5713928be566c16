package jobs

import (
	"fmt"
	"path"
	"strings"
)

// MatchExclude reports whether name, a slash-separated path relative to the project
// directory, matches pattern as GitLab's artifacts:exclude matches (doublestar
// globs): "**" as a whole path element matches any number of elements, none
// included; "*", "?" and "[…]" match within one element; "{a,b}" is either. Exclude
// patterns are not recursive: "out/tmp" leaves out the directory entry only, and
// "out/tmp/**" everything under it, as GitLab documents. A malformed pattern matches
// nothing (ValidExclude reports it).
func MatchExclude(pattern, name string) bool {
	name = strings.Trim(strings.TrimPrefix(name, "./"), "/")
	for _, p := range expandBraces(pattern) {
		p = strings.Trim(strings.TrimPrefix(p, "./"), "/")
		if matchElems(strings.Split(p, "/"), strings.Split(name, "/")) {
			return true
		}
	}
	return false
}

// ValidExclude reports a pattern MatchExclude cannot use.
func ValidExclude(pattern string) error {
	if strings.TrimSpace(pattern) == "" {
		return fmt.Errorf("empty exclude pattern")
	}
	if strings.Count(pattern, "{") != strings.Count(pattern, "}") {
		return fmt.Errorf("exclude %q: unbalanced braces", pattern)
	}
	for _, p := range expandBraces(pattern) {
		for _, e := range strings.Split(p, "/") {
			if _, err := path.Match(negation(e), ""); err != nil {
				return fmt.Errorf("exclude %q: %w", pattern, err)
			}
		}
	}
	return nil
}

func matchElems(pat, name []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for len(pat) > 0 && pat[0] == "**" {
				pat = pat[1:]
			}
			if len(pat) == 0 {
				return true
			}
			for i := range len(name) + 1 {
				if matchElems(pat, name[i:]) {
					return true
				}
			}
			return false
		}
		if len(name) == 0 {
			return false
		}
		if ok, err := path.Match(negation(pat[0]), name[0]); err != nil || !ok {
			return false
		}
		pat, name = pat[1:], name[1:]
	}
	return len(name) == 0
}

// negation writes a class's "[!…]" (doublestar's and the shell's) as Go's "[^…]".
func negation(elem string) string { return strings.ReplaceAll(elem, "[!", "[^") }

// maxBraceExpansions bounds what one pattern expands to.
const maxBraceExpansions = 1024

// expandBraces turns "a/{b,c}/d" into "a/b/d" and "a/c/d" (nested braces too).
func expandBraces(p string) []string {
	open := strings.IndexByte(p, '{')
	if open < 0 {
		return []string{p}
	}
	depth, closeAt := 0, -1
	var commas []int
	for i := open; i < len(p) && closeAt < 0; i++ {
		switch p[i] {
		case '{':
			depth++
		case '}':
			if depth--; depth == 0 {
				closeAt = i
			}
		case ',':
			if depth == 1 {
				commas = append(commas, i)
			}
		}
	}
	if closeAt < 0 {
		return []string{p}
	}
	var out []string
	start := open + 1
	for _, end := range append(commas, closeAt) {
		for _, rest := range expandBraces(p[closeAt+1:]) {
			for _, alt := range expandBraces(p[start:end]) {
				if len(out) >= maxBraceExpansions {
					return out
				}
				out = append(out, p[:open]+alt+rest)
			}
		}
		start = end + 1
	}
	return out
}
