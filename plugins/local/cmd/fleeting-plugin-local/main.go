// Command fleeting-plugin-local is Flotilla's local provider built as a standalone
// plugin binary: instances are sandboxes on this machine with their own SSH servers.
package main

import (
	"os"

	"github.com/flotilla-ci/flotilla/plugins/local"
)

func main() { local.Main(nil, os.Args[1:]) }
