package pipeline

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/gittest"
	"github.com/flotilla-ci/flotilla/host/internal/treetest"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// gitDigest is GitLab's digest of cache:key:files, computed with git itself: the
// files' blob IDs (git hash-object), sorted, joined with "-", hashed with SHA-1.
func gitDigest(t *testing.T, dir string, files ...string) string {
	t.Helper()
	var ids []string
	for _, f := range files {
		ids = append(ids, gittest.Run(t, dir, "hash-object", "--no-filters", "--", f))
	}
	slices.Sort(ids)
	sum := sha1.Sum([]byte(strings.Join(slices.Compact(ids), "-")))
	return hex.EncodeToString(sum[:])
}

// TestCaches: each cache keyword, from the YAML to the job's jobs.Cache once the run
// is evaluated in a checkout: key:files hashed from the files (GitLab's digest, with
// its default prefix, the cache's index), "default" when none is found, policies
// given as variables.
func TestCaches(t *testing.T) {
	tree := map[string]string{
		"Gemfile.lock": "gems\n", "package.json": "{}\n", "web/package.json": "{\"name\": \"web\"}\n",
	}
	tests := []struct {
		name  string
		cache string // the cache: of job j, indented for it
		vars  string // extra keys of job j
		env   jobs.Variables
		want  []jobs.Cache
		// digests are the files whose digest replaces %s in each wanted key.
		digests [][]string
	}{
		{name: "string key and every keyword", cache: `
    key: deps-$CI_COMMIT_REF_SLUG
    paths: [vendor/, "*.lock"]
    untracked: true
    unprotect: true
    policy: pull
    when: always
    fallback_keys: [deps-$CI_DEFAULT_BRANCH, deps]`,
			want: []jobs.Cache{{Key: "deps-$CI_COMMIT_REF_SLUG", Paths: []string{"vendor/", "*.lock"}, Untracked: true,
				Policy: "pull", When: "always", FallbackKeys: []string{"deps-$CI_DEFAULT_BRANCH", "deps"}}}},
		{name: "defaults", cache: `
    paths: [x]`,
			want: []jobs.Cache{{Key: "default", Paths: []string{"x"}, Policy: "pull-push", When: "on_success"}}},
		{name: "untracked alone", cache: `
    untracked: true`,
			want: []jobs.Cache{{Key: "default", Untracked: true, Policy: "pull-push", When: "on_success"}}},
		{name: "key:files with a prefix", cache: `
    key:
      files: [Gemfile.lock, package.json]
      prefix: gems-$CI_JOB_NAME
    paths: [vendor/]`,
			want:    []jobs.Cache{{Key: "gems-$CI_JOB_NAME-%s", Paths: []string{"vendor/"}, Policy: "pull-push", When: "on_success"}},
			digests: [][]string{{"Gemfile.lock", "package.json"}}},
		{name: "key:files without a prefix takes the cache's index", cache: `
    - key: one
      paths: [a]
    - key: {files: [package.json]}
      paths: [node_modules/]`,
			want: []jobs.Cache{{Key: "one", Paths: []string{"a"}, Policy: "pull-push", When: "on_success"},
				{Key: "1-%s", Paths: []string{"node_modules/"}, Policy: "pull-push", When: "on_success"}},
			digests: [][]string{nil, {"package.json"}}},
		{name: "a missing file is left out of the key", cache: `
    key: {files: [Gemfile.lock, Gemfile.missing], prefix: gems}`,
			want:    []jobs.Cache{{Key: "gems-%s", Policy: "pull-push", When: "on_success"}},
			digests: [][]string{{"Gemfile.lock"}}},
		{name: "no file found: prefix-default", cache: `
    key: {files: [nothing.lock], prefix: gems}`,
			want: []jobs.Cache{{Key: "gems-default", Policy: "pull-push", When: "on_success"}}},
		{name: "no file found, no prefix: index-default", cache: `
    key: {files: [nothing.lock]}`,
			want: []jobs.Cache{{Key: "0-default", Policy: "pull-push", When: "on_success"}}},
		{name: "a directory is no file", cache: `
    key: {files: [web], prefix: p}`,
			want: []jobs.Cache{{Key: "p-default", Policy: "pull-push", When: "on_success"}}},
		{name: "a wildcard takes every file it matches", cache: `
    key: {files: ["**/package.json"], prefix: js}`,
			want:    []jobs.Cache{{Key: "js-%s", Policy: "pull-push", When: "on_success"}},
			digests: [][]string{{"package.json", "web/package.json"}}},
		{name: "policy from a job variable", vars: "  variables: {POLICY: push}\n", cache: `
    key: k
    policy: $POLICY`,
			want: []jobs.Cache{{Key: "k", Policy: "push", When: "on_success"}}},
		{name: "policy from a --var override", vars: "  variables: {POLICY: push}\n", env: vars("POLICY=pull"), cache: `
    policy: ${POLICY}`,
			want: []jobs.Cache{{Key: "default", Policy: "pull", When: "on_success"}}},
		{name: "policy variable unset: pull-push, as GitLab Runner", cache: `
    policy: $POLICY`,
			want: []jobs.Cache{{Key: "default", Policy: "pull-push", When: "on_success"}}},
		{name: "policy from a rule's variables", vars: "  variables: {POLICY: push}\n  rules:\n    - variables: {POLICY: pull}\n", cache: `
    policy: $POLICY`,
			want: []jobs.Cache{{Key: "default", Policy: "pull", When: "on_success"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := treetest.Write(t, tree)
			y := "j:\n  script: [x]\n" + tt.vars + "  cache:" + tt.cache + "\n"
			ev := evaluate(t, y, Env{Dir: dir, Overrides: tt.env})
			j := ev.Pipeline.Job("j")
			if j == nil {
				t.Fatal("job j is not in the pipeline")
			}
			want := slices.Clone(tt.want)
			for i := range want {
				if i < len(tt.digests) && tt.digests[i] != nil {
					want[i].Key = fmt.Sprintf(want[i].Key, gitDigest(t, dir, tt.digests[i]...))
				}
			}
			if !reflect.DeepEqual(j.Caches, want) {
				t.Errorf("caches:\n got %+v\nwant %+v", j.Caches, want)
			}
		})
	}
}

// TestCacheKeyFilesFollowsTheWorkingTree: the key of key:files changes when a file
// changes in the working tree, committed or not, and comes back with its content.
func TestCacheKeyFilesFollowsTheWorkingTree(t *testing.T) {
	dir := treetest.Write(t, map[string]string{"go.sum": "v1\n"})
	p := mustParse(t, "j:\n  script: [x]\n  cache:\n    key: {files: [go.sum], prefix: go}\n    paths: [.go/]\n")
	key := func() string {
		t.Helper()
		ev, err := p.Evaluate(Env{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return ev.Pipeline.Job("j").Caches[0].Key
	}
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "go.sum"), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	k1 := key()
	write("v2\n")
	k2 := key()
	write("v1\n")
	k3 := key()
	if k1 == k2 || k1 != k3 || !strings.HasPrefix(k1, "go-") || k1 == "go-default" {
		t.Errorf("keys for v1, v2, v1 again: %s, %s, %s", k1, k2, k3)
	}
	if want := "go-" + gitDigest(t, dir, "go.sum"); k3 != want {
		t.Errorf("key = %s, want %s (GitLab's digest of the blob)", k3, want)
	}
	// The parsed pipeline keeps its own caches: each evaluation starts from them.
	if c := p.Job("j").Caches[0].Key; c != "go-default" {
		t.Errorf("parsed key = %s, want go-default until evaluated", c)
	}
}

// TestCacheKeyFilesCommits: key:files_commits hashes the last commits that changed the
// files (a new commit with the same content gives a new key), with GitLab's default
// prefix of the index and the files' names.
func TestCacheKeyFilesCommits(t *testing.T) {
	dir, git := gitRepo(t)
	y := "j:\n  script: [x]\n  cache:\n    key: {files_commits: [README.md, src/a.go, gone.txt]}\n"
	if _, err := Parse(".gitlab-ci.yml", []byte(y)); err == nil || !strings.Contains(err.Error(), "3 files are listed (GitLab takes 1 to 2)") {
		t.Fatalf("three files: %v", err)
	}
	y = "j:\n  script: [x]\n  cache:\n    key: {files_commits: [README.md, gone.txt]}\n"
	p := mustParse(t, y)
	key := func() string {
		t.Helper()
		env, _ := LocalEnv(context.Background(), Local{Dir: dir})
		ev, err := p.Evaluate(env)
		if err != nil {
			t.Fatal(err)
		}
		return ev.Pipeline.Job("j").Caches[0].Key
	}
	sum := sha1.Sum([]byte(git("log", "-1", "--format=%H", "--", "README.md")))
	if got, want := key(), "0_README_gone-"+hex.EncodeToString(sum[:]); got != want {
		t.Errorf("key = %s, want %s", got, want)
	}
	k1 := key()
	git("commit", "-q", "--allow-empty", "-m", "unrelated")
	if k := key(); k != k1 {
		t.Errorf("a commit that does not touch the file changed the key: %s, then %s", k1, k)
	}
	treetest.WriteIn(t, dir, map[string]string{"README.md": "hello again\n"})
	git("commit", "-q", "-am", "touch README")
	if k := key(); k == k1 {
		t.Errorf("a commit of the file kept the key %s", k)
	}
	// Without Git there is no commit: the default.
	ev, err := p.Evaluate(Env{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if k := ev.Pipeline.Job("j").Caches[0].Key; k != "0_README_gone-default" {
		t.Errorf("without history: key = %s", k)
	}
}

// TestCacheErrors: what GitLab refuses in cache: is an error naming the file, line,
// column and key path, with what to do.
func TestCacheErrors(t *testing.T) {
	tests := []struct{ name, cache, want string }{
		{"five caches", "\n    - paths: [a]\n    - paths: [b]\n    - paths: [c]\n    - paths: [d]\n    - paths: [e]",
			`4:5: j.cache: 5 caches are declared (GitLab allows at most 4 caches per job: merge caches that share a key)`},
		{"six fallback keys", " {fallback_keys: [a, b, c, d, e, f]}",
			`3:26: j.cache.fallback_keys: 6 fallback keys are listed (GitLab allows at most 5)`},
		{"three key files", " {key: {files: [a, b, c]}}",
			`3:24: j.cache.key.files: 3 files are listed (GitLab takes 1 to 2) (list 1 or 2 files)`},
		{"no key files", " {key: {files: []}}",
			`3:24: j.cache.key.files: 0 files are listed (GitLab takes 1 to 2)`},
		{"files and files_commits", " {key: {files: [a], files_commits: [b]}}",
			`3:16: j.cache.key: a cache key takes files or files_commits, not both (keep one of them)`},
		{"prefix alone", " {key: {prefix: p}}",
			`3:16: j.cache.key: a cache key mapping needs files or files_commits`},
		{"unknown key keyword", " {key: {file: [a]}}",
			`3:17: j.cache.key.file: unknown cache key keyword "file" (did you mean "files"?)`},
		{"unknown cache keyword", " {path: [a]}",
			`3:11: j.cache.path: unknown cache keyword "path" (did you mean "paths"?)`},
		{"a slash in the key", " {key: a/b}",
			`3:16: j.cache.key: cache key "a/b" contains a "/" (use - or _ instead)`},
		{"an encoded slash in the key", " {key: a%2Fb}",
			`3:16: j.cache.key: cache key "a%2Fb" contains a "/"`},
		{"a slash in the prefix", " {key: {files: [a], prefix: x/y}}",
			`3:37: j.cache.key.prefix: cache key "x/y" contains a "/"`},
		{"dot dot", " {key: '..'}",
			`3:16: j.cache.key: cache key cannot be ".." (name the cache)`},
		{"unknown policy", " {policy: sometimes}",
			`3:19: j.cache.policy: unknown cache policy "sometimes" (use pull, push, pull-push or a $VARIABLE holding one)`},
		{"unknown when", " {when: never}",
			`3:17: j.cache.when: unknown cache when "never" (use on_success, on_failure or always)`},
		{"untracked not a boolean", " {untracked: yes please}",
			`3:22: j.cache.untracked: expected true or false`},
		{"unprotect not a boolean", " {unprotect: [true]}",
			`3:22: j.cache.unprotect: expected a string, got a list`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, "j:\n  script: [x]\n  cache:"+tt.cache+"\n", ".gitlab-ci.yml:"+tt.want)
		})
	}
}

// TestCachePolicyVariableErrors: a policy variable that holds something else than a
// policy in this run fails the evaluation, at the line the policy is written.
func TestCachePolicyVariableErrors(t *testing.T) {
	p := mustParse(t, "variables: {POLICY: sometimes}\nj:\n  script: [x]\n  cache:\n    - key: k\n      policy: $POLICY\n")
	_, err := p.Evaluate(Env{})
	var d Diagnostic
	if !errors.As(err, &d) {
		t.Fatalf("err = %v, want a Diagnostic", err)
	}
	want := `.gitlab-ci.yml:6:15: j.cache[0].policy: cache policy $POLICY is "sometimes" in this run (the variable must hold pull, push or pull-push)`
	if d.Error() != want {
		t.Errorf("err = %v\nwant %s", d, want)
	}
	if _, err := p.Evaluate(Env{Overrides: vars("POLICY=pull")}); err != nil {
		t.Errorf("with a valid override: %v", err)
	}
}

// TestCacheWarnings: unprotect is accepted without a word; a key file written with ./
// earns a warning, since GitLab finds no such file.
func TestCacheWarnings(t *testing.T) {
	p := mustParse(t, "j:\n  script: [x]\n  cache: {key: {files: [./go.sum]}, unprotect: true, paths: [a]}\n")
	if len(p.Warnings) != 1 || !strings.Contains(p.Warnings[0].Error(), `j.cache.key.files[0]: GitLab finds no file at "./go.sum"`) {
		t.Errorf("warnings = %v", p.Warnings)
	}
	dir := treetest.Write(t, map[string]string{"go.sum": "x\n"})
	ev, err := p.Evaluate(Env{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if k := ev.Pipeline.Job("j").Caches[0].Key; k != "0-default" {
		t.Errorf("key = %s, want 0-default (as GitLab: the ./ path is no file)", k)
	}
}
