package executors

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// Kind is one executor as the pool sees it: the name a runner entry selects it by
// (executor = "…" in config.toml), what it checks of that entry before any instance is
// made for it, and how it makes a job's environment on a slot. An executor package
// registers its Kind once, in an init function; adding an executor is a new package
// that does so, its name in config's list of executors Flotilla runs, and one import
// line in the pool.
type Kind struct {
	// Name is one of config.Executors.
	Name string
	// Check reports what in the runner entry this executor cannot run with (a shell it
	// has no use for, a Docker host it cannot reach), so that the entry is refused
	// before instances are paid for, not job by job. nil: nothing to check.
	Check func(r *config.Runner) error
	// New makes the environment of job on the slot's instance. ctx ends when the slot's
	// instance is lost.
	New func(ctx context.Context, on Target, job *jobs.Job) (Env, error)
}

// Target is where a job's environment is made: the instance's SSH connection (kept by
// the pool and shared by the instance's jobs), the job's slot on it, and the runner
// entry the job came through.
type Target struct {
	Conn   *connector.Client
	Slot   int
	Runner *config.Runner
}

var (
	kindsMu sync.RWMutex
	kinds   = map[string]Kind{}
)

// Register makes k available under k.Name. It panics on a second registration of a
// name, or on a name config does not list, because either is a programming error that
// every test of the binary would hit.
func Register(k Kind) {
	kindsMu.Lock()
	defer kindsMu.Unlock()
	if !slices.Contains(config.Executors, k.Name) {
		panic(fmt.Sprintf("executors: Register(%q): not one of config.Executors %q", k.Name, config.Executors))
	}
	if _, dup := kinds[k.Name]; dup {
		panic(fmt.Sprintf("executors: Register(%q) called twice", k.Name))
	}
	if k.New == nil {
		panic(fmt.Sprintf("executors: Register(%q): New is nil", k.Name))
	}
	kinds[k.Name] = k
}

// Lookup returns the registered executor named name.
func Lookup(name string) (Kind, bool) {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	k, ok := kinds[name]
	return k, ok
}

// Registered returns the names of the registered executors, sorted.
func Registered() []string {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	out := make([]string, 0, len(kinds))
	for n := range kinds {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
