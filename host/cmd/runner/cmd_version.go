package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/host/version"
)

// `runner version` and `runner --version` print GitLab Runner's multi-line format, so
// scripts that read "Version:" work unchanged.
func init() {
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version, Git revision, Go version and platform",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return writeVersion(cmd.OutOrStdout())
		},
	})
	root.SetVersionTemplate("{{.Version}}\n")
	root.Version = versionText()
}

// versionText is GitLab Runner's `version` output, without its final newline.
func versionText() string {
	rev, branch, built := version.Revision, version.Branch, version.BuiltAt
	if info, ok := debug.ReadBuildInfo(); ok && rev == "unknown" {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 8 {
				rev = s.Value[:8]
			}
		}
	}
	return fmt.Sprintf("Version:      %s\nGit revision: %s\nGit branch:   %s\nGO version:   %s\nBuilt:        %s\nOS/Arch:      %s/%s",
		version.Version, rev, branch, runtime.Version(), built, runtime.GOOS, runtime.GOARCH)
}

func writeVersion(w io.Writer) error {
	_, err := fmt.Fprintln(w, versionText())
	return err
}
