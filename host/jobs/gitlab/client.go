// Package gitlab is the GitLab Runner API client of `runner run`, `runner register`,
// `runner verify` and `runner unregister`: runner registration and verification, job
// requests (long polling), incremental trace uploads, job state updates and artifact
// uploads, and the conversion of a job payload into the shared jobs.Job model.
package gitlab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/version"
)

// Client talks to one GitLab instance's Runner API.
type Client struct {
	base *url.URL
	http *http.Client
	info VersionInfo
}

// ClientOptions tune a Client.
type ClientOptions struct {
	// CAFile is a PEM bundle trusted in addition to the system roots (tls-ca-file).
	CAFile string
	// HTTP replaces the HTTP client (tests); CAFile is then ignored.
	HTTP *http.Client
	// Executor and Shell are reported to GitLab in the runner info.
	Executor, Shell string
	// Transport, if set, wraps the client's transport (the runner counts its API
	// calls with it).
	Transport func(http.RoundTripper) http.RoundTripper
}

// VersionInfo describes the runner to GitLab in every request.
type VersionInfo struct {
	Name         string   `json:"name"`
	Version      string   `json:"version"`
	Revision     string   `json:"revision"`
	Platform     string   `json:"platform"`
	Architecture string   `json:"architecture"`
	Executor     string   `json:"executor,omitempty"`
	Shell        string   `json:"shell,omitempty"`
	Features     Features `json:"features"`
}

// Features are what this runner can do, as GitLab's runner reports them.
type Features struct {
	Variables       bool `json:"variables"`
	Image           bool `json:"image"`
	Services        bool `json:"services"`
	Artifacts       bool `json:"artifacts"`
	Cache           bool `json:"cache"`
	UploadMultiple  bool `json:"upload_multiple_artifacts"`
	Masking         bool `json:"masking"`
	Cancelable      bool `json:"cancelable"`
	TraceReset      bool `json:"trace_reset"`
	TraceChecksum   bool `json:"trace_checksum"`
	TraceSize       bool `json:"trace_size"`
	MultiBuildSteps bool `json:"multi_build_steps"`
	ReturnExitCode  bool `json:"return_exit_code"`
	Refspecs        bool `json:"refspecs"`
	// UploadRawArtifacts and ArtifactsExclude tell GitLab that raw-format reports
	// and artifacts:exclude are handled; without them it refuses such jobs.
	UploadRawArtifacts bool `json:"upload_raw_artifacts"`
	ArtifactsExclude   bool `json:"artifacts_exclude"`
}

// StatusError is a non-success HTTP answer from GitLab.
type StatusError struct {
	Op     string
	Code   int
	Status string
	Body   string
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("%s: HTTP %s", e.Op, e.Status)
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// Temporary reports whether retrying may help (server errors, rate limits).
func (e *StatusError) Temporary() bool {
	return e.Code >= 500 || e.Code == http.StatusTooManyRequests || e.Code == http.StatusRequestTimeout
}

// IsTemporary reports whether err is worth retrying: a network error or a temporary
// HTTP status.
func IsTemporary(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Temporary()
	}
	return err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// NewClient returns a client of the GitLab at baseURL (https://gitlab.example.com/).
func NewClient(baseURL string, o ClientOptions) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("GitLab URL %q: want http(s)://host[:port][/path]", baseURL)
	}
	hc := o.HTTP
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("tls-ca-file: %w", err)
			}
			pool, _ := x509.SystemCertPool()
			if pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls-ca-file %s: no PEM certificates found", o.CAFile)
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
		hc = &http.Client{Transport: tr}
	}
	if o.Transport != nil {
		wrapped := *hc
		wrapped.Transport = o.Transport(hc.Transport)
		hc = &wrapped
	}
	return &Client{base: u, http: hc, info: VersionInfo{
		Name: "flotilla", Version: version.Version, Revision: version.Revision, Platform: runtime.GOOS,
		Architecture: runtime.GOARCH, Executor: o.Executor, Shell: o.Shell,
		Features: Features{Variables: true, Image: true, Services: true, Artifacts: true, UploadMultiple: true,
			Masking: true, Cancelable: true, TraceReset: true, TraceChecksum: true, TraceSize: true,
			MultiBuildSteps: true, ReturnExitCode: true, UploadRawArtifacts: true, ArtifactsExclude: true},
	}}, nil
}

