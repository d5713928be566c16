package main

import "github.com/flotilla-ci/flotilla/host/simulate"

// simulate lives in host/simulate; this file only registers it.
func init() {
	root.AddCommand(simulate.Command())
}
