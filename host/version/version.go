// Package version holds the build identity of the runner, set with -ldflags by the Makefile.
package version

// Version and Revision are overwritten at link time (see the Makefile's LDFLAGS).
var (
	Version  = "dev"
	Revision = "unknown"
)

// String returns "Version (Revision)".
func String() string { return Version + " (" + Revision + ")" }
