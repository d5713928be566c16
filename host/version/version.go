// Package version holds the build identity of the runner, set with -ldflags by the Makefile.
package version

// Version, Revision, Branch and BuiltAt are overwritten at link time (see the
// Makefile's LDFLAGS); `runner version` and gitlab_runner_version_info show them as
// GitLab Runner shows its own.
var (
	Version  = "dev"
	Revision = "unknown"
	Branch   = "unknown"
	BuiltAt  = "unknown"
)

// String returns "Version (Revision)".
func String() string { return Version + " (" + Revision + ")" }
