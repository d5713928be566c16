// Command fleeting-plugin-aws is the Flotilla provider plugin for EC2 Auto Scaling
// groups. Besides serving the plugin protocol it offers `doctor` and `iam-policy`; see
// docs/plugin-aws.md.
package main

import (
	"github.com/flotilla-ci/flotilla/plugins/aws"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
)

func main() { plugin.Main(aws.New(), aws.Version) }
