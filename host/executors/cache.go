package executors

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// cacheStore restores and saves a job's caches: in the shared store of [runners.cache]
// when there is one (the instance transfers the archives itself, see cachetransfer.go),
// else on the runner host, one gzip tar per key, so that they outlive the instances that
// made them. Cache problems never fail a job: they are warnings in its log, as in GitLab.
type cacheStore struct {
	dir     string
	shared  *SharedCache
	ttl     time.Duration
	entries []cacheEntry
}

// cacheEntry is one of the job's caches with its keys expanded: the key it is saved
// under, then the keys tried after it when restoring (fallback_keys, then
// CACHE_FALLBACK_KEY).
type cacheEntry struct {
	jobs.Cache
	key       string
	fallbacks []string
}

var unsafeKey = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// newCacheStore expands the job's cache keys with vars. ttl bounds how long a signed
// request for the shared store stays valid (the job's timeout).
func newCacheStore(dir string, shared *SharedCache, ttl time.Duration, job *jobs.Job, vars jobs.Variables) *cacheStore {
	// A signed request is made just before its transfer; the job's timeout bounds
	// how long that can take, and a week is the most SigV4 signs for.
	c := &cacheStore{dir: dir, shared: shared, ttl: min(ttl, 7*24*time.Hour)}
	if dir == "" && shared == nil {
		return c
	}
	expand := func(s string) string {
		return strings.TrimSpace(os.Expand(s, func(n string) string {
			v, _ := vars.Get(n)
			return v
		}))
	}
	fallbackVar, _ := vars.Get("CACHE_FALLBACK_KEY")
	for _, jc := range job.Caches {
		if len(jc.Paths) == 0 && !jc.Untracked {
			continue
		}
		e := cacheEntry{Cache: jc, key: expand(jc.Key)}
		if e.key == "" {
			// GitLab Runner's key when a job names none.
			e.key = job.Name + "/" + job.Source.Ref
		}
		for _, k := range append(slices.Clone(jc.FallbackKeys), fallbackVar) {
			if k = expand(k); k != "" && k != e.key && !slices.Contains(e.fallbacks, k) {
				e.fallbacks = append(e.fallbacks, k)
			}
		}
		c.entries = append(c.entries, e)
	}
	return c
}

func (c *cacheStore) wanted(pred func(jobs.Cache) bool) bool {
	for _, e := range c.entries {
		if pred(e.Cache) {
			return true
		}
	}
	return false
}

// localPath is where key's archive lives on the runner host.
func (c *cacheStore) localPath(key string) string {
	safe := unsafeKey.ReplaceAllString(strings.Trim(key, "/"), "_")
	if safe == "" || safe == "." || safe == ".." {
		safe = "default"
	}
	return filepath.Join(c.dir, safe+".tar.gz")
}

// errCacheMissing is what a store says of a key no job has saved.
var errCacheMissing = errors.New("not found")

func (c *cacheStore) restore(ctx context.Context, env Env, log *Trace) {
	for _, e := range c.entries {
		if !e.Pulls() {
			continue
		}
		restored := false
		for i, key := range append([]string{e.key}, e.fallbacks...) {
			var how string
			var err error
			if c.shared != nil {
				how, err = c.shared.download(ctx, env, key, c.ttl, log)
			} else {
				how, err = c.restoreLocal(ctx, env, key)
			}
			if errors.Is(err, errCacheMissing) {
				continue
			}
			if err != nil {
				log.Warnf("restoring cache %q: %v", key, err)
				break
			}
			if i == 0 {
				fmt.Fprintf(log, "Restored cache %q%s\n", key, how)
			} else {
				fmt.Fprintf(log, "Restored cache %q from fallback key %q%s\n", e.key, key, how)
			}
			restored = true
			break
		}
		if !restored {
			where := ""
			if c.shared != nil {
				where = " in " + c.shared.Store.Describe()
			}
			log.Warnf("cache %q: not found%s; no job has saved it yet", e.key, where)
		}
	}
}

