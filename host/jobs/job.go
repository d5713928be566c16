// Package jobs is the one data model for a CI job, shared by every job source (a local
// .gitlab-ci.yml through `runner exec`, a GitLab server through `runner run`) and every
// executor. Executors never know where a job came from.
package jobs

import (
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"time"
)

// Job is one CI job ready to run.
type Job struct {
	// ID is unique within the host (a GitLab job ID, or a local sequence number).
	ID string
	// Name is the job's name in the pipeline ("build", "test:unit").
	Name  string
	Stage string

	// Variables are the job's variables in precedence order: later entries win.
	Variables Variables

	// Image and Services are the Docker images of docker-autoscaler jobs; the instance
	// executor maps Image to a VM image only with VM isolation.
	Image    Image
	Services []Image

	// Script is before_script followed by script: one shell runs both, so state such as
	// `cd` or exported variables carries over, and the first failing line fails the job.
	Script []string
	// AfterScript runs in its own shell after Script, whatever its outcome, with its
	// own timeout (AfterScriptTimeout).
	AfterScript []string

	// Timeout bounds Script; 0 means the source's default.
	Timeout time.Duration
	// AfterScriptTimeout bounds AfterScript; 0 means 5 minutes, as GitLab does.
	AfterScriptTimeout time.Duration

	// AllowFailure lets the pipeline pass although this job failed. AllowFailureExitCodes,
	// when set, limits that to these exit codes.
	AllowFailure          bool
	AllowFailureExitCodes []int

	// Source says where the job's files come from.
	Source Source

	// Artifacts are the paths to collect after the job (GitLab jobs upload them): the
	// plain archive and each report, one entry each, as GitLab's payload lists them.
	Artifacts []Artifact

	// Dependencies are the earlier jobs' artifacts archives, unpacked into the project
	// directory before the script, in order (a later archive's files win).
	Dependencies []Dependency

	// Caches are restored into the project before the script and saved after the job,
	// on the runner host, so they survive the instances.
	Caches []Cache
}

// Cache is one cache declaration.
type Cache struct {
	// Key names the cache; "$VAR" references are expanded with the job's variables.
	// For GitLab jobs it is the server's key, with GitLab's -protected or
	// -non_protected suffix and key:files already resolved.
	Key string
	// FallbackKeys are restored, in order, when Key has no cache yet
	// (cache:fallback_keys); the CACHE_FALLBACK_KEY variable comes after them.
	FallbackKeys []string
	Paths        []string
	// Untracked adds the files Git does not track (cache:untracked).
	Untracked bool
	// Policy is pull-push (default), pull or push.
	Policy string
	// When is on_success (default), on_failure or always.
	When string
}

// Pulls reports whether the cache is restored before the job.
func (c Cache) Pulls() bool { return c.Policy != "push" }

// Pushes reports whether the cache is saved after a job that ended with success.
func (c Cache) Pushes(success bool) bool {
	if c.Policy == "pull" {
		return false
	}
	switch c.When {
	case "always":
		return true
	case "on_failure":
		return !success
	}
	return success
}

// DefaultAfterScriptTimeout is used when Job.AfterScriptTimeout is zero.
const DefaultAfterScriptTimeout = 5 * time.Minute

// Image is a container image reference with an optional entrypoint override.
type Image struct {
	Name       string
	Entrypoint []string
	// Alias and Command are for services: the extra host name the job reaches the
	// service by, and the command the service container runs.
	Alias   string
	Command []string
	// PullPolicy is the job's image:pull_policy: used instead of the runner's, within
	// the runner's allowed_pull_policies.
	PullPolicy []string
	// User is image:docker:user: the job's containers run as this user instead of the
	// runner's [runners.docker] user, within its allowed_users.
	User string
}

// Variable is one CI/CD variable.
type Variable struct {
	Key   string
	Value string
	// Masked values are redacted from the job log.
	Masked bool
	// File variables are written to a file whose path becomes the value.
	File bool
}

// Variables is an ordered list of variables; later entries override earlier ones.
type Variables []Variable

// Get returns the effective value of key.
func (v Variables) Get(key string) (string, bool) {
	for i := len(v) - 1; i >= 0; i-- {
		if v[i].Key == key {
			return v[i].Value, true
		}
	}
	return "", false
}