// URL returns the GitLab base URL.
func (c *Client) URL() string { return c.base.String() }

func (c *Client) endpoint(path string) string { return c.base.String() + "/api/v4/" + path }

// do sends a request and returns the response with its body read (bounded).
func (c *Client) do(ctx context.Context, op, method, path string, hdr http.Header, body io.Reader) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(path), body)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", op, err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", "flotilla "+version.Version)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp, nil, fmt.Errorf("%s: read response: %w", op, err)
	}
	return resp, b, nil
}

func (c *Client) doJSON(ctx context.Context, op, method, path string, in any) (*http.Response, []byte, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", op, err)
	}
	return c.do(ctx, op, method, path, http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json"}}, bytes.NewReader(b))
}

func statusErr(op string, resp *http.Response, body []byte) error {
	msg := strings.TrimSpace(string(body))
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return &StatusError{Op: op, Code: resp.StatusCode, Status: resp.Status, Body: msg}
}

// RegisteredRunner is GitLab's answer to verify and register: the runner's ID and its
// authentication token with its expiry.
type RegisteredRunner struct {
	ID             int64     `json:"id"`
	Token          string    `json:"token"`
	TokenExpiresAt time.Time `json:"token_expires_at"`
}

// VerifyRunner checks a runner authentication token (POST /api/v4/runners/verify).
// A 403 means the token is not valid (or the runner was deleted).
func (c *Client) VerifyRunner(ctx context.Context, token, systemID string) (RegisteredRunner, error) {
	const op = "verify runner"
	resp, body, err := c.doJSON(ctx, op, http.MethodPost, "runners/verify", map[string]string{"token": token, "system_id": systemID})
	if err != nil {
		return RegisteredRunner{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return RegisteredRunner{}, statusErr(op, resp, body)
	}
	var out RegisteredRunner
	// Older servers answer 200 with an empty body: the token is valid, nothing more.
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &out); err != nil {
			return out, fmt.Errorf("%s: decode response: %w", op, err)
		}
	}
	if out.Token == "" {
		out.Token = token
	}
	return out, nil
}

// RegisterRequest is the legacy registration (POST /api/v4/runners) with a
// registration token.
type RegisterRequest struct {
	Token          string      `json:"token"`
	Description    string      `json:"description,omitempty"`
	TagList        string      `json:"tag_list,omitempty"`
	RunUntagged    bool        `json:"run_untagged"`
	Locked         bool        `json:"locked"`
	Paused         bool        `json:"paused"`
	AccessLevel    string      `json:"access_level,omitempty"`
	MaximumTimeout int         `json:"maximum_timeout,omitempty"`
	Info           VersionInfo `json:"info"`

	// MaintenanceNote is free text for the runner's administrators.
	MaintenanceNote string `json:"maintenance_note,omitempty"`
}

// RegisterRunner creates a runner with a registration token (deprecated by GitLab in
// favour of runner authentication tokens created in the UI).
func (c *Client) RegisterRunner(ctx context.Context, r RegisterRequest) (RegisteredRunner, error) {
	const op = "register runner"
	r.Info = c.info
	resp, body, err := c.doJSON(ctx, op, http.MethodPost, "runners", r)
	if err != nil {
		return RegisteredRunner{}, err
	}
	if resp.StatusCode != http.StatusCreated {
		return RegisteredRunner{}, statusErr(op, resp, body)
	}
	var out RegisteredRunner
	if err := json.Unmarshal(body, &out); err != nil {
		return out, fmt.Errorf("%s: decode response: %w", op, err)
	}
	return out, nil
}

