// Package gitlabtest is a GitLab server for tests that follows the documented Runner
// API: runner verification, legacy registration and deletion, long-polled job
// requests (201 with a job, 204 without), incremental traces with Content-Range
// (416 with the server's Range on a mismatch, 403 once a job is gone), the
// X-GitLab-Trace-Update-Interval header, job cancellation through the Job-Status
// header, artifact uploads and downloads (GET /jobs/:id/artifacts with the job's own token,
// as dependencies are fetched), and bursts of 5xx answers on demand. Repositories are
// served by the real `git http-backend` (through net/http/cgi), and a clone is only
// allowed with the token of a running job.
package gitlabtest

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
)

// GitHTTPBackend is Debian git's CGI program.
const GitHTTPBackend = "/usr/lib/git-core/git-http-backend"

// Job states on the server.
const (
	Pending  = "pending"
	Running  = "running"
	Success  = "success"
	Failed   = "failed"
	Canceled = "canceled"
)

// Job is one job held by the server.
type Job struct {
	Payload gitlab.JobResponse
	// State is pending, running, success, failed or canceled.
	State         string
	FailureReason string
	ExitCode      *int
	// Trace is the log as received.
	Trace []byte
	// Output is the checksum and size of the final update.
	Output *gitlab.Output
	// Artifacts are the uploaded archives; Uploads the same with how each was sent.
	Artifacts [][]byte
	Uploads   []Upload
	// Updates are the states of every accepted PUT, in order.
	Updates []string
	// Runner is the token of the runner that took the job.
	Runner string

	cancelRequested bool
	finished        chan struct{}
}

// Upload is one artifacts upload of a job.
type Upload struct {
	// Type, Format and ExpireIn are the artifact_type, artifact_format and expire_in
	// query parameters; FileName is the multipart file's name.
	Type, Format, ExpireIn, FileName string
	Data                             []byte
}

// Options tune the server.
type Options struct {
	// LongPoll is how long a job request is held open without a job (default 200ms).
	LongPoll time.Duration
	// UpdateInterval, if set, is sent as X-GitLab-Trace-Update-Interval (seconds).
	UpdateInterval int
}

// Server is a running fake GitLab.
type Server struct {
	*httptest.Server
	t    testing.TB
	opts Options

	mu        sync.Mutex
	tokens    map[string]int64 // runner authentication token → runner ID
	regTokens map[string]bool
	managers  map[string]bool // token|system_id of runner managers seen
	deleted   []string
	jobs      map[int64]*Job
	queue     []int64
	nextID    int64
	arrived   chan struct{}
	failNext  int
	failCode  int
	rangeOnce map[int64]bool
	repoRoot  string
	requests  map[string]int
	running   int
	peak      int

	// resettoken.go
	registrations []gitlab.RegisterRequest
	pats          map[string]bool
}

// New starts a server; it is closed when the test ends.
func New(t testing.TB, o Options) *Server {
	if o.LongPoll <= 0 {
		o.LongPoll = 200 * time.Millisecond
	}
	s := &Server{t: t, opts: o, tokens: map[string]int64{}, regTokens: map[string]bool{}, managers: map[string]bool{},
		jobs: map[int64]*Job{}, nextID: 1000, arrived: make(chan struct{}), rangeOnce: map[int64]bool{},
		repoRoot: t.TempDir(), requests: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v4/runners/verify", s.verify)
	mux.HandleFunc("POST /api/v4/runners", s.register)
	mux.HandleFunc("DELETE /api/v4/runners", s.unregister)
	mux.HandleFunc("DELETE /api/v4/runners/managers", s.unregisterManager)
	s.handleResetToken(mux) // resettoken.go
	mux.HandleFunc("POST /api/v4/jobs/request", s.request)
	mux.HandleFunc("PUT /api/v4/jobs/{id}", s.update)
	mux.HandleFunc("PATCH /api/v4/jobs/{id}/trace", s.trace)
	mux.HandleFunc("POST /api/v4/jobs/{id}/artifacts", s.artifacts)
	mux.HandleFunc("GET /api/v4/jobs/{id}/artifacts", s.downloadArtifacts)
	mux.HandleFunc("/repos/", s.git)
	s.Server = httptest.NewServer(s.faults(mux))
	t.Cleanup(s.Server.Close)
	return s
}

// AddRunner makes token a valid runner authentication token and returns the runner ID.
func (s *Server) AddRunner(token string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	s.tokens[token] = s.nextID
	return s.nextID
}

// AddRegistrationToken makes token valid for legacy registration.
func (s *Server) AddRegistrationToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.regTokens[token] = true
}

