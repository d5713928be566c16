// Command fleeting-plugin-nesting is the Flotilla provider plugin whose instances are
// the VMs of one nesting daemon (`nesting serve`): QEMU VMs on a Linux host, Tart VMs
// on a Mac. Besides serving the plugin protocol it offers `doctor`.
package main

import (
	"github.com/flotilla-ci/flotilla/plugins/nesting"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
)

func main() { plugin.Main(nesting.New(), nesting.Version) }
