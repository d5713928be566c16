package chaos

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// knownFailures are the plugin × fault combinations that fail on the current tree
// while the fixes of issue 11 land, with their symptoms. A failing trial of a listed
// combination is skipped with its findings instead of failing the suite; the table
// still counts it. Empty this list as the fixes land: the goal is no entry at all.
var knownFailures = map[string]string{}

// trialsFor is how many trials a plugin × fault combination gets: -chaos.trials (50
// with -chaos.full), else the short mode of `go test ./...`: two for the local plugin,
// one for each cloud plugin, so every fault runs a few times.
func trialsFor(plugin string) int {
	if settings.trials > 0 {
		return settings.trials
	}
	if plugin == pluginLocal {
		return 2
	}
	return 1
}

// TestChaos runs every fault against every plugin it applies to, several seeded trials
// each, and fails on any leak, lost or double-run job (see the package documentation
// and docs/reliability.md for what each count means).
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("the chaos suite builds the runner and runs real pipelines")
	}
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	consultSources(t)
	sl := slots{active: make(chan struct{}, settings.parallel), idle: make(chan struct{}, 7*settings.parallel),
		slow: make(chan struct{}, 5*settings.parallel)}
	start := time.Now()
	var mu sync.Mutex
	var results []*result
	t.Cleanup(func() {
		sum := summarize(results)
		t.Logf("chaos suite: seed %d, %d trials in %s\n%s", settings.seed, len(results), time.Since(start).Round(time.Second), sum.text())
		for _, s := range sum.staleKnown() {
			t.Logf("known failure %s passed every trial of this run: remove it from knownFailures once a full `make chaos` agrees", s)
		}
		if *flagReport != "" {
			if err := writeReport(*flagReport, sum, time.Since(start)); err != nil {
				t.Errorf("write the report: %v", err)
			}
		}
	})
	t.Logf("chaos suite: seed %d (replay with -chaos.seed=%d or CHAOS_SEED=%d), %d trials at once", settings.seed, settings.seed, settings.seed, settings.parallel)
	prog := &progressLog{start: start}
	for _, plugin := range allPlugins {
		for _, f := range faults {
			if f.appliesTo(plugin) {
				prog.total += trialsFor(plugin) // the whole suite; -run may select fewer
			}
		}
	}
	for _, plugin := range allPlugins {
		t.Run(plugin, func(t *testing.T) {
			t.Parallel()
			for _, f := range runOrder() {
				if !f.appliesTo(plugin) {
					continue
				}
				t.Run(f.name, func(t *testing.T) {
					t.Parallel()
					for i := range trialsFor(plugin) {
						t.Run(fmt.Sprint(i), func(t *testing.T) {
							t.Parallel()
							// A trial the harness aborts (t.Fatal) still counts, as failed.
							res := &result{plugin: plugin, fault: f.name, index: i, seed: trialSeed(settings.seed, plugin, f.name, i)}
							res.violate("the trial was aborted by the harness (see the log)")
							defer func() {
								mu.Lock()
								results = append(results, res)
								prog.done(res)
								mu.Unlock()
							}()
							res = runTrial(t, sl, plugin, f, i)
							judge(t, res)
						})
					}
				})
			}
		})
	}
}

// runOrder is the faults with the slow ones first, so that their trials, which mostly
// wait, overlap the others instead of forming a tail.
func runOrder() []*fault {
	var slow, rest []*fault
	for _, f := range faults {
		if f.slow {
			slow = append(slow, f)
		} else {
			rest = append(rest, f)
		}
	}
	return append(slow, rest...)
}

// runTrial runs one trial in a slot.
func runTrial(t *testing.T, sl slots, plugin string, f *fault, i int) *result {
	if f.slow {
		sl.slow <- struct{}{}
		defer func() { <-sl.slow }()
	}
	sl.acquire()
	defer sl.release()
	seed := trialSeed(settings.seed, plugin, f.name, i)
	tr := &trial{t: t, plugin: plugin, fault: f, index: i, seed: seed, slots: sl, rnd: rand.New(rand.NewPCG(seed, seed^0x5eed))}
	return tr.run()
}

// judge reports a trial: its notes always, its violations as a failure, unless the
// combination is a known failure.
func judge(t *testing.T, res *result) {
	if res.skipped != "" {
		t.Skip(res.skipped)
	}
	for _, n := range res.notes {
		t.Log(n)
	}
	if res.recovered {
		t.Logf("recovered %s after the restart", res.recovery.Round(time.Millisecond))
	}
	if len(res.violations) == 0 {
		return
	}
	replay := fmt.Sprintf("go test ./plugins/internal/chaos -count=1 -v -run '^TestChaos$/^%s$/^%s$/^%d$' -chaos.seed=%d -chaos.trials=%d",
		res.plugin, res.fault, res.index, settings.seed, res.index+1)
	msg := fmt.Sprintf("%s × %s, trial %d (seed %d):\n  - %s\nreplay: %s", res.plugin, res.fault, res.index, res.seed,
		strings.Join(res.violations, "\n  - "), replay)
	if why, ok := knownFailures[res.plugin+"/"+res.fault]; ok {
		t.Log(msg)
		t.Skipf("known failure (knownFailures: %s)", why)
	}
	t.Error(msg)
}

// progressLog prints a line to stderr every 5% of the trials, for a long run of the
// compiled suite (`make chaos` runs the test binary, so it shows as it goes).
type progressLog struct {
	start            time.Time
	total, n, failed int
	lastPct          int
}

// done counts a finished trial; call with the results' lock held.
func (p *progressLog) done(r *result) {
	p.n++
	if len(r.violations) > 0 {
		p.failed++
	}
	if pct := p.n * 100 / max(p.total, 1); pct/5 > p.lastPct/5 || p.n == p.total {
		p.lastPct = pct
		fmt.Fprintf(os.Stderr, "chaos: %d of %d trials, %d with findings, %s\n", p.n, p.total, p.failed, time.Since(p.start).Round(time.Second))
	}
}

// consultSources stats every Go source and module file of the repository. The suite
// tests binaries it builds with the go command, which go test's result cache cannot
// see; the files a test consults are part of the cache key, so consulting the sources
// makes any change to them run the suite again instead of reusing a stale "ok".
func consultSources(t *testing.T) {
	root := filepath.Join("..", "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("the repository root is not %s: %v", root, err)
	}
	_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") || name == "go.mod" || name == "go.sum" {
			_, _ = os.Stat(path)
		}
		return nil
	})
}
