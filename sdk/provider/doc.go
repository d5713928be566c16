// Package provider defines the contract between the Flotilla host and a provider
// plugin: the InstanceGroup interface, the settings a plugin receives, what it reports
// about instances, and the sentinel errors both sides agree on.
//
// The method sets and meaning follow GitLab's fleeting provider.InstanceGroup, so a
// fleeting plugin of any generation ports by changing its imports: InstanceGroup has the
// methods of the first generation, and Heartbeat, Suspend and Resume, which later
// generations added, are the optional interfaces Heartbeater and Suspender. This package imports nothing else of
// the Flotilla repository: a plugin author depends on sdk/ alone.
package provider
