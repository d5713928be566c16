package gitsource

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/gittest"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

func jobWith(src jobs.Source, kv ...string) *jobs.Job {
	j := &jobs.Job{Source: src}
	for i := 0; i+1 < len(kv); i += 2 {
		j.Variables = append(j.Variables, jobs.Variable{Key: kv[i], Value: kv[i+1]})
	}
	return j
}

func TestPlanFor(t *testing.T) {
	src := jobs.Source{Kind: jobs.SourceGit, RepoURL: "https://gitlab.example/g/p.git", Ref: "main", Depth: 20,
		Refspecs: []string{"+refs/heads/main:refs/remotes/origin/main"}}
	base := Plan{Strategy: StrategyClone, Depth: 20, Refspecs: src.Refspecs, Checkout: true, CleanFlags: []string{"-ffdx"},
		FetchFlags: []string{"--prune", "--quiet"}, Submodules: SubmodulesNone}
	with := func(f func(p *Plan)) Plan { p := base; f(&p); return p }
	tests := []struct {
		name string
		src  jobs.Source
		vars []string
		want Plan
	}{
		{"defaults: clone, the payload's depth", src, nil, base},
		{"allow_git_fetch makes fetch the default", func() jobs.Source { s := src; s.AllowFetch = true; return s }(), nil,
			with(func(p *Plan) { p.Strategy = StrategyFetch })},
		{"GIT_STRATEGY wins over allow_git_fetch", func() jobs.Source { s := src; s.AllowFetch = true; return s }(),
			[]string{"GIT_STRATEGY", "none"}, with(func(p *Plan) { p.Strategy = StrategyNone })},
		{"GIT_DEPTH overrides the payload", src, []string{"GIT_DEPTH", "1"}, with(func(p *Plan) { p.Depth = 1 })},
		{"GIT_DEPTH 0 is the whole history", src, []string{"GIT_DEPTH", "0"}, with(func(p *Plan) { p.Depth = 0 })},
		{"later variables win, references expand", src, []string{"D", "3", "GIT_DEPTH", "5", "GIT_DEPTH", "$D"},
			with(func(p *Plan) { p.Depth = 3 })},
		{"GIT_CHECKOUT false", src, []string{"GIT_CHECKOUT", "false"}, with(func(p *Plan) { p.Checkout = false })},
		{"GIT_CLEAN_FLAGS none", src, []string{"GIT_CLEAN_FLAGS", "none"}, with(func(p *Plan) { p.CleanFlags = nil })},
		{"GIT_CLEAN_FLAGS custom", src, []string{"GIT_CLEAN_FLAGS", "-ffdx -e cache/"},
			with(func(p *Plan) { p.CleanFlags = []string{"-ffdx", "-e", "cache/"} })},
		{"GIT_FETCH_EXTRA_FLAGS replaces the defaults", src, []string{"GIT_FETCH_EXTRA_FLAGS", "--no-tags"},
			with(func(p *Plan) { p.FetchFlags = []string{"--no-tags"} })},
		{"GIT_FETCH_EXTRA_FLAGS none", src, []string{"GIT_FETCH_EXTRA_FLAGS", "none"}, with(func(p *Plan) { p.FetchFlags = nil })},
		{"submodules", src, []string{"GIT_SUBMODULE_STRATEGY", "recursive", "GIT_SUBMODULE_PATHS", "a :(exclude)b",
			"GIT_SUBMODULE_DEPTH", "1", "GIT_SUBMODULE_UPDATE_FLAGS", "--jobs 4"}, with(func(p *Plan) {
			p.Submodules, p.SubmodulePaths, p.SubmoduleDepth = SubmodulesRecursive, []string{"a", ":(exclude)b"}, 1
			p.SubmoduleUpdateFlags = []string{"--jobs", "4"}
		})},
		{"GIT_LFS_SKIP_SMUDGE", src, []string{"GIT_LFS_SKIP_SMUDGE", "1"}, with(func(p *Plan) { p.LFSSkipSmudge = true })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PlanFor(jobWith(tt.src, tt.vars...))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("PlanFor =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestPlanForRejectsBadValues(t *testing.T) {
	for _, kv := range [][2]string{
		{"GIT_STRATEGY", "shallow"}, {"GIT_DEPTH", "one"}, {"GIT_DEPTH", "-1"}, {"GIT_CHECKOUT", "maybe"},
		{"GIT_SUBMODULE_STRATEGY", "all"}, {"GIT_SUBMODULE_DEPTH", "x"},
	} {
		_, err := PlanFor(jobWith(jobs.Source{}, kv[0], kv[1]))
		if err == nil || !strings.Contains(err.Error(), kv[0]+"=") || !strings.Contains(err.Error(), kv[1]) {
			t.Errorf("%s=%s: error %v, want one naming the variable and its value", kv[0], kv[1], err)
		}
	}
}

// TestScriptSteps checks the generated steps of each strategy: which commands are
// there and which are not.
func TestScriptSteps(t *testing.T) {
	src := jobs.Source{Kind: jobs.SourceGit, RepoURL: "https://gitlab.example:8443/g/p.git", Ref: "main",
		SHA: "0123456789abcdef", Token: "glcbt-secret"}
	tests := []struct {
		name    string
		vars    []string
		opts    Options
		want    []string
		notWant []string
	}{
		{"clone", []string{"GIT_STRATEGY", "clone", "GIT_DEPTH", "1"}, Options{Dir: "/b/p"}, []string{
			"rm -rf '/b/p'", "mkdir -p '/b/p'", "git init -q",
			"git fetch origin '+refs/heads/main:refs/remotes/origin/main' --depth 1 '--prune' '--quiet'",
			"git -c advice.detachedHead=false checkout -f -q '0123456789abcdef'", "git clean '-ffdx'",
			"GIT_CONFIG_KEY_0='http.https://gitlab.example:8443/.extraHeader'", "Skipping Git submodules setup",
		}, []string{"glcbt-secret", "submodule update"}},
		{"fetch keeps the directory", []string{"GIT_STRATEGY", "fetch"}, Options{Dir: "/b/p"},
			[]string{"mkdir -p '/b/p'", "if [ -d .git ]", "git fetch origin '+refs/heads/main:refs/remotes/origin/main' $unshallow '--prune' '--quiet'"},
			[]string{"rm -rf", "--depth"}},
		{"none: no git", []string{"GIT_STRATEGY", "none"}, Options{Dir: "/b/p", PreGetSources: "echo pre"},
			[]string{"mkdir -p '/b/p'", "Skipping Git repository setup", "echo pre"}, []string{"rm -rf", "git "}},
		{"empty", []string{"GIT_STRATEGY", "empty"}, Options{Dir: "/b/p"},
			[]string{"rm -rf '/b/p'", "mkdir -p '/b/p'", "creating an empty build directory"}, []string{"git "}},
		{"no checkout", []string{"GIT_CHECKOUT", "false", "GIT_SUBMODULE_STRATEGY", "normal"}, Options{Dir: "/b/p"},
			[]string{"git fetch", "Skipping Git checkout"}, []string{"checkout -f", "git clean", "submodule update"}},
		{"submodules", []string{"GIT_SUBMODULE_STRATEGY", "recursive", "GIT_SUBMODULE_PATHS", "lib :(exclude)doc",
			"GIT_SUBMODULE_DEPTH", "1", "GIT_SUBMODULE_UPDATE_FLAGS", "--jobs 4", "GIT_CLEAN_FLAGS", "-fdx"}, Options{Dir: "/b/p"},
			[]string{"git submodule sync --recursive -- 'lib' ':(exclude)doc'",
				"git submodule update --init --recursive --depth 1 '--jobs' '4' -- 'lib' ':(exclude)doc'",
				`git submodule foreach --recursive 'git clean '\''-fdx'\'''`}, nil},
		{"flags cannot inject commands", []string{"GIT_FETCH_EXTRA_FLAGS", "--quiet;touch /tmp/x`id`"}, Options{Dir: "/b/p"},
			[]string{"'--quiet;touch' '/tmp/x`id`'"}, nil},
		{"LFS smudge skipped", []string{"GIT_LFS_SKIP_SMUDGE", "1"}, Options{Dir: "/b/p"}, []string{"export GIT_LFS_SKIP_SMUDGE=1"}, nil},
		{"config scripts around git, variables exported", nil, Options{Dir: "/b/p", PreGetSources: "echo pre", PostGetSources: "echo post",
			Variables: jobs.Variables{{Key: "A", Value: "it's"}, {Key: "F", Value: "x", File: true}, {Key: "bad-name", Value: "y"}}},
			[]string{"export A='it'\\''s'", "echo pre\ncd '/b/p'", "echo post"}, []string{"export F=", "bad-name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := PlanFor(jobWith(src, tt.vars...))
			if err != nil {
				t.Fatal(err)
			}
			s := p.Script(src, tt.opts)
			for _, w := range tt.want {
				if !strings.Contains(s, w) {
					t.Errorf("script lacks %q:\n%s", w, s)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(s, w) {
					t.Errorf("script has %q:\n%s", w, s)
				}
			}
			if i, j := strings.Index(s, "echo pre"), strings.Index(s, "git fetch"); i >= 0 && j >= 0 && i > j {
				t.Errorf("pre_get_sources_script runs after git fetch:\n%s", s)
			}
			if i, j := strings.Index(s, "echo post"), strings.Index(s, "checkout -f"); i >= 0 && j >= 0 && i < j {
				t.Errorf("post_get_sources_script runs before the checkout:\n%s", s)
			}
		})
	}
}

// repo makes a repository with n commits on main, each writing n.txt, plus a
// submodule "sub" when withSub, and returns its file:// URL and head SHA.
func repo(t *testing.T, n int, withSub bool) (string, string) {
	t.Helper()
	dir := t.TempDir()
	gittest.Run(t, dir, "init", "-q", "-b", "main")
	for i := 1; i <= n; i++ {
		os.WriteFile(filepath.Join(dir, "commit.txt"), []byte(strings.Repeat("x", i)), 0o644)
		gittest.Run(t, dir, "add", "-A")
		gittest.Run(t, dir, "commit", "-q", "-m", "c")
	}
	if withSub {
		subURL, _ := repo(t, 1, false)
		gittest.Run(t, dir, "-c", "protocol.file.allow=always", "submodule", "add", "-q", subURL, "sub")
		gittest.Run(t, dir, "commit", "-q", "-m", "sub")
	}
	return "file://" + dir, gittest.Run(t, dir, "rev-parse", "HEAD")
}

// run runs the job's sources script with sh, as the executors do, and returns its
// output; file:// submodules are allowed only in this test's Git environment.
func run(t *testing.T, job *jobs.Job, dir string, o Options) (string, error) {
	t.Helper()
	p, err := PlanFor(job)
	if err != nil {
		t.Fatal(err)
	}
	o.Dir = dir
	cmd := exec.Command("sh", "-s")
	cmd.Stdin = strings.NewReader(p.Script(job.Source, o))
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_PARAMETERS='protocol.file.allow=always'")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestScriptWithGit runs the generated scripts with real git against real repositories.
func TestScriptWithGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	url, sha := repo(t, 3, true)
	src := jobs.Source{Kind: jobs.SourceGit, RepoURL: url, Ref: "main", SHA: sha}
	dir := filepath.Join(t.TempDir(), "project")

	t.Run("clone with depth 1 and submodules", func(t *testing.T) {
		out, err := run(t, jobWith(src, "GIT_STRATEGY", "clone", "GIT_DEPTH", "1", "GIT_SUBMODULE_STRATEGY", "normal"), dir, Options{})
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if got := gittest.Run(t, dir, "rev-list", "--count", "HEAD"); got != "1" {
			t.Errorf("rev-list --count HEAD = %s, want 1", got)
		}
		if got := gittest.Run(t, dir, "rev-parse", "HEAD"); got != sha {
			t.Errorf("HEAD = %s, want %s", got, sha)
		}
		if _, err := os.Stat(filepath.Join(dir, "sub", "commit.txt")); err != nil {
			t.Errorf("submodule not checked out: %v\n%s", err, out)
		}
	})
	t.Run("fetch reuses the checkout and cleans it", func(t *testing.T) {
		os.WriteFile(filepath.Join(dir, "untracked"), []byte("x"), 0o644)
		os.WriteFile(filepath.Join(dir, ".git", "marker"), []byte("x"), 0o644)
		out, err := run(t, jobWith(src, "GIT_STRATEGY", "fetch", "GIT_DEPTH", "0"), dir, Options{})
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !strings.Contains(out, "Reusing the existing Git repository") {
			t.Errorf("log does not say the checkout was reused:\n%s", out)
		}
		if _, err := os.Stat(filepath.Join(dir, ".git", "marker")); err != nil {
			t.Errorf("the repository was not reused: %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "untracked")); !os.IsNotExist(err) {
			t.Errorf("untracked file survived git clean -ffdx: %v", err)
		}
		if got := gittest.Run(t, dir, "rev-list", "--count", "HEAD"); got != "4" {
			t.Errorf("GIT_DEPTH 0 fetched %s commits, want all 4", got)
		}
	})
	t.Run("GIT_CLEAN_FLAGS none keeps untracked files", func(t *testing.T) {
		os.WriteFile(filepath.Join(dir, "untracked"), []byte("x"), 0o644)
		if out, err := run(t, jobWith(src, "GIT_STRATEGY", "fetch", "GIT_CLEAN_FLAGS", "none"), dir, Options{}); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(dir, "untracked")); err != nil {
			t.Errorf("untracked file removed: %v", err)
		}
	})
	t.Run("none leaves the directory alone", func(t *testing.T) {
		os.WriteFile(filepath.Join(dir, "commit.txt"), []byte("changed"), 0o644)
		out, err := run(t, jobWith(src, "GIT_STRATEGY", "none"), dir, Options{PreGetSources: "echo pre in $PWD"})
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "commit.txt")); string(b) != "changed" {
			t.Errorf("commit.txt = %q: the directory was touched", b)
		}
		if !strings.Contains(out, "pre in "+dir) {
			t.Errorf("pre_get_sources_script did not run in the project directory:\n%s", out)
		}
	})
	t.Run("empty gives an empty directory", func(t *testing.T) {
		if out, err := run(t, jobWith(src, "GIT_STRATEGY", "empty"), dir, Options{}); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
			t.Errorf("project directory: %v, %d entries", err, len(ents))
		}
	})
	t.Run("GIT_CHECKOUT false fetches without a work tree", func(t *testing.T) {
		out, err := run(t, jobWith(src, "GIT_STRATEGY", "clone", "GIT_CHECKOUT", "false"), dir, Options{})
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if _, err := os.Stat(filepath.Join(dir, "commit.txt")); !os.IsNotExist(err) {
			t.Errorf("commit.txt checked out: %v", err)
		}
		if got := gittest.Run(t, dir, "rev-parse", "refs/remotes/origin/main"); got != sha {
			t.Errorf("origin/main = %s, want %s", got, sha)
		}
	})
	t.Run("a failing pre_get_sources_script stops the step", func(t *testing.T) {
		out, err := run(t, jobWith(src), dir, Options{PreGetSources: "exit 3"})
		if err == nil || strings.Contains(out, "Fetching changes") {
			t.Errorf("err %v, output:\n%s", err, out)
		}
	})
}

// TestGitOnlyVariables: the variables a copy of the working tree ignores are named;
// GIT_STRATEGY none and empty, which a copy honours, are not.
func TestGitOnlyVariables(t *testing.T) {
	tests := []struct {
		vars []string
		want []string
	}{
		{nil, nil},
		{[]string{"GIT_STRATEGY", "none", "GIT_STRATEGY", "empty"}, nil},
		{[]string{"GIT_STRATEGY", "fetch"}, []string{"GIT_STRATEGY=fetch"}},
		{[]string{"GIT_DEPTH", "1", "GIT_SUBMODULE_STRATEGY", "normal", "OTHER", "x"}, []string{"GIT_DEPTH", "GIT_SUBMODULE_STRATEGY"}},
		{[]string{"D", "", "GIT_DEPTH", "$D", "GIT_CLEAN_FLAGS", "none"}, []string{"GIT_CLEAN_FLAGS"}},
	}
	for _, tt := range tests {
		if got := GitOnlyVariables(jobWith(jobs.Source{}, tt.vars...)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("GitOnlyVariables(%q) = %q, want %q", tt.vars, got, tt.want)
		}
	}
}
