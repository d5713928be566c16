// Command fleeting-plugin-azure is the Flotilla provider plugin for Azure virtual
// machine scale sets (Uniform orchestration). Besides serving the plugin protocol it
// offers `doctor`; see docs/plugin-azure.md.
package main

import (
	"github.com/flotilla-ci/flotilla/plugins/azure"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
)

func main() { plugin.Main(azure.New(), azure.Version) }
