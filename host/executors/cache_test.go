package executors

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// runIn runs job in a fresh project directory (as a new instance would have), with the
// given cache directory on the "host", and returns the log.
func runIn(t *testing.T, cacheDir string, job jobs.Job) (Result, string) {
	t.Helper()
	env := &localEnv{dir: t.TempDir(), shell: ShellSh}
	var log bytes.Buffer
	res := Run(context.Background(), &job, env, &log, RunOptions{CacheDir: cacheDir})
	return res, log.String()
}

func TestCacheOutlivesTheInstance(t *testing.T) {
	cacheDir := t.TempDir()
	cache := jobs.Cache{Key: "deps-$BRANCH", Paths: []string{".deps/", "out/*.txt", "missing"}, Policy: "pull-push", When: "on_success"}
	vars := jobs.Variables{{Key: "BRANCH", Value: "main"}}

	// 1: nothing to restore yet; the job makes the cached files, which are saved.
	res, log := runIn(t, cacheDir, jobs.Job{Variables: vars, Caches: []jobs.Cache{cache},
		Script: []string{"mkdir -p .deps out", "echo dep > .deps/a", "echo result > out/r.txt", "echo no > out/skip.log"}})
	if res.Status != StatusSuccess || !strings.Contains(log, `WARNING: cache "deps-main": not found; no job has saved it yet`) || !strings.Contains(log, `Saved cache "deps-main"`) {
		t.Fatalf("first job: %+v\n%s", res, log)
	}
	// 2: a new project directory gets them back, and only the declared paths.
	res, log = runIn(t, cacheDir, jobs.Job{Variables: vars, Caches: []jobs.Cache{cache},
		Script: []string{"cat .deps/a out/r.txt", "test ! -e out/skip.log"}})
	if res.Status != StatusSuccess || !strings.Contains(log, `Restored cache "deps-main"`) || !strings.Contains(log, " 00O dep\n") || !strings.Contains(log, " 00O result\n") {
		t.Fatalf("second job: %+v\n%s", res, log)
	}

	tests := []struct {
		name      string
		cache     jobs.Cache
		script    string
		wantSaved bool
	}{
		{"pull policy never saves", jobs.Cache{Key: "k1", Paths: []string{"f"}, Policy: "pull"}, "touch f", false},
		{"failed job saves nothing by default", jobs.Cache{Key: "k2", Paths: []string{"f"}}, "touch f; exit 1", false},
		{"when: on_failure saves after a failure", jobs.Cache{Key: "k3", Paths: []string{"f"}, When: "on_failure"}, "touch f; exit 1", true},
		{"when: always", jobs.Cache{Key: "k4", Paths: []string{"f"}, When: "always"}, "touch f", true},
		{"nothing to save", jobs.Cache{Key: "k5", Paths: []string{"absent"}}, "true", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, log := runIn(t, cacheDir, jobs.Job{Caches: []jobs.Cache{tt.cache}, Script: []string{tt.script}})
			_, err := os.Stat(filepath.Join(cacheDir, tt.cache.Key+".tar.gz"))
			if saved := err == nil; saved != tt.wantSaved {
				t.Errorf("saved = %v, want %v\n%s", saved, tt.wantSaved, log)
			}
		})
	}
}

func TestCacheProblemsAreWarnings(t *testing.T) {
	cacheDir := t.TempDir()
	res, log := runIn(t, cacheDir, jobs.Job{Caches: []jobs.Cache{{Key: "x", Paths: []string{"/etc"}}}, Script: []string{"true"}})
	if res.Status != StatusSuccess || !strings.Contains(log, `WARNING: saving cache "x": path "/etc": use a path inside the project directory`) {
		t.Fatalf("%+v\n%s", res, log)
	}
	// Shell syntax in a path is a name, never a command.
	res, log = runIn(t, cacheDir, jobs.Job{Caches: []jobs.Cache{{Key: "y", Paths: []string{"$(touch pwned)"}}}, Script: []string{"true"}})
	if res.Status != StatusSuccess || !strings.Contains(log, "$(touch pwned): no matching files") || strings.Contains(log, "Saved cache") {
		t.Fatalf("%+v\n%s", res, log)
	}
	if err := os.WriteFile(filepath.Join(cacheDir, "bad.tar.gz"), []byte("not a tarball"), 0o600); err != nil {
		t.Fatal(err)
	}
	res, log = runIn(t, cacheDir, jobs.Job{Caches: []jobs.Cache{{Key: "bad", Paths: []string{"f"}, Policy: "pull"}}, Script: []string{"true"}})
	if res.Status != StatusSuccess || !strings.Contains(log, `WARNING: restoring cache "bad"`) {
		t.Fatalf("%+v\n%s", res, log)
	}
}

func TestCachingOffWithoutDir(t *testing.T) {
	res, log := runIn(t, "", jobs.Job{Caches: []jobs.Cache{{Key: "k", Paths: []string{"f"}}}, Script: []string{"touch f"}})
	if res.Status != StatusSuccess || strings.Contains(log, "cache") {
		t.Fatalf("%+v\n%s", res, log)
	}
}

func TestPackScriptQuoting(t *testing.T) {
	s, err := PackScript("/builds/p", PackSpec{Paths: []string{"out/", "*.log", "it's; rm -rf /"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s, `out/ *.log it\'s\;\ rm\ -rf\ /`) {
		t.Errorf("script does not escape all but globs: %s", s)
	}
	for _, bad := range []string{"/etc/passwd", "../x", "a/../../b"} {
		if _, err := PackScript("/builds/p", PackSpec{Paths: []string{bad}}); err == nil {
			t.Errorf("PackScript accepted %q, which leaves the project", bad)
		}
	}
}