// ValidToken reports whether a runner token is (still) registered.
func (s *Server) ValidToken(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.tokens[token]
	return ok
}

// Deleted returns what DELETE calls removed: "runner:<token>" or
// "manager:<token>|<system_id>".
func (s *Server) Deleted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.deleted...)
}

// FailNext makes the next n API requests (not git) answer code (a 5xx burst).
func (s *Server) FailNext(n, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext, s.failCode = n, code
}

// ForgetTraceOnce makes the next trace PATCH of job id be answered 416 as if the
// server had lost the last byte it received, so the runner must resend.
func (s *Server) ForgetTraceOnce(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rangeOnce[id] = true
}

// PeakRunning returns the most jobs that were running at once.
func (s *Server) PeakRunning() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

// Requests returns how many requests each API route got ("PATCH trace", …).
func (s *Server) Requests(route string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[route]
}

func (s *Server) faults(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") {
			s.mu.Lock()
			if s.failNext > 0 {
				s.failNext--
				code := s.failCode
				s.mu.Unlock()
				http.Error(w, "injected failure", code)
				return
			}
			s.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) verify(w http.ResponseWriter, r *http.Request) {
	var in struct{ Token, SystemID string }
	if !decode(w, r, &in) {
		return
	}
	s.mu.Lock()
	id, ok := s.tokens[in.Token]
	s.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "403 Forbidden"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "token": in.Token, "token_expires_at": nil})
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) {
	var in gitlab.RegisterRequest
	if !decode(w, r, &in) {
		return
	}
	s.mu.Lock()
	ok := s.regTokens[in.Token]
	s.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "403 Forbidden"})
		return
	}
	s.mu.Lock()
	s.registrations = append(s.registrations, in)
	s.mu.Unlock()
	token := fmt.Sprintf("legacy-%d-%s", time.Now().UnixNano(), strings.ReplaceAll(in.Description, " ", "_"))
	id := s.AddRunner(token)
	writeJSON(w, http.StatusCreated, map[string]any{"id": id, "token": token, "token_expires_at": nil})
}

func (s *Server) unregister(w http.ResponseWriter, r *http.Request) {
	var in struct{ Token string }
	if !decode(w, r, &in) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tokens[in.Token]; !ok {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	delete(s.tokens, in.Token)
	s.deleted = append(s.deleted, "runner:"+in.Token)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) unregisterManager(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Token    string `json:"token"`
		SystemID string `json:"system_id"`
	}
	if !decode(w, r, &in) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tokens[in.Token]; !ok || in.SystemID == "" {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	s.deleted = append(s.deleted, "manager:"+in.Token+"|"+in.SystemID)
	w.WriteHeader(http.StatusNoContent)
}

// Enqueue adds a job; ID, Token and (for a repository added with AddRepo) git_info
// are filled in when empty. It returns the job ID.
func (s *Server) Enqueue(p gitlab.JobResponse) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	p.ID = s.nextID
	p.JobInfo.ID = p.ID
	if p.Token == "" {
		p.Token = fmt.Sprintf("glcbt-job-%d", p.ID)
	}
	if p.GitInfo.RepoURL != "" {
		p.GitInfo.RepoURL = strings.Replace(p.GitInfo.RepoURL, "://", "://gitlab-ci-token:"+p.Token+"@", 1)
	}
	s.jobs[p.ID] = &Job{Payload: p, State: Pending, finished: make(chan struct{})}
	s.queue = append(s.queue, p.ID)
	close(s.arrived)
	s.arrived = make(chan struct{})
	return p.ID
}

