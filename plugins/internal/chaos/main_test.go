package chaos

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// The suite's flags; each has an environment variable so that `make chaos` and CI can
// set it without knowing the package's flag syntax.
var (
	flagSeed     = flag.Uint64("chaos.seed", 0, "base seed of the trials (default $CHAOS_SEED, else 1); printed on failure for replay")
	flagFull     = flag.Bool("chaos.full", false, "the full suite of `make chaos`: 50 trials per plugin × fault (also $CHAOS_FULL=1)")
	flagTrials   = flag.Int("chaos.trials", 0, "trials per plugin × fault (default $CHAOS_TRIALS, else 50 with -chaos.full, else the short mode's)")
	flagParallel = flag.Int("chaos.parallel", 0, "trials actively running at once (default $CHAOS_PARALLEL, else 8 with -chaos.full, else 3)")
	flagReport   = flag.String("chaos.report", "", "write the results table into this Markdown file, between the chaos markers")
	flagBin      = flag.String("chaos.bin", "", "use the runner and fleeting-plugin-* binaries in this directory instead of building them (also $CHAOS_BIN)")
)

// bins are the binaries every trial runs, built once by TestMain.
var bins struct {
	runner  string
	plugins map[string]string // cloud plugin name → binary
	err     error
}

// settings are the resolved flags.
var settings struct {
	seed     uint64
	full     bool
	trials   int // 0: the short mode's per-plugin default
	parallel int
}

func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

func TestMain(m *testing.M) {
	flag.Parse()
	settings.seed = *flagSeed
	if settings.seed == 0 {
		if s, err := strconv.ParseUint(os.Getenv("CHAOS_SEED"), 10, 64); err == nil && s != 0 {
			settings.seed = s
		} else {
			settings.seed = 1
		}
	}
	settings.full = *flagFull || os.Getenv("CHAOS_FULL") == "1"
	settings.trials = *flagTrials
	if settings.trials <= 0 {
		settings.trials = envInt("CHAOS_TRIALS")
	}
	if settings.trials <= 0 && settings.full {
		settings.trials = 50
	}
	settings.parallel = *flagParallel
	if settings.parallel <= 0 {
		settings.parallel = envInt("CHAOS_PARALLEL")
	}
	if settings.parallel <= 0 {
		settings.parallel = 3
		if settings.full {
			settings.parallel = 8
		}
	}
	// Trials are parallel subtests; how many run actively is bounded by the suite's own
	// slots (a trial waiting on a stuck runner gives its slot back), so the testing
	// package's bound must not be the lower one.
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		_ = flag.Set("test.parallel", "512")
	}

	code := 0
	binDir := *flagBin
	if binDir == "" {
		binDir = os.Getenv("CHAOS_BIN")
	}
	switch {
	case testing.Short():
		code = m.Run()
	case binDir != "":
		bins.err = prebuilt(binDir)
		code = m.Run()
	default:
		dir, err := os.MkdirTemp("", "chaos-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			os.Exit(1)
		}
		bins.err = build(dir)
		code = m.Run()
		os.RemoveAll(dir)
	}
	os.Exit(code)
}

// prebuilt uses the binaries in dir (e.g. built from another revision, to compare).
func prebuilt(dir string) error {
	bins.runner = filepath.Join(dir, "runner")
	bins.plugins = map[string]string{}
	for _, p := range cloudPlugins {
		bins.plugins[p] = filepath.Join(dir, "fleeting-plugin-"+p)
	}
	for _, b := range append([]string{bins.runner}, bins.plugins[cloudPlugins[0]], bins.plugins[cloudPlugins[1]], bins.plugins[cloudPlugins[2]]) {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("-chaos.bin: %w", err)
		}
	}
	return nil
}

// build builds the runner and the cloud plugins into dir with the go command, as a
// user would install them: the suite drives binaries, never host packages.
func build(dir string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the chaos suite builds the runner and the plugins and needs the go command: %w", err)
	}
	const mod = "github.com/flotilla-ci/flotilla/"
	pkgs := []string{mod + "host/cmd/runner"}
	bins.plugins = map[string]string{}
	for _, p := range cloudPlugins {
		pkgs = append(pkgs, mod+"plugins/"+p+"/cmd/fleeting-plugin-"+p)
		bins.plugins[p] = filepath.Join(dir, "fleeting-plugin-"+p)
	}
	cmd := exec.Command(goBin, append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %v: %w\n%s", pkgs, err, out)
	}
	bins.runner = filepath.Join(dir, "runner")
	return nil
}
