package main

import (
	"log/slog"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/tart"
)

// The tart backend: `nesting serve --hypervisor tart`.
func init() {
	hypervisors["tart"] = func(log *slog.Logger) nesting.Hypervisor { return tart.New(log) }
}
