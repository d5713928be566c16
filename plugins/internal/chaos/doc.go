// Package chaos is the chaos suite: it proves the promise "a crash never leaks" by
// breaking real `runner exec` runs at seeded random points and counting what is left.
//
// Each trial drives the built runner binary (never the host packages: plugins/ must not
// import host/) with one plugin: the embedded `local` plugin, or a cloud plugin binary
// (aws, googlecloud, azure) talking to its wire fake over the simulated cloud of
// plugins/internal/cloudsim, whose VMs are real SSH servers. A trial has two runs on the
// same state directory and the same plugin root or cloud:
//
//  1. the faulted run: a three-job pipeline; at the trial's fault point the fault is
//     injected (kill -9 of the runner, of the plugin or of both, SIGTERM to the process
//     group, SIGSTOP of the plugin, cloud API faults, a killed instance server, a full
//     state disk, a kill before a corrupted state file);
//  2. the recovery run: a one-job pipeline started right after, as an operator or a
//     service manager would restart the runner.
//
// Then it counts, from the plugin's or the cloud's own truth (instance directories and
// instance server processes under the local plugin's root_dir; the simulated group's
// live VMs and desired size): instances left by the faulted run, instances leaked after
// the recovery run, processes of the trial left alive, lost and double-run jobs (every
// job appends start and done markers to a file the trial owns), and the time from the
// restart until no instance from before it is left.
//
// Everything is seeded: the base seed (-chaos.seed, or CHAOS_SEED) and a trial's
// plugin, fault and index give its seed, which draws its fault point and every other
// choice, so a failing trial is replayed with the command it prints. The tests are in
// the _test.go files; `make chaos` runs the full suite and writes its table into
// docs/reliability.md, and `go test ./...` runs a short version.
package chaos