func (c *cacheStore) restoreLocal(ctx context.Context, env Env, key string) (string, error) {
	f, err := os.Open(c.localPath(key))
	if os.IsNotExist(err) {
		return "", errCacheMissing
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	return "", env.Unpack(ctx, f)
}

func (c *cacheStore) save(ctx context.Context, env Env, success bool, log *Trace) {
	if c.shared == nil {
		if err := os.MkdirAll(c.dir, 0o700); err != nil {
			log.Warnf("cache directory: %v", err)
			return
		}
	}
	for _, e := range c.entries {
		if !e.Pushes(success) {
			continue
		}
		spec := PackSpec{Paths: e.Paths, Untracked: e.Untracked}
		var size int64
		var how string
		var err error
		if c.shared != nil {
			size, how, err = c.shared.upload(ctx, env, e.key, spec, c.ttl, log)
		} else {
			size, err = c.saveLocal(ctx, env, e.key, spec, log)
		}
		switch {
		case errors.Is(err, errNothingToSave):
			fmt.Fprintf(log, "Cache %q not saved: none of %s exists\n", e.key, strings.Join(e.Paths, ", "))
		case err != nil:
			log.Warnf("saving cache %q: %v", e.key, err)
		default:
			fmt.Fprintf(log, "Saved cache %q (%s)%s\n", e.key, byteSize(size), how)
		}
	}
}

// errNothingToSave: none of the cache's paths exists.
var errNothingToSave = errors.New("nothing to save")

func (c *cacheStore) saveLocal(ctx context.Context, env Env, key string, spec PackSpec, log *Trace) (int64, error) {
	tmp, err := os.CreateTemp(c.dir, ".save-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	err = env.Pack(ctx, spec, tmp, log)
	info, _ := tmp.Stat()
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		return 0, err
	case info == nil || info.Size() == 0:
		return 0, errNothingToSave
	}
	// Renaming into place keeps a concurrent job from reading half an archive.
	return info.Size(), os.Rename(tmp.Name(), c.localPath(key))
}

// byteSize is n in the largest binary unit that keeps it at or above 1.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// PackScript is the shell command that writes a gzip tar of spec's files from dir to
// stdout: its paths (globs expanded by the shell), and with Untracked every file that
// `git ls-files --others` lists; nothing if no file matches, and "<path>: no matching
// files" on stderr for each path that matches nothing. A path may not leave dir. It
// needs only sh and tar -z (busybox's will do), and git for Untracked: without git it
// says so on stderr and collects the paths alone.
func PackScript(dir string, spec PackSpec) (string, error) {
	words := make([]string, len(spec.Paths))
	for i, p := range spec.Paths {
		if strings.HasPrefix(p, "/") || slices.Contains(strings.Split(p, "/"), "..") {
			return "", fmt.Errorf("path %q: use a path inside the project directory", p)
		}
		words[i] = GlobWord(p)
	}
	untracked := ""
	if spec.Untracked {
		// One name a line, with word splitting on newlines only and no globbing; Git
		// quotes names with unusual characters (quotePath), which then match nothing.
		untracked = `if ! command -v git >/dev/null 2>&1; then echo "untracked: git is not installed; no untracked files collected" >&2; ` +
			`elif ! u=$(git -c core.quotePath=false ls-files --others); then echo "untracked: git ls-files failed; no untracked files collected" >&2; ` +
			`else ifs=$IFS; IFS='` + "\n" + `'; set -f; for p in $u; do set -- "$@" "$p"; done; set +f; IFS=$ifs; fi; `
	}
	return fmt.Sprintf(`cd %s || exit 1; set --; for p in %s; do if [ -e "$p" ] || [ -L "$p" ]; then set -- "$@" "$p"; `+
		`else echo "$p: no matching files" >&2; fi; done; %sif [ $# -gt 0 ]; then tar -czf - -- "$@"; fi`,
		quote(dir), strings.Join(words, " "), untracked), nil
}

// GlobWord escapes every shell-special character of p except the glob characters, so
// the shell expands the pattern and nothing else.
func GlobWord(p string) string {
	var b strings.Builder
	for _, r := range p {
		switch {
		case r == '*' || r == '?' || r == '[' || r == ']':
			b.WriteRune(r)
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("/._-+=@%,", r):
			b.WriteRune(r)
		default:
			b.WriteByte('\\')
			b.WriteRune(r)
		}
	}
	return b.String()
}

// UnpackScript is the shell command that extracts a gzip tar from stdin into dir.
func UnpackScript(dir string) string {
	return fmt.Sprintf("mkdir -p %s && tar -xzf - -C %s", quote(dir), quote(dir))
}
