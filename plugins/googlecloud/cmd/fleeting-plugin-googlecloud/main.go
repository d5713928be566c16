// Command fleeting-plugin-googlecloud is the Flotilla provider plugin for Google Cloud
// managed instance groups. Besides serving the plugin protocol it offers `doctor`; see
// docs/plugin-googlecloud.md.
package main

import (
	"github.com/flotilla-ci/flotilla/plugins/googlecloud"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
)

func main() { plugin.Main(googlecloud.New(), googlecloud.Version) }
