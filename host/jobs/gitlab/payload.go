package gitlab

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// JobResponse is the body of a 201 answer to POST /api/v4/jobs/request: one job for
// this runner. Only the fields Flotilla acts on are decoded; GitLab sends more.
type JobResponse struct {
	ID            int64         `json:"id"`
	Token         string        `json:"token"`
	AllowGitFetch bool          `json:"allow_git_fetch"`
	JobInfo       JobInfo       `json:"job_info"`
	GitInfo       GitInfo       `json:"git_info"`
	RunnerInfo    RunnerInfo    `json:"runner_info"`
	Variables     []JobVariable `json:"variables"`
	Steps         []Step        `json:"steps"`
	Image         Image         `json:"image"`
	Services      []Image       `json:"services"`
	Artifacts     []Artifact    `json:"artifacts"`
	Cache         []Cache       `json:"cache"`
	Dependencies  []Dependency  `json:"dependencies"`
	Features      JobFeatures   `json:"features"`
}

// Dependency is an earlier job whose artifacts the job gets: downloaded with its own
// token (GET /api/v4/jobs/:id/artifacts) when it has an artifacts file.
type Dependency struct {
	ID            int64         `json:"id"`
	Name          string        `json:"name"`
	Token         string        `json:"token"`
	ArtifactsFile ArtifactsFile `json:"artifacts_file"`
}

// ArtifactsFile names a dependency's artifacts archive; Filename is empty when it has
// none.
type ArtifactsFile struct {
	Filename string `json:"filename"`
	Size     int64  `json:"size"`
}

// JobInfo names the job and its project.
type JobInfo struct {
	ID          int64  `json:"id"`
	Name        string `json:"name"`
	Stage       string `json:"stage"`
	ProjectID   int64  `json:"project_id"`
	ProjectName string `json:"project_name"`
}

// GitInfo says what to clone. RepoURL carries the job token as user info
// (gitlab-ci-token:<token>@); Flotilla strips it and authenticates with the token.
type GitInfo struct {
	RepoURL   string   `json:"repo_url"`
	Ref       string   `json:"ref"`
	Sha       string   `json:"sha"`
	BeforeSha string   `json:"before_sha"`
	RefType   string   `json:"ref_type"`
	Refspecs  []string `json:"refspecs"`
	Depth     int      `json:"depth"`
}

// RunnerInfo carries the job timeout in seconds.
type RunnerInfo struct {
	Timeout int `json:"timeout"`
}

// JobVariable is one CI/CD variable of the job.
type JobVariable struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Public bool   `json:"public"`
	Masked bool   `json:"masked"`
	File   bool   `json:"file"`
	Raw    bool   `json:"raw"`
}

// Step is one step of the job: "script" (before_script + script) or "after_script".
type Step struct {
	Name         string   `json:"name"`
	Script       []string `json:"script"`
	Timeout      int      `json:"timeout"`
	When         string   `json:"when"`
	AllowFailure bool     `json:"allow_failure"`
}

// Image is the job image or a service.
type Image struct {
	Name         string       `json:"name"`
	Alias        string       `json:"alias,omitempty"`
	Command      []string     `json:"command,omitempty"`
	Entrypoint   []string     `json:"entrypoint,omitempty"`
	PullPolicy   []string     `json:"pull_policy,omitempty"`
	ExecutorOpts ExecutorOpts `json:"executor_opts"`
}

// ExecutorOpts are an image's executor options (image:docker: in .gitlab-ci.yml).
type ExecutorOpts struct {
	Docker struct {
		// User is image:docker:user, a name or uid[:gid]; GitLab sends what the
		// YAML held, so a bare uid may arrive as a number.
		User     json.RawMessage `json:"user,omitempty"`
		Platform string          `json:"platform,omitempty"`
	} `json:"docker"`
}

