package pipeline

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// GitLab's limits on cache: (Entry::Caches, Entry::Cache, Entry::Key).
const (
	// MaxCaches is how many caches a job may declare.
	MaxCaches = 4
	// MaxCacheFallbackKeys is how many cache:fallback_keys a cache may list.
	MaxCacheFallbackKeys = 5
	// MaxCacheKeyFiles is how many paths cache:key:files and cache:key:files_commits
	// may list.
	MaxCacheKeyFiles = 2
)

// cacheSpec is what Evaluate still has to resolve in a cache declaration once the run
// is known: the key of key:files or key:files_commits (from the checkout), and a
// policy written as a variable (with the job's variables). It sits at the same index
// in Job.cacheSpecs as the cache in Job.Caches.
type cacheSpec struct {
	// files are the paths of key:files, or of key:files_commits when commits is set;
	// fileKey says the key is one of them (else Caches[i].Key is final).
	files   []string
	commits bool
	fileKey bool
	// prefix is key:prefix; hasPrefix says it is written (an empty one is kept).
	prefix    string
	hasPrefix bool
	// index is the cache's position in the job's list, GitLab's default prefix.
	index int
	// policyAt is where a policy holding a variable is written, for messages.
	policyAt *Diagnostic
}

var cacheKeys = []string{"key", "paths", "untracked", "unprotect", "policy", "when", "fallback_keys"}

// caches reads a cache declaration: one mapping or a list of up to MaxCaches of them.
// specs has one entry per cache.
func caches(d *diags, n node, path string) (out []jobs.Cache, specs []cacheSpec) {
	n = resolve(n)
	items := []node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
		if len(items) > MaxCaches {
			d.errorHint(n, path, fmt.Sprintf("GitLab allows at most %d caches per job: merge caches that share a key", MaxCaches),
				"%d caches are declared", len(items))
		}
	}
	for i, it := range items {
		p := path
		if n.Kind == yaml.SequenceNode {
			p = fmt.Sprintf("%s[%d]", path, i)
		}
		m := mapping(d, it, p)
		if m == nil {
			continue
		}
		c := jobs.Cache{Key: "default", Policy: "pull-push", When: WhenOnSuccess}
		s := cacheSpec{index: i}
		for _, f := range d.pairs(m) {
			fp := p + "." + f.key.Value
			switch f.key.Value {
			case "key":
				if resolve(f.value).Kind == yaml.MappingNode {
					cacheKeyFiles(d, f.value, fp, &s)
					c.Key = s.key("default")
					continue
				}
				c.Key = scalar(d, f.value, fp)
				checkCacheKey(d, f.value, fp, c.Key)
			case "paths":
				c.Paths = script(d, f.value, fp)
			case "untracked":
				c.Untracked = boolean(d, f.value, fp)
			case "unprotect":
				// GitLab's -protected/-non_protected key suffix: a local run has no
				// protected refs, so there is no suffix to drop.
				boolean(d, f.value, fp)
			case "fallback_keys":
				keys := seq(d, f.value, fp)
				if len(keys) > MaxCacheFallbackKeys {
					d.errorHint(f.value, fp, fmt.Sprintf("GitLab allows at most %d", MaxCacheFallbackKeys), "%d fallback keys are listed", len(keys))
				}
				for j, k := range keys {
					c.FallbackKeys = append(c.FallbackKeys, scalar(d, k, fmt.Sprintf("%s[%d]", fp, j)))
				}
			case "policy":
				switch v := scalar(d, f.value, fp); {
				case v == "pull" || v == "push" || v == "pull-push":
					c.Policy = v
				case strings.Contains(v, "$"):
					// Expanded by Evaluate with the job's variables, as GitLab Runner
					// expands it before the job.
					c.Policy = v
					at := d.at(f.value, fp, "")
					s.policyAt = &at
				default:
					d.errorHint(f.value, fp, "use pull, push, pull-push or a $VARIABLE holding one", "unknown cache policy %q", v)
				}
			case "when":
				switch v := scalar(d, f.value, fp); v {
				case WhenOnSuccess, WhenOnFailure, WhenAlways:
					c.When = v
				default:
					d.errorHint(f.value, fp, "use on_success, on_failure or always", "unknown cache when %q", v)
				}
			default:
				d.errorHint(f.key, fp, suggestOr(f.key.Value, cacheKeys), "unknown cache keyword %q", f.key.Value)
			}
		}
		out, specs = append(out, c), append(specs, s)
	}
	return out, specs
}