// UnregisterRunner deletes the runner (DELETE /api/v4/runners): for runners created
// with a registration token.
func (c *Client) UnregisterRunner(ctx context.Context, token string) error {
	return c.delete(ctx, "unregister runner", "runners", map[string]string{"token": token})
}

// UnregisterManager deletes only this host's runner manager record (DELETE
// /api/v4/runners/managers): for runners created in the UI (glrt- tokens), whose
// runner itself belongs to the UI.
func (c *Client) UnregisterManager(ctx context.Context, token, systemID string) error {
	return c.delete(ctx, "unregister runner manager", "runners/managers", map[string]string{"token": token, "system_id": systemID})
}

func (c *Client) delete(ctx context.Context, op, path string, in any) error {
	resp, body, err := c.doJSON(ctx, op, http.MethodDelete, path, in)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return statusErr(op, resp, body)
	}
	return nil
}

// RequestJob asks for a job (POST /api/v4/jobs/request). GitLab may hold the request
// open (long polling) until a job comes or its timeout ends. It returns nil, nil when
// there is no job (204).
func (c *Client) RequestJob(ctx context.Context, token, systemID string) (*JobResponse, error) {
	const op = "request job"
	resp, body, err := c.doJSON(ctx, op, http.MethodPost, "jobs/request",
		map[string]any{"token": token, "system_id": systemID, "info": c.info})
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil, nil
	case http.StatusCreated:
		var job JobResponse
		if err := json.Unmarshal(body, &job); err != nil {
			return nil, fmt.Errorf("%s: decode job: %w", op, err)
		}
		return &job, nil
	}
	return nil, statusErr(op, resp, body)
}

// UpdateRequest is the body of PUT /api/v4/jobs/:id.
type UpdateRequest struct {
	Info          VersionInfo `json:"info"`
	Token         string      `json:"token"`
	State         string      `json:"state"`
	FailureReason string      `json:"failure_reason,omitempty"`
	ExitCode      *int        `json:"exit_code,omitempty"`
	Output        *Output     `json:"output,omitempty"`
}

// Output describes the full trace in a final update so GitLab can check it.
type Output struct {
	Checksum string `json:"checksum"`
	Bytesize int    `json:"bytesize"`
}

// UpdateResult is what GitLab said to an update or trace upload.
type UpdateResult struct {
	// Accepted: the update was taken (200/202 for traces).
	Accepted bool
	// Gone: the job is no longer this runner's to update (403, 404): canceled,
	// erased, or already finished.
	Gone bool
	// Canceling: the Job-Status header says the job is being canceled or was.
	Canceling bool
	// RetryAfter: GitLab accepted the request but wants it sent again after this
	// delay (202 to a final update while it checks the trace).
	RetryAfter time.Duration
	// UpdateInterval is X-GitLab-Trace-Update-Interval, when sent.
	UpdateInterval time.Duration
	// RemoteLength: for a trace upload, how many bytes the server has (its Range
	// header), -1 when absent.
	RemoteLength int
}

func readResult(resp *http.Response) UpdateResult {
	r := UpdateResult{RemoteLength: -1}
	switch s := strings.ToLower(resp.Header.Get("Job-Status")); s {
	case "canceling", "canceled":
		r.Canceling = true
	}
	if v, err := strconv.Atoi(resp.Header.Get("X-GitLab-Trace-Update-Interval")); err == nil && v > 0 {
		r.UpdateInterval = time.Duration(v) * time.Second
	}
	if rg := resp.Header.Get("Range"); rg != "" {
		if _, end, ok := strings.Cut(rg, "-"); ok {
			if n, err := strconv.Atoi(strings.TrimSpace(end)); err == nil {
				r.RemoteLength = n
			}
		}
	}
	return r
}