// Job returns a copy of job id.
func (s *Server) Job(id int64) Job {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := *s.jobs[id]
	j.Trace = append([]byte(nil), j.Trace...)
	j.Updates = append([]string(nil), j.Updates...)
	return j
}

// Wait blocks until job id is finished (success, failed or canceled) or timeout.
func (s *Server) Wait(id int64, timeout time.Duration) (Job, bool) {
	s.mu.Lock()
	ch := s.jobs[id].finished
	s.mu.Unlock()
	select {
	case <-ch:
		return s.Job(id), true
	case <-time.After(timeout):
		return s.Job(id), false
	}
}

// Cancel cancels job id as a user would: a pending job is canceled at once; a running
// one is marked canceling, which the runner learns from the Job-Status header.
func (s *Server) Cancel(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	switch j.State {
	case Pending:
		s.finishLocked(j, Canceled)
	case Running:
		j.cancelRequested = true
	}
}

func (s *Server) finishLocked(j *Job, state string) {
	if j.State == Running {
		s.running--
	}
	j.State = state
	select {
	case <-j.finished:
	default:
		close(j.finished)
	}
}

func (s *Server) count(route string) {
	s.mu.Lock()
	s.requests[route]++
	s.mu.Unlock()
}

func (s *Server) request(w http.ResponseWriter, r *http.Request) {
	s.count("POST jobs/request")
	var in struct {
		Token    string `json:"token"`
		SystemID string `json:"system_id"`
	}
	if !decode(w, r, &in) {
		return
	}
	deadline := time.NewTimer(s.opts.LongPoll)
	defer deadline.Stop()
	for {
		s.mu.Lock()
		if _, ok := s.tokens[in.Token]; !ok {
			s.mu.Unlock()
			writeJSON(w, http.StatusForbidden, map[string]string{"message": "403 Forbidden"})
			return
		}
		s.managers[in.Token+"|"+in.SystemID] = true
		if len(s.queue) > 0 {
			id := s.queue[0]
			s.queue = s.queue[1:]
			j := s.jobs[id]
			j.State, j.Runner = Running, in.Token
			s.running++
			s.peak = max(s.peak, s.running)
			p := j.Payload
			s.mu.Unlock()
			writeJSON(w, http.StatusCreated, p)
			return
		}
		arrived := s.arrived
		s.mu.Unlock()
		select {
		case <-arrived:
		case <-deadline.C:
			w.WriteHeader(http.StatusNoContent)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// jobFor finds the job of the request and checks its token; it answers 403/404 itself.
func (s *Server) jobFor(w http.ResponseWriter, r *http.Request, token string) *Job {
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	j, ok := s.jobs[id]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		return nil
	}
	if token != j.Payload.Token || j.State != Running {
		// A finished or canceled job can no longer be updated.
		w.Header().Set("Job-Status", j.State)
		w.WriteHeader(http.StatusForbidden)
		return nil
	}
	return j
}

func (s *Server) headers(w http.ResponseWriter, j *Job) {
	status := j.State
	if j.cancelRequested {
		status = "canceling"
	}
	w.Header().Set("Job-Status", status)
	if s.opts.UpdateInterval > 0 {
		w.Header().Set("X-GitLab-Trace-Update-Interval", strconv.Itoa(s.opts.UpdateInterval))
	}
}

func (s *Server) update(w http.ResponseWriter, r *http.Request) {
	s.count("PUT jobs")
	var in gitlab.UpdateRequest
	if !decode(w, r, &in) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobFor(w, r, in.Token)
	if j == nil {
		return
	}
	j.Updates = append(j.Updates, in.State)
	switch in.State {
	case "running":
	case Success, Failed:
		j.FailureReason, j.ExitCode, j.Output = in.FailureReason, in.ExitCode, in.Output
		final := in.State
		if j.cancelRequested {
			final = Canceled
		}
		s.headers(w, j)
		s.finishLocked(j, final)
		w.WriteHeader(http.StatusOK)
		return
	default:
		http.Error(w, "state does not have a valid value", http.StatusBadRequest)
		return
	}
	s.headers(w, j)
	w.WriteHeader(http.StatusOK)
}

func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	s.count("PATCH trace")
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobFor(w, r, r.Header.Get("Job-Token"))
	if j == nil {
		return
	}
	start, end, ok := parseRange(r.Header.Get("Content-Range"))
	if s.rangeOnce[j.Payload.ID] && len(j.Trace) > 0 {
		delete(s.rangeOnce, j.Payload.ID)
		j.Trace = j.Trace[:len(j.Trace)-1]
		ok = false
	}
	if !ok || start != len(j.Trace) || end != start+len(body)-1 {
		s.requests["PATCH trace 416"]++
		w.Header().Set("Range", fmt.Sprintf("0-%d", len(j.Trace)))
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	}
	j.Trace = append(j.Trace, body...)
	s.headers(w, j)
	w.Header().Set("Range", fmt.Sprintf("0-%d", len(j.Trace)))
	w.WriteHeader(http.StatusAccepted)
}

func parseRange(h string) (int, int, bool) {
	a, b, ok := strings.Cut(h, "-")
	if !ok {
		return 0, 0, false
	}
	start, err1 := strconv.Atoi(a)
	end, err2 := strconv.Atoi(b)
	return start, end, err1 == nil && err2 == nil
}

func (s *Server) artifacts(w http.ResponseWriter, r *http.Request) {
	s.count("POST artifacts")
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || params["boundary"] == "" {
		http.Error(w, "want multipart/form-data", http.StatusBadRequest)
		return
	}
	var file []byte
	fileName := ""
	mr := multipart.NewReader(r.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if p.FormName() == "file" {
			file, _ = io.ReadAll(p)
			fileName = p.FileName()
		}
	}
	if file == nil || r.URL.Query().Get("artifact_format") == "" {
		http.Error(w, "file and artifact_format are required", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobFor(w, r, r.Header.Get("Job-Token"))
	if j == nil {
		return
	}
	j.Artifacts = append(j.Artifacts, file)
	q := r.URL.Query()
	j.Uploads = append(j.Uploads, Upload{Type: q.Get("artifact_type"), Format: q.Get("artifact_format"),
		ExpireIn: q.Get("expire_in"), FileName: fileName, Data: file})
	w.WriteHeader(http.StatusCreated)
}

// downloadArtifacts serves a job's archive (artifact_type archive) to the holder of
// that job's token, finished or not, as GitLab serves a dependency's artifacts: 404
// when the job has none, 403 for another token.
func (s *Server) downloadArtifacts(w http.ResponseWriter, r *http.Request) {
	s.count("GET artifacts")
	id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	j, ok := s.jobs[id]
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "404 Not found"})
		return
	}
	if r.Header.Get("Job-Token") != j.Payload.Token {
		writeJSON(w, http.StatusForbidden, map[string]string{"message": "403 Forbidden"})
		return
	}
	for _, u := range j.Uploads {
		if u.Type == "archive" {
			w.Header().Set("Content-Type", "application/zip")
			_, _ = w.Write(u.Data)
			return
		}
	}
	writeJSON(w, http.StatusNotFound, map[string]string{"message": "404 Not found"})
}