// cacheKeyFiles reads key: {files: […], prefix: …} or key: {files_commits: […],
// prefix: …}: exactly one of files and files_commits, 1 or 2 paths.
func cacheKeyFiles(d *diags, n node, path string, s *cacheSpec) {
	var seen []string
	for _, f := range d.pairs(resolve(n)) {
		fp := path + "." + f.key.Value
		switch f.key.Value {
		case "files", "files_commits":
			seen = append(seen, f.key.Value)
			s.fileKey, s.commits = true, f.key.Value == "files_commits"
			items := seq(d, f.value, fp)
			if resolve(f.value).Kind == yaml.SequenceNode && (len(items) == 0 || len(items) > MaxCacheKeyFiles) {
				d.errorHint(f.value, fp, fmt.Sprintf("list 1 or %d files", MaxCacheKeyFiles), "%d files are listed (GitLab takes 1 to %d)", len(items), MaxCacheKeyFiles)
			}
			for i, it := range items {
				ip := fmt.Sprintf("%s[%d]", fp, i)
				file := scalar(d, it, ip)
				if strings.HasPrefix(file, "./") || strings.HasPrefix(file, "/") {
					d.warnf(it, ip, "GitLab finds no file at %q (paths are relative to the project, without ./ or /): it is left out of the key", file)
				}
				s.files = append(s.files, file)
			}
		case "prefix":
			s.prefix, s.hasPrefix = scalar(d, f.value, fp), true
			checkCacheKey(d, f.value, fp, s.prefix)
		default:
			d.errorHint(f.key, fp, suggestOr(f.key.Value, []string{"files", "files_commits", "prefix"}), "unknown cache key keyword %q", f.key.Value)
		}
	}
	switch {
	case len(seen) == 0:
		d.errorHint(n, path, "add files: [a file] (the key changes with its content), or write the key as a string", "a cache key mapping needs files or files_commits")
	case len(seen) > 1:
		d.errorHint(n, path, "keep one of them", "a cache key takes files or files_commits, not both")
	}
}

// checkCacheKey refuses what GitLab refuses in a cache key or prefix: a "/" (also
// URL-encoded) and the names "." and "..".
func checkCacheKey(d *diags, n node, path, key string) {
	k := key
	if u, err := url.PathUnescape(key); err == nil {
		k = u
	}
	switch {
	case strings.Contains(k, "/"):
		d.errorHint(n, path, "use - or _ instead", "cache key %q contains a \"/\"", key)
	case k == "." || k == "..":
		d.errorHint(n, path, "name the cache", "cache key cannot be %q", key)
	}
}

// key is GitLab's key for key:files / key:files_commits given the digest of the files
// ("default" when none of them is found): the prefix and the digest joined with "-".
// Without a prefix GitLab uses the cache's index in the job's list, and for
// files_commits also the files' names up to their first dot ("0_package"), so that two
// caches of one job never share a key.
func (s cacheSpec) key(digest string) string {
	prefix := s.prefix
	if !s.hasPrefix {
		prefix = strconv.Itoa(s.index)
		if s.commits {
			names := make([]string, len(s.files))
			for i, f := range s.files {
				names[i], _, _ = strings.Cut(f, ".")
			}
			prefix += "_" + strings.Join(names, "_")
		}
	}
	if prefix == "" {
		return digest
	}
	return prefix + "-" + digest
}

