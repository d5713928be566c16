// Package plugins finds the provider plugin a `plugin = "…"` value names, the way
// GitLab Runner does: the built-in "local" provider, a file path, a version installed
// by `runner fleeting install` under the install root (highest version matching the
// reference's constraint), or a plain binary on PATH (fleeting-plugin-<name>, then
// <name>). It also owns the plugin reference syntax and the install layout, which the
// OCI installer (package oci) shares, so the two can never disagree.
//
// Layout: <root>/<registry>/<repository>/<name>/<version>/plugin, with install.json
// (InstallMetadata) next to the binary.
package plugins