// DependencyOn returns the payload entry by which a later job gets job id's
// artifacts, as GitLab lists it: with the job's token, and an artifacts file when the
// job uploaded an archive.
func (s *Server) DependencyOn(id int64) gitlab.Dependency {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[id]
	d := gitlab.Dependency{ID: id, Name: j.Payload.JobInfo.Name, Token: j.Payload.Token}
	for _, u := range j.Uploads {
		if u.Type == "archive" {
			d.ArtifactsFile = gitlab.ArtifactsFile{Filename: u.FileName, Size: int64(len(u.Data))}
		}
	}
	return d
}

// AddRepo creates a repository from files, committed on branch main, and returns its
// clone URL (without credentials, as a project's URL) and the commit SHA.
func (s *Server) AddRepo(name string, files map[string]string) (string, string) {
	s.t.Helper()
	if _, err := os.Stat(GitHTTPBackend); err != nil {
		s.t.Skipf("git http-backend not available (%s): install Debian's git", GitHTTPBackend)
	}
	work := s.t.TempDir()
	for p, c := range files {
		full := filepath.Join(work, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			s.t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o755); err != nil {
			s.t.Fatal(err)
		}
	}
	bare := filepath.Join(s.repoRoot, name+".git")
	git := func(dir string, args ...string) string { return s.runGit(dir, work, args...) }
	git(work, "init", "-q", "-b", "main")
	git(work, "add", "-A")
	git(work, "commit", "-q", "-m", "initial")
	sha := git(work, "rev-parse", "HEAD")
	git(s.repoRoot, "clone", "-q", "--bare", work, bare)
	return s.URL + "/repos/" + name + ".git", sha
}

