package plugins

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Version is a semantic version as plugins are tagged: MAJOR.MINOR.PATCH with an
// optional -PRERELEASE, and no leading "v" (GitLab's convention). Build metadata is
// not allowed because "+" is not a valid OCI tag character.
type Version struct {
	Major, Minor, Patch uint64
	// Pre is the pre-release part without the dash; empty for a release.
	Pre string
}

// ParseVersion parses a plugin version tag such as "1.2.3" or "0.0.0-bleeding".
func ParseVersion(s string) (Version, error) {
	var v Version
	core, pre, hasPre := strings.Cut(s, "-")
	if hasPre {
		if err := validPrerelease(pre); err != nil {
			return v, fmt.Errorf("version %q: %w", s, err)
		}
		v.Pre = pre
	}
	nums := strings.Split(core, ".")
	if len(nums) != 3 {
		return v, fmt.Errorf("version %q: want MAJOR.MINOR.PATCH (no leading v)", s)
	}
	for i, p := range nums {
		n, err := parseNumber(p)
		if err != nil {
			return v, fmt.Errorf("version %q: %w", s, err)
		}
		*[]*uint64{&v.Major, &v.Minor, &v.Patch}[i] = n
	}
	return v, nil
}

// String formats v as a tag.
func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// Compare orders versions by semver precedence: -1, 0 or +1.
func (v Version) Compare(o Version) int {
	for _, p := range [][2]uint64{{v.Major, o.Major}, {v.Minor, o.Minor}, {v.Patch, o.Patch}} {
		if p[0] != p[1] {
			if p[0] < p[1] {
				return -1
			}
			return 1
		}
	}
	switch {
	case v.Pre == o.Pre:
		return 0
	case v.Pre == "":
		return 1
	case o.Pre == "":
		return -1
	}
	a, b := strings.Split(v.Pre, "."), strings.Split(o.Pre, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		if c := comparePreIdent(a[i], b[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

func comparePreIdent(a, b string) int {
	an, aerr := strconv.ParseUint(a, 10, 64)
	bn, berr := strconv.ParseUint(b, 10, 64)
	switch {
	case aerr == nil && berr == nil:
		if an != bn {
			if an < bn {
				return -1
			}
			return 1
		}
		return 0
	case aerr == nil: // numeric identifiers sort before alphanumeric ones
		return -1
	case berr == nil:
		return 1
	}
	return strings.Compare(a, b)
}

// ConstraintKind says how much of a version a constraint pins.
type ConstraintKind int

// Constraint kinds, from loosest to exact.
const (
	ConstraintLatest ConstraintKind = iota
	ConstraintMajor
	ConstraintMinor
	ConstraintExact
)

// Constraint selects versions: "latest" (highest release), "MAJOR" and "MAJOR.MINOR"
// (highest release with that prefix), or an exact version. Pre-releases only ever
// match an exact constraint that names them.
type Constraint struct {
	Kind ConstraintKind
	// V holds the pinned numbers (and Pre for an exact pre-release).
	V Version
}

// ParseConstraint parses the part of a reference after the colon.
func ParseConstraint(s string) (Constraint, error) {
	if s == LatestConstraint {
		return Constraint{Kind: ConstraintLatest}, nil
	}
	if strings.Contains(s, "-") {
		v, err := ParseVersion(s)
		if err != nil {
			return Constraint{}, fmt.Errorf("constraint %q: a pre-release must be named exactly as MAJOR.MINOR.PATCH-PRE: %w", s, err)
		}
		return Constraint{Kind: ConstraintExact, V: v}, nil
	}
	nums := strings.Split(s, ".")
	if len(nums) > 3 {
		return Constraint{}, fmt.Errorf("constraint %q: want latest, MAJOR, MAJOR.MINOR or MAJOR.MINOR.PATCH", s)
	}
	var ns [3]uint64
	for i, p := range nums {
		n, err := parseNumber(p)
		if err != nil {
			return Constraint{}, fmt.Errorf("constraint %q: want latest, MAJOR, MAJOR.MINOR or MAJOR.MINOR.PATCH: %w", s, err)
		}
		ns[i] = n
	}
	return Constraint{Kind: ConstraintKind(len(nums)), V: Version{Major: ns[0], Minor: ns[1], Patch: ns[2]}}, nil
}

// String formats c as written in a reference.
func (c Constraint) String() string {
	switch c.Kind {
	case ConstraintLatest:
		return LatestConstraint
	case ConstraintMajor:
		return strconv.FormatUint(c.V.Major, 10)
	case ConstraintMinor:
		return fmt.Sprintf("%d.%d", c.V.Major, c.V.Minor)
	}
	return c.V.String()
}

// Matches reports whether v satisfies c.
func (c Constraint) Matches(v Version) bool {
	if c.Kind == ConstraintExact {
		return v == c.V
	}
	if v.Pre != "" {
		return false
	}
	switch c.Kind {
	case ConstraintMajor:
		return v.Major == c.V.Major
	case ConstraintMinor:
		return v.Major == c.V.Major && v.Minor == c.V.Minor
	}
	return true
}

// Select returns the highest of versions that c matches. Strings that are not
// versions (other tags) are ignored. ok is false when nothing matches.
func (c Constraint) Select(versions []string) (best Version, ok bool) {
	for _, s := range versions {
		v, err := ParseVersion(s)
		if err != nil || v.String() != s || !c.Matches(v) {
			continue
		}
		if !ok || v.Compare(best) > 0 {
			best, ok = v, true
		}
	}
	return best, ok
}

// SortVersions returns the strings of versions that parse, highest first; for messages.
func SortVersions(versions []string) []string {
	var vs []Version
	for _, s := range versions {
		if v, err := ParseVersion(s); err == nil && v.String() == s {
			vs = append(vs, v)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].Compare(vs[j]) > 0 })
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}
	return out
}

func parseNumber(p string) (uint64, error) {
	if p == "" {
		return 0, fmt.Errorf("empty number")
	}
	if len(p) > 1 && p[0] == '0' {
		return 0, fmt.Errorf("number %q has a leading zero", p)
	}
	for _, c := range p {
		if !isDigit(c) {
			return 0, fmt.Errorf("%q is not a number", p)
		}
	}
	n, err := strconv.ParseUint(p, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("number %q: %w", p, err)
	}
	return n, nil
}

func validPrerelease(pre string) error {
	for _, id := range strings.Split(pre, ".") {
		if id == "" {
			return fmt.Errorf("empty pre-release identifier")
		}
		numeric := true
		for _, c := range id {
			switch {
			case isDigit(c):
			case c == '-' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'):
				numeric = false
			default:
				return fmt.Errorf("invalid character %q in pre-release", c)
			}
		}
		if numeric && len(id) > 1 && id[0] == '0' {
			return fmt.Errorf("pre-release identifier %q has a leading zero", id)
		}
	}
	return nil
}
