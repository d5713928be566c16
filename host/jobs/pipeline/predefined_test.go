package pipeline

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/gittest"
)

// gitRepo makes a Git checkout with a commit on main, returning a function that runs
// git in it.
func gitRepo(t *testing.T) (string, func(args ...string) string) {
	t.Helper()
	dir := t.TempDir()
	git := func(args ...string) string {
		t.Helper()
		return gittest.Run(t, dir, args...)
	}
	git("init", "-q", "-b", "main")
	write := func(name, body string) {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("README.md", "hello\n")
	git("add", "-A")
	git("commit", "-q", "-m", "Initial commit\n\nWith a body.")
	write("src/a.go", "package a\n")
	git("add", "-A")
	git("commit", "-q", "-m", "Add a")
	return dir, git
}

func get(env Env, key string) (string, bool) { return env.Predefined.Get(key) }

// TestLocalEnv: the predefined variables of a local run come from the checkout: on a
// branch, on a tag (detached HEAD at the tag), on a detached HEAD without a tag, and
// without Git.
func TestLocalEnv(t *testing.T) {
	dir, git := gitRepo(t)
	sha := git("rev-parse", "HEAD")
	ctx := context.Background()

	env, warnings := LocalEnv(ctx, Local{Dir: dir, PipelineID: 7, PipelineIID: 3})
	want := map[string]string{
		"CI_COMMIT_SHA": sha, "CI_COMMIT_SHORT_SHA": sha[:8], "CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_NAME": "main",
		"CI_COMMIT_REF_SLUG": "main", "CI_COMMIT_MESSAGE": "Add a", "CI_COMMIT_TITLE": "Add a", "CI_DEFAULT_BRANCH": "main",
		"CI_PIPELINE_SOURCE": "push", "CI_PROJECT_DIR": dir, "CI_PROJECT_NAME": filepath.Base(dir),
		"CI_PIPELINE_ID": "7", "CI_PIPELINE_IID": "3",
	}
	for k, v := range want {
		if got, ok := get(env, k); !ok || got != v {
			t.Errorf("branch: %s = %q (%v), want %q", k, got, ok, v)
		}
	}
	if _, ok := get(env, "CI_COMMIT_TAG"); ok || len(warnings) != 0 {
		t.Errorf("branch: CI_COMMIT_TAG set or warnings %v", warnings)
	}

	git("checkout", "-q", "-b", "Feature/New_UI")
	env, _ = LocalEnv(ctx, Local{Dir: dir, Source: "web"})
	if v, _ := get(env, "CI_COMMIT_REF_SLUG"); v != "feature-new-ui" {
		t.Errorf("slug = %q", v)
	}
	if v, _ := get(env, "CI_PIPELINE_SOURCE"); v != "web" {
		t.Errorf("source = %q", v)
	}

	git("tag", "v1.0")
	git("checkout", "-q", "v1.0")
	env, warnings = LocalEnv(ctx, Local{Dir: dir})
	if v, _ := get(env, "CI_COMMIT_TAG"); v != "v1.0" {
		t.Errorf("tag: CI_COMMIT_TAG = %q", v)
	}
	if v, _ := get(env, "CI_COMMIT_REF_NAME"); v != "v1.0" {
		t.Errorf("tag: CI_COMMIT_REF_NAME = %q", v)
	}
	if _, ok := get(env, "CI_COMMIT_BRANCH"); ok || len(warnings) != 0 {
		t.Errorf("tag: CI_COMMIT_BRANCH set, or warnings %v", warnings)
	}

	git("checkout", "-q", "HEAD~1")
	env, warnings = LocalEnv(ctx, Local{Dir: dir})
	for _, k := range []string{"CI_COMMIT_BRANCH", "CI_COMMIT_TAG", "CI_COMMIT_REF_NAME"} {
		if v, ok := get(env, k); ok {
			t.Errorf("detached: %s = %q, want unset", k, v)
		}
	}
	if v, _ := get(env, "CI_COMMIT_TITLE"); v != "Initial commit" {
		t.Errorf("detached: title = %q", v)
	}
	if v, _ := get(env, "CI_COMMIT_MESSAGE"); v != "Initial commit\n\nWith a body." {
		t.Errorf("detached: message = %q", v)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "HEAD is detached") {
		t.Errorf("detached: warnings = %v", warnings)
	}

	plain := t.TempDir()
	env, warnings = LocalEnv(ctx, Local{Dir: plain})
	if _, ok := get(env, "CI_COMMIT_SHA"); ok || env.Changed != nil {
		t.Errorf("no git: CI_COMMIT_SHA set or a diff")
	}
	if v, _ := get(env, "CI_PIPELINE_SOURCE"); v != "push" {
		t.Errorf("no git: source = %q", v)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "is not a Git checkout") {
		t.Errorf("no git: warnings = %v", warnings)
	}
}

// TestLocalEnvDefaultBranchFromOrigin: origin/HEAD names the default branch.
func TestLocalEnvDefaultBranchFromOrigin(t *testing.T) {
	dir, git := gitRepo(t)
	git("branch", "-m", "main", "trunk")
	git("update-ref", "refs/remotes/origin/trunk", "HEAD")
	git("symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/trunk")
	env, _ := LocalEnv(context.Background(), Local{Dir: dir})
	if v, _ := get(env, "CI_DEFAULT_BRANCH"); v != "trunk" {
		t.Errorf("CI_DEFAULT_BRANCH = %q, want trunk", v)
	}
}

// TestLocalEnvChanges: the default base is the previous commit on the default
// branch and the fork point on another branch; compare_to names one; uncommitted and
// untracked files count; a bad compare_to is an error.
func TestLocalEnvChanges(t *testing.T) {
	dir, git := gitRepo(t)
	ctx := context.Background()
	env, _ := LocalEnv(ctx, Local{Dir: dir})
	files, known, err := env.Changed("")
	if err != nil || !known || !slices.Equal(files, []string{"src/a.go"}) {
		t.Errorf("main: %v %v %v, want the last commit's src/a.go", files, known, err)
	}

	git("checkout", "-q", "-b", "topic")
	os.WriteFile(filepath.Join(dir, "b.txt"), []byte("b"), 0o644)
	git("add", "b.txt")
	git("commit", "-q", "-m", "b")
	os.WriteFile(filepath.Join(dir, "c.txt"), []byte("c"), 0o644)
	os.WriteFile(filepath.Join(dir, "README.md"), []byte("changed"), 0o644)
	env, _ = LocalEnv(ctx, Local{Dir: dir})
	files, known, err = env.Changed("")
	slices.Sort(files)
	if err != nil || !known || !slices.Equal(files, []string{"README.md", "b.txt", "c.txt"}) {
		t.Errorf("topic: %v %v %v, want what the branch changed since main, committed or not", files, known, err)
	}
	files, _, err = env.Changed("HEAD~2")
	slices.Sort(files)
	if err != nil || !slices.Equal(files, []string{"README.md", "b.txt", "c.txt", "src/a.go"}) {
		t.Errorf("compare_to HEAD~2: %v %v", files, err)
	}
	if _, _, err := env.Changed("no-such-ref"); err == nil || !strings.Contains(err.Error(), `compare_to "no-such-ref" is not a commit`) {
		t.Errorf("bad compare_to: %v", err)
	}

	// A first commit has no base: changes cannot be told, so they hold.
	first := t.TempDir()
	exec.Command("git", "-C", first, "init", "-q", "-b", "main").Run()
	os.WriteFile(filepath.Join(first, "x"), nil, 0o644)
	cmd := exec.Command("git", "-C", first, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "one")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	env, _ = LocalEnv(ctx, Local{Dir: first})
	if _, known, err := env.Changed(""); known || err != nil {
		t.Errorf("first commit: known %v, err %v", known, err)
	}
}

func TestRefSlug(t *testing.T) {
	for in, want := range map[string]string{"main": "main", "Feature/New_UI": "feature-new-ui", "-x-": "x", strings.Repeat("a", 70): strings.Repeat("a", 63)} {
		if got := RefSlug(in); got != want {
			t.Errorf("RefSlug(%q) = %q, want %q", in, got, want)
		}
	}
}