// AddCommit commits files (added or changed) on branch main of a repository AddRepo
// made, and returns the new commit's SHA.
func (s *Server) AddCommit(name string, files map[string]string) string {
	s.t.Helper()
	work := s.t.TempDir()
	git := func(args ...string) string { return s.runGit(work, work, args...) }
	git("clone", "-q", filepath.Join(s.repoRoot, name+".git"), ".")
	for p, c := range files {
		if err := os.WriteFile(filepath.Join(work, p), []byte(c), 0o755); err != nil {
			s.t.Fatal(err)
		}
	}
	git("add", "-A")
	git("commit", "-q", "-m", "change")
	git("push", "-q", "origin", "HEAD:main")
	return git("rev-parse", "HEAD")
}

// git serves repositories with git http-backend, for the token of a running job only.
func (s *Server) git(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	allowed := false
	if ok && user == "gitlab-ci-token" {
		s.mu.Lock()
		for _, j := range s.jobs {
			if j.Payload.Token == pass && j.State == Running {
				allowed = true
			}
		}
		s.mu.Unlock()
	}
	if !allowed {
		s.count("git denied")
		w.Header().Set("WWW-Authenticate", `Basic realm="GitLab"`)
		http.Error(w, "HTTP Basic: Access denied", http.StatusUnauthorized)
		return
	}
	s.count("git")
	h := &cgi.Handler{Path: GitHTTPBackend, Root: "/repos",
		Env: []string{"GIT_PROJECT_ROOT=" + s.repoRoot, "GIT_HTTP_EXPORT_ALL=1", "REMOTE_USER=" + user}}
	h.ServeHTTP(w, r)
}

// JobPayload returns a job payload running script (and after_script) on a
// repository's commit, with the variables given.
func JobPayload(name, repoURL, sha string, script, afterScript []string, vars ...gitlab.JobVariable) gitlab.JobResponse {
	p := gitlab.JobResponse{
		JobInfo:    gitlab.JobInfo{Name: name, Stage: "test", ProjectName: "project"},
		GitInfo:    gitlab.GitInfo{RepoURL: repoURL, Ref: "main", Sha: sha, RefType: "branch", Depth: 20},
		RunnerInfo: gitlab.RunnerInfo{Timeout: 600},
		Variables:  vars,
		Steps:      []gitlab.Step{{Name: "script", Script: script, Timeout: 600, When: "on_success"}},
	}
	if len(afterScript) > 0 {
		p.Steps = append(p.Steps, gitlab.Step{Name: "after_script", Script: afterScript, Timeout: 60, When: "always"})
	}
	return p
}

// runGit runs git in dir as a fixed author, with home as HOME and no system config, so
// that the machine's git settings do not leak into test repositories; it fails the
// test on an error and returns the trimmed output.
func (s *Server) runGit(dir, home string, args ...string) string {
	s.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_NOSYSTEM=1", "HOME="+home)
	out, err := cmd.CombinedOutput()
	if err != nil {
		s.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}
