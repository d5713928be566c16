package main

import (
	"log/slog"

	"github.com/flotilla-ci/flotilla/nesting"
	"github.com/flotilla-ci/flotilla/nesting/qemu"
)

func init() {
	hypervisors["qemu"] = func(log *slog.Logger) nesting.Hypervisor { return qemu.New(log) }
}