// resolveCaches returns the job's caches for this run: key:files hashed from the
// checkout, key:files_commits from its history, and policies given as variables
// expanded with lookup. An expanded policy that is not pull, push or pull-push (or
// empty: GitLab Runner's default, pull-push) is an error at the line it is written.
func (e *evaluator) resolveCaches(j *Job, lookup func(string) (string, bool)) ([]jobs.Cache, error) {
	if len(j.cacheSpecs) == 0 {
		return j.Caches, nil
	}
	out := slices.Clone(j.Caches)
	for i := range out {
		if i >= len(j.cacheSpecs) {
			break
		}
		s := j.cacheSpecs[i]
		if s.fileKey {
			out[i].Key = s.key(e.filesDigest(s))
		}
		if s.policyAt != nil {
			switch v := expandVars(out[i].Policy, lookup); v {
			case "pull", "push", "pull-push":
				out[i].Policy = v
			case "":
				out[i].Policy = "pull-push"
			default:
				at := *s.policyAt
				at.Msg = fmt.Sprintf("cache policy %s is %q in this run", out[i].Policy, v)
				at.Hint = "the variable must hold pull, push or pull-push"
				return nil, at
			}
		}
	}
	return out, nil
}

// filesDigest is GitLab's digest of key:files (the Git blob IDs of the files) or of
// key:files_commits (the last commits that changed them): the IDs found, sorted and
// without repeats, joined with "-" and hashed with SHA-1; "default" when none is
// found. key:files hashes the files as they are in the working tree, so the key
// changes as soon as a file does, committed or not, and equals GitLab's for a
// committed tree.
func (e *evaluator) filesDigest(s cacheSpec) string {
	var ids []string
	for _, f := range s.files {
		switch {
		case f == "" || strings.HasPrefix(f, "./") || strings.HasPrefix(f, "/"):
			// GitLab finds no such file in the repository.
		case s.commits:
			ids = append(ids, e.lastCommit(f))
		case strings.Contains(f, "*"):
			for _, name := range e.checkoutFiles() {
				if globMatch(f, name) {
					ids = append(ids, e.blobID(name))
				}
			}
		default:
			ids = append(ids, e.blobID(f))
		}
	}
	ids = slices.DeleteFunc(ids, func(id string) bool { return id == "" })
	if len(ids) == 0 {
		return "default"
	}
	slices.Sort(ids)
	sum := sha1.Sum([]byte(strings.Join(slices.Compact(ids), "-")))
	return hex.EncodeToString(sum[:])
}

// blobID returns the Git blob ID of the checkout's file name (slash-separated,
// relative to the checkout), as `git hash-object` computes it: a symbolic link's is
// its target's name. It is "" for a file that does not exist or is not a file.
func (e *evaluator) blobID(name string) string {
	if id, ok := e.blobs[name]; ok {
		return id
	}
	id := ""
	if e.env.Dir != "" {
		id = gitBlobID(filepath.Join(e.env.Dir, filepath.FromSlash(name)))
	}
	if e.blobs == nil {
		e.blobs = map[string]string{}
	}
	e.blobs[name] = id
	return id
}

// lastCommit returns the last commit that changed path, once per evaluation (a
// parallel job's caches are the same for each of its jobs): "" when unknown.
func (e *evaluator) lastCommit(path string) string {
	if id, ok := e.commits[path]; ok {
		return id
	}
	id := ""
	if e.env.LastCommit != nil {
		id = e.env.LastCommit(path)
	}
	if e.commits == nil {
		e.commits = map[string]string{}
	}
	e.commits[path] = id
	return id
}

func gitBlobID(path string) string {
	fi, err := os.Lstat(path)
	if err != nil {
		return ""
	}
	h := sha1.New()
	switch {
	case fi.Mode().IsRegular():
		f, err := os.Open(path)
		if err != nil {
			return ""
		}
		defer f.Close()
		fmt.Fprintf(h, "blob %d\x00", fi.Size())
		if n, err := io.Copy(h, f); err != nil || n != fi.Size() {
			return "" // changed while read: no stable ID
		}
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			return ""
		}
		fmt.Fprintf(h, "blob %d\x00%s", len(target), target)
	default:
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}