// Effective returns one entry per key, the last one given, in first-seen order.
func (v Variables) Effective() Variables {
	var out Variables
	for _, x := range v {
		if i := slices.IndexFunc(out, func(y Variable) bool { return y.Key == x.Key }); i >= 0 {
			out[i] = x
			continue
		}
		out = append(out, x)
	}
	return out
}

// MaskedValues returns the non-empty values to redact from logs.
func (v Variables) MaskedValues() []string {
	var out []string
	for _, x := range v.Effective() {
		if x.Masked && x.Value != "" {
			out = append(out, x.Value)
		}
	}
	return out
}

// SourceKind says where a job's files come from.
type SourceKind string

// The job sources.
const (
	// SourceLocal: a working tree on the host (`runner exec`), copied to the instance.
	SourceLocal SourceKind = "local"
	// SourceGit: a repository cloned on the instance with the job token (`runner run`).
	SourceGit SourceKind = "git"
)

// Source is where a job's files come from.
type Source struct {
	Kind SourceKind
	// Dir is the working tree for SourceLocal.
	Dir string
	// RepoURL, Ref, SHA, Depth and Refspecs describe the fetch for SourceGit; the URL
	// carries no credentials: Token is the job token used to authenticate. AllowFetch
	// is the project's choice of the fetch strategy when the job sets no GIT_STRATEGY.
	RepoURL    string
	Ref        string
	SHA        string
	Depth      int
	Refspecs   []string
	AllowFetch bool
	Token      string
	// HostGitDir, set by `runner exec --git`, is the local repository's Git directory
	// on the runner host, which RepoURL (file://) names: an executor whose Git runs
	// elsewhere ships it there first.
	HostGitDir string
}

// Artifact is a set of paths to collect after a job.
type Artifact struct {
	// Name is the archive's name (artifacts:name); "" for GitLab's default.
	Name  string
	Paths []string
	// Exclude are doublestar patterns (** crosses directories) of files under Paths
	// that are left out.
	Exclude []string
	// Untracked adds every file Git does not track (git ls-files --others).
	Untracked bool
	// When is on_success (default), on_failure or always.
	When string
	// ExpireIn is how long the source keeps the artifacts (GitLab's expire_in words).
	ExpireIn string
	// Type is "archive" (or "") for the plain artifacts, else the report type (junit,
	// dotenv, coverage_report, …); Format is GitLab's artifact_format (zip, gzip, raw),
	// "" for the type's default.
	Type   string
	Format string
}

// ArtifactArchive is the type of the plain artifacts archive.
const ArtifactArchive = "archive"

// IsReport reports whether the artifact is a report rather than the plain archive.
func (a Artifact) IsReport() bool { return a.Type != "" && a.Type != ArtifactArchive }

// Wanted reports whether the artifact is collected after a job that ended with success
// or not, as its When says.
func (a Artifact) Wanted(success bool) bool {
	switch a.When {
	case "always":
		return true
	case "on_failure":
		return !success
	}
	return success
}

// Dependency is an earlier job whose artifacts a job restores. It says where the
// archive comes from only through Open, so that the job model stays source-neutral:
// `runner exec` opens a file of the run's directory, `runner run` downloads from
// GitLab with the dependency's own token, and executors need to know neither.
type Dependency struct {
	// ID and Name identify the job that made the archive, for the log.
	ID   string
	Name string
	// Open returns the archive as a gzip tar stream. An error that wraps
	// ErrMissingDependency means the archive does not exist (any more): the job then
	// fails with GitLab's missing_dependency_failure rather than a system failure.
	Open func(ctx context.Context) (io.ReadCloser, error)
}

// ErrMissingDependency marks a dependency's artifacts archive that cannot be had
// because it does not exist, expired, or is not allowed.
var ErrMissingDependency = errors.New("the dependency's artifacts are missing")

// Expanded returns the variables with references to earlier variables ($NAME, ${NAME})
// in their values replaced, as GitLab does before a job runs: a reference to a name not
// defined before it becomes empty, and $$ is a literal $. File variables' values are
// expanded too; Raw variables (none here yet) would be left alone.
func (v Variables) Expanded() Variables {
	out := make(Variables, 0, len(v))
	known := map[string]string{}
	for _, x := range v {
		x.Value = os.Expand(x.Value, func(name string) string {
			if name == "$" {
				return "$"
			}
			return known[name]
		})
		known[x.Key] = x.Value
		out = append(out, x)
	}
	return out
}