// user is image:docker:user as text, whether GitLab sent a string or a number.
func (o ExecutorOpts) user() string {
	raw := o.Docker.User
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

// Artifact is one artifacts declaration of the job.
type Artifact struct {
	Name           string   `json:"name"`
	Untracked      bool     `json:"untracked"`
	Paths          []string `json:"paths"`
	Exclude        []string `json:"exclude"`
	When           string   `json:"when"`
	ArtifactType   string   `json:"artifact_type"`
	ArtifactFormat string   `json:"artifact_format"`
	ExpireIn       string   `json:"expire_in"`
}

// Cache is one cache declaration of the job. The server has resolved key:files and
// added the -protected or -non_protected suffix to Key; FallbackKeys
// (cache:fallback_keys) and Policy may still hold $VARIABLES.
type Cache struct {
	Key          string   `json:"key"`
	Untracked    bool     `json:"untracked"`
	Policy       string   `json:"policy"`
	Paths        []string `json:"paths"`
	When         string   `json:"when"`
	FallbackKeys []string `json:"fallback_keys"`
}

// JobFeatures are what the server says about the job; FailureReasons lists the
// failure_reason values it accepts (others are sent as unknown_failure).
type JobFeatures struct {
	TraceSections  bool     `json:"trace_sections"`
	FailureReasons []string `json:"failure_reasons"`
}

// Job is a job taken from GitLab: the shared model plus what the runner needs to
// report on it.
type Job struct {
	jobs.Job
	// GitLabID is the job's numeric ID on the server; Token is the job token that
	// authenticates trace, update and artifact calls and the clone.
	GitLabID int64
	Token    string
	// FailureReasons are the failure_reason values the server accepts; empty = all.
	FailureReasons []string
}

// ToJob turns a job payload into the shared job model. cloneURL, when set, replaces the
// scheme and host of the repository URL (config clone_url).
func (r *JobResponse) ToJob(cloneURL string) (*Job, error) {
	j := &Job{GitLabID: r.ID, Token: r.Token, FailureReasons: r.Features.FailureReasons}
	j.ID = strconv.FormatInt(r.ID, 10)
	j.Name, j.Stage = r.JobInfo.Name, r.JobInfo.Stage
	for _, v := range r.Variables {
		j.Variables = append(j.Variables, jobs.Variable{Key: v.Key, Value: v.Value, Masked: v.Masked, File: v.File})
	}
	for i, c := range r.Cache {
		policy, err := cachePolicy(c.Policy, j.Variables)
		if err != nil {
			return nil, fmt.Errorf("job %d: cache %d (key %q): %w", r.ID, i, c.Key, err)
		}
		j.Caches = append(j.Caches, jobs.Cache{Key: c.Key, FallbackKeys: c.FallbackKeys, Paths: c.Paths, Untracked: c.Untracked,
			Policy: policy, When: c.When})
	}
	// The job token is a secret whether or not the server marks it: never log it.
	if r.Token != "" {
		j.Variables = append(j.Variables, jobs.Variable{Key: "CI_JOB_TOKEN", Value: r.Token, Masked: true})
	}
	for _, s := range r.Steps {
		switch s.Name {
		case "script", "release":
			j.Script = append(j.Script, s.Script...)
			j.AllowFailure = j.AllowFailure || s.AllowFailure
		case "after_script":
			j.AfterScript = append(j.AfterScript, s.Script...)
			if s.Timeout > 0 {
				j.AfterScriptTimeout = time.Duration(s.Timeout) * time.Second
			}
		default:
			return nil, fmt.Errorf("job %d: step %q is not supported (only script, release and after_script)", r.ID, s.Name)
		}
	}
	if r.RunnerInfo.Timeout > 0 {
		j.Timeout = time.Duration(r.RunnerInfo.Timeout) * time.Second
	}
	j.Image = jobs.Image{Name: r.Image.Name, Entrypoint: r.Image.Entrypoint, PullPolicy: r.Image.PullPolicy, User: r.Image.ExecutorOpts.user()}
	for _, s := range r.Services {
		j.Services = append(j.Services, jobs.Image{Name: s.Name, Entrypoint: s.Entrypoint, Alias: s.Alias, Command: s.Command, PullPolicy: s.PullPolicy})
	}
	if r.GitInfo.RepoURL != "" {
		u, err := url.Parse(r.GitInfo.RepoURL)
		if err != nil {
			return nil, fmt.Errorf("job %d: git_info.repo_url: %w", r.ID, err)
		}
		u.User = nil
		if cloneURL != "" {
			cu, err := url.Parse(cloneURL)
			if err != nil || cu.Host == "" {
				return nil, fmt.Errorf("clone_url %q: want scheme://host[:port]", cloneURL)
			}
			u.Scheme, u.Host = cu.Scheme, cu.Host
		}
		j.Source = jobs.Source{Kind: jobs.SourceGit, RepoURL: u.String(), Ref: r.GitInfo.Ref, SHA: r.GitInfo.Sha,
			Depth: r.GitInfo.Depth, Refspecs: r.GitInfo.Refspecs, AllowFetch: r.AllowGitFetch, Token: r.Token}
	}
	for _, a := range r.Artifacts {
		when := a.When
		if when == "" {
			when = "on_success"
		}
		j.Artifacts = append(j.Artifacts, jobs.Artifact{Name: a.Name, Paths: a.Paths, Exclude: a.Exclude, Untracked: a.Untracked,
			When: when, ExpireIn: a.ExpireIn, Type: a.ArtifactType, Format: a.ArtifactFormat})
	}
	return j, nil
}

// cachePolicy expands a cache policy written as a variable (cache:policy: $POLICY)
// with the job's variables, as GitLab Runner does before it restores the cache: the
// result must be pull, push or pull-push, or empty for the default, pull-push. A
// value that holds a masked variable is not repeated in the error.
func cachePolicy(policy string, vars jobs.Variables) (string, error) {
	if !strings.Contains(policy, "$") {
		return checkPolicy(policy, policy)
	}
	expanded := vars.Expanded()
	v := os.Expand(policy, func(name string) string {
		if name == "$" {
			return "$"
		}
		x, _ := expanded.Get(name)
		return x
	})
	shown := v
	for _, m := range vars.MaskedValues() {
		if strings.Contains(v, m) {
			shown = "[MASKED]"
			break
		}
	}
	p, err := checkPolicy(v, shown)
	if err != nil {
		return "", fmt.Errorf("cache policy %s: %w", policy, err)
	}
	return p, nil
}

func checkPolicy(policy, shown string) (string, error) {
	switch policy {
	case "pull", "push", "pull-push":
		return policy, nil
	case "":
		return "pull-push", nil
	}
	return "", fmt.Errorf("unknown cache policy %q (GitLab Runner takes pull, push or pull-push)", shown)
}

// Reason returns reason if the server accepts it, else unknown_failure.
func (j *Job) Reason(reason string) string {
	if reason == "" || len(j.FailureReasons) == 0 {
		return reason
	}
	for _, r := range j.FailureReasons {
		if r == reason {
			return reason
		}
	}
	return "unknown_failure"
}