// UpdateJob reports the job's state (PUT /api/v4/jobs/:id).
func (c *Client) UpdateJob(ctx context.Context, id int64, req UpdateRequest) (UpdateResult, error) {
	op := fmt.Sprintf("update job %d (%s)", id, req.State)
	req.Info = c.info
	resp, body, err := c.doJSON(ctx, op, http.MethodPut, "jobs/"+strconv.FormatInt(id, 10), req)
	if err != nil {
		return UpdateResult{}, err
	}
	r := readResult(resp)
	switch resp.StatusCode {
	case http.StatusOK:
		r.Accepted = true
	case http.StatusAccepted:
		r.Accepted = true
		r.RetryAfter = max(r.UpdateInterval, time.Second)
	case http.StatusForbidden, http.StatusNotFound:
		r.Gone = true
	default:
		return r, statusErr(op, resp, body)
	}
	return r, nil
}

// ErrRangeMismatch is returned by PatchTrace on 416: the server holds a different
// amount of trace than the upload assumed; UpdateResult.RemoteLength says how much.
var ErrRangeMismatch = errors.New("trace range mismatch")

// PatchTrace appends chunk, which starts at byte offset of the job log (PATCH
// /api/v4/jobs/:id/trace with Content-Range offset-end, end inclusive).
func (c *Client) PatchTrace(ctx context.Context, id int64, token string, offset int, chunk []byte) (UpdateResult, error) {
	op := fmt.Sprintf("patch trace of job %d", id)
	end := offset + len(chunk) - 1
	if len(chunk) == 0 {
		end = offset
	}
	hdr := http.Header{"Job-Token": {token}, "Content-Type": {"text/plain"},
		"Content-Range": {fmt.Sprintf("%d-%d", offset, end)}}
	resp, body, err := c.do(ctx, op, http.MethodPatch, "jobs/"+strconv.FormatInt(id, 10)+"/trace", hdr, bytes.NewReader(chunk))
	if err != nil {
		return UpdateResult{}, err
	}
	r := readResult(resp)
	switch resp.StatusCode {
	case http.StatusAccepted, http.StatusOK:
		r.Accepted = true
	case http.StatusForbidden, http.StatusNotFound:
		r.Gone = true
	case http.StatusRequestedRangeNotSatisfiable:
		return r, fmt.Errorf("%s: %w (server has %d bytes)", op, ErrRangeMismatch, r.RemoteLength)
	default:
		return r, statusErr(op, resp, body)
	}
	return r, nil
}

// ArtifactsOptions describe one artifacts archive upload.
type ArtifactsOptions struct {
	Type, Format, ExpireIn string
	// FileName is the multipart file name (artifacts.zip).
	FileName string
}

// UploadArtifacts uploads an artifacts archive (POST /api/v4/jobs/:id/artifacts,
// multipart field "file").
func (c *Client) UploadArtifacts(ctx context.Context, id int64, token string, archive []byte, o ArtifactsOptions) error {
	op := fmt.Sprintf("upload artifacts of job %d", id)
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	name := o.FileName
	if name == "" {
		name = "artifacts.zip"
	}
	fw, err := mw.CreateFormFile("file", name)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if _, err := fw.Write(archive); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if err := mw.Close(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	q := url.Values{}
	q.Set("artifact_type", nonEmpty(o.Type, "archive"))
	q.Set("artifact_format", nonEmpty(o.Format, "zip"))
	if o.ExpireIn != "" {
		q.Set("expire_in", o.ExpireIn)
	}
	hdr := http.Header{"Job-Token": {token}, "Content-Type": {mw.FormDataContentType()}}
	resp, body, err := c.do(ctx, op, http.MethodPost, "jobs/"+strconv.FormatInt(id, 10)+"/artifacts?"+q.Encode(), hdr, &buf)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return statusErr(op, resp, body)
	}
	return nil
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
