// Package provider defines the contract between the Flotilla host and a provider
// plugin: the InstanceGroup interface, the settings a plugin receives, what it reports
// about instances, and the sentinel errors both sides agree on.
//
// The method set and meaning follow GitLab's fleeting provider.InstanceGroup, so a
// fleeting plugin ports by changing its imports. This package imports nothing else of
// the Flotilla repository: a plugin author depends on sdk/ alone.
package provider
