package executors

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// cacheStore keeps job caches on the runner host, one gzip tar per key, so that they
// outlive the instances that made them. Cache problems never fail a job: they are
// warnings in its log, as in GitLab.
type cacheStore struct {
	dir    string
	caches []jobs.Cache
	keys   []string // expanded and made safe, per cache
}

var unsafeKey = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func newCacheStore(dir string, job *jobs.Job, vars jobs.Variables) *cacheStore {
	c := &cacheStore{dir: dir}
	if dir == "" {
		return c
	}
	for _, jc := range job.Caches {
		if len(jc.Paths) == 0 {
			continue
		}
		if key := unsafeKey.ReplaceAllString(strings.Trim(os.Expand(jc.Key, func(n string) string {
			v, _ := vars.Get(n)
			return v
		}), "/"), "_"); key != "" && key != "." && key != ".." {
			c.keys = append(c.keys, key)
		} else {
			c.keys = append(c.keys, "default")
		}
		c.caches = append(c.caches, jc)
	}
	return c
}

func (c *cacheStore) wanted(pred func(jobs.Cache) bool) bool {
	for _, jc := range c.caches {
		if pred(jc) {
			return true
		}
	}
	return false
}

func (c *cacheStore) path(i int) string { return filepath.Join(c.dir, c.keys[i]+".tar.gz") }

func (c *cacheStore) restore(ctx context.Context, env Env, log *Trace) {
	for i, jc := range c.caches {
		if !jc.Pulls() {
			continue
		}
		f, err := os.Open(c.path(i))
		if os.IsNotExist(err) {
			fmt.Fprintf(log, "No cache for key %q yet\n", c.keys[i])
			continue
		}
		if err != nil {
			log.Warnf("cache %q: %v", c.keys[i], err)
			continue
		}
		err = env.Unpack(ctx, f)
		f.Close()
		if err != nil {
			log.Warnf("restoring cache %q: %v", c.keys[i], err)
			continue
		}
		fmt.Fprintf(log, "Restored cache %q\n", c.keys[i])
	}
}

func (c *cacheStore) save(ctx context.Context, env Env, success bool, log *Trace) {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		log.Warnf("cache directory: %v", err)
		return
	}
	for i, jc := range c.caches {
		if !jc.Pushes(success) {
			continue
		}
		tmp, err := os.CreateTemp(c.dir, ".save-*")
		if err != nil {
			log.Warnf("saving cache %q: %v", c.keys[i], err)
			continue
		}
		err = env.Pack(ctx, PackSpec{Paths: jc.Paths}, tmp, log)
		info, _ := tmp.Stat()
		tmp.Close()
		switch {
		case err != nil:
			log.Warnf("saving cache %q: %v", c.keys[i], err)
		case info == nil || info.Size() == 0:
			fmt.Fprintf(log, "Cache %q not saved: none of %s exists\n", c.keys[i], strings.Join(jc.Paths, ", "))
		default:
			// Renaming into place keeps a concurrent job from reading half an archive.
			if err = os.Rename(tmp.Name(), c.path(i)); err == nil {
				fmt.Fprintf(log, "Saved cache %q (%d bytes)\n", c.keys[i], info.Size())
				continue
			}
			log.Warnf("saving cache %q: %v", c.keys[i], err)
		}
		os.Remove(tmp.Name())
	}
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
