package gitlab_test

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

func TestToJob(t *testing.T) {
	p := gitlab.JobResponse{
		ID: 42, Token: "glcbt-tok", AllowGitFetch: true,
		JobInfo: gitlab.JobInfo{Name: "build", Stage: "test"},
		GitInfo: gitlab.GitInfo{RepoURL: "https://gitlab-ci-token:glcbt-tok@gitlab.example.com/g/p.git", Ref: "main", Sha: "abc123", Depth: 20,
			Refspecs: []string{"+refs/pipelines/7:refs/pipelines/7", "+refs/heads/main:refs/remotes/origin/main"}},
		RunnerInfo: gitlab.RunnerInfo{Timeout: 120},
		Variables: []gitlab.JobVariable{{Key: "A", Value: "1", Public: true}, {Key: "S", Value: "sekrit", Masked: true},
			{Key: "F", Value: "content", File: true}},
		Steps: []gitlab.Step{{Name: "script", Script: []string{"echo a", "echo b"}, Timeout: 120},
			{Name: "after_script", Script: []string{"echo after"}, Timeout: 30}},
		Image:    gitlab.Image{Name: "alpine:3", Entrypoint: []string{"/bin/sh"}},
		Services: []gitlab.Image{{Name: "postgres:16", Alias: "db"}},
		Artifacts: []gitlab.Artifact{{Name: "out", Paths: []string{"out/"}, Exclude: []string{"out/**/*.o"}, Untracked: true, ArtifactType: "archive", ArtifactFormat: "zip", ExpireIn: "1 day"},
			{Name: "junit", Paths: []string{"report.xml"}, ArtifactType: "junit", ArtifactFormat: "gzip", When: "always"}},
		Dependencies: []gitlab.Dependency{{ID: 40, Name: "compile", Token: "t40", ArtifactsFile: gitlab.ArtifactsFile{Filename: "artifacts.zip", Size: 10}},
			{ID: 41, Name: "lint", Token: "t41"}},
		Cache:    []gitlab.Cache{{Key: "k", Paths: []string{"vendor/"}, Policy: "pull-push"}},
		Features: gitlab.JobFeatures{FailureReasons: []string{"script_failure", "runner_system_failure"}},
	}
	j, err := p.ToJob("")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"id", j.ID, "42"},
		{"name", j.Name, "build"},
		{"script", strings.Join(j.Script, ";"), "echo a;echo b"},
		{"after", strings.Join(j.AfterScript, ";"), "echo after"},
		{"after timeout", j.AfterScriptTimeout, 30 * time.Second},
		{"timeout", j.Timeout, 2 * time.Minute},
		{"image", j.Image.Name, "alpine:3"},
		{"service alias", j.Services[0].Alias, "db"},
		{"repo without credentials", j.Source.RepoURL, "https://gitlab.example.com/g/p.git"},
		{"source", j.Source.Kind, jobs.SourceGit},
		{"token", j.Source.Token, "glcbt-tok"},
		{"sha", j.Source.SHA, "abc123"},
		{"depth", j.Source.Depth, 20},
		{"refspecs", strings.Join(j.Source.Refspecs, " "), "+refs/pipelines/7:refs/pipelines/7 +refs/heads/main:refs/remotes/origin/main"},
		{"allow_git_fetch", j.Source.AllowFetch, true},
		{"artifacts (archive and report)", len(j.Artifacts), 2},
		{"artifact when", j.Artifacts[0].When, "on_success"},
		{"expire", j.Artifacts[0].ExpireIn, "1 day"},
		{"exclude", strings.Join(j.Artifacts[0].Exclude, ","), "out/**/*.o"},
		{"untracked", j.Artifacts[0].Untracked, true},
		{"report type", j.Artifacts[1].Type + "/" + j.Artifacts[1].Format, "junit/gzip"},
		{"report when", j.Artifacts[1].When, "always"},
		{"caches", len(j.Caches), 1},
		{"masked", strings.Join(j.Variables.MaskedValues(), ","), "sekrit,glcbt-tok"},
		{"file", j.Variables[2].File, true},
		{"known reason", j.Reason("script_failure"), "script_failure"},
		{"unknown reason", j.Reason("job_canceled"), "unknown_failure"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	j2, err := p.ToJob("http://internal:8080")
	if err != nil || j2.Source.RepoURL != "http://internal:8080/g/p.git" {
		t.Errorf("clone_url: %v %q", err, j2.Source.RepoURL)
	}
	p.Steps = append(p.Steps, gitlab.Step{Name: "release_notes", Script: []string{"x"}})
	if _, err := p.ToJob(""); err == nil || !strings.Contains(err.Error(), `step "release_notes" is not supported`) {
		t.Errorf("unknown step: %v", err)
	}
}

func client(t *testing.T, srv *gitlabtest.Server) *gitlab.Client {
	t.Helper()
	c, err := gitlab.NewClient(srv.URL, gitlab.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// take enqueues a job and requests it as a runner does.
func take(t *testing.T, srv *gitlabtest.Server, c *gitlab.Client) *gitlab.Job {
	t.Helper()
	srv.AddRunner("glrt-t")
	srv.Enqueue(gitlab.JobResponse{JobInfo: gitlab.JobInfo{Name: "j"}, Steps: []gitlab.Step{{Name: "script", Script: []string{"true"}}}})
	resp, err := c.RequestJob(context.Background(), "glrt-t", "s_test")
	if err != nil || resp == nil {
		t.Fatalf("request: %v %v", resp, err)
	}
	j, err := resp.ToJob("")
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestRequestJobLongPollAndErrors(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{LongPoll: 50 * time.Millisecond})
	c := client(t, srv)
	srv.AddRunner("glrt-a")
	if j, err := c.RequestJob(context.Background(), "glrt-a", "s_x"); j != nil || err != nil {
		t.Fatalf("empty queue: %v %v, want 204 → nil, nil", j, err)
	}
	_, err := c.RequestJob(context.Background(), "glrt-unknown", "s_x")
	var se *gitlab.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusForbidden || gitlab.IsTemporary(err) {
		t.Errorf("unknown token: %v, want a permanent 403", err)
	}
	srv.FailNext(1, http.StatusBadGateway)
	if _, err := c.RequestJob(context.Background(), "glrt-a", "s_x"); !gitlab.IsTemporary(err) {
		t.Errorf("502: %v, want temporary", err)
	}
	// A job arriving during the long poll is handed out. The poll is long (a minute),
	// so that a loaded machine cannot let it end before the job comes; a poll that
	// ended empty returns no job.
	slow := gitlabtest.New(t, gitlabtest.Options{LongPoll: time.Minute})
	slow.AddRunner("glrt-a")
	go func() {
		time.Sleep(10 * time.Millisecond)
		slow.Enqueue(gitlab.JobResponse{JobInfo: gitlab.JobInfo{Name: "late"}})
	}()
	j, err := client(t, slow).RequestJob(context.Background(), "glrt-a", "s_x")
	if err != nil || j == nil || j.JobInfo.Name != "late" {
		t.Errorf("long poll: %+v %v", j, err)
	}
}

func TestTraceResendsFromServerRange(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	c := client(t, srv)
	j := take(t, srv, c)
	tr := c.NewTrace(j, gitlab.TraceOptions{Interval: 5 * time.Millisecond})
	tr.Start(context.Background())
	var want strings.Builder
	for i := range 6 {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		tr.Write([]byte(line))
		if i == 2 {
			// Once the first lines are on the server, it loses the last byte: the
			// next upload gets 416 and must resend from the server's length.
			eventually.NoError(t, "the first lines to be uploaded", 10*time.Second, func() error {
				if got := srv.Job(j.GitLabID).Trace; len(got) != want.Len() {
					return fmt.Errorf("server trace %q", got)
				}
				return nil
			})
			srv.ForgetTraceOnce(j.GitLabID)
		}
	}
	if err := tr.Finish(context.Background(), func(int) time.Duration { return time.Millisecond }); err != nil {
		t.Fatal(err)
	}
	if n := srv.Requests("PATCH trace 416"); n != 1 {
		t.Errorf("%d range mismatches, want the one provoked", n)
	}
	got := srv.Job(j.GitLabID).Trace
	if string(got) != want.String() {
		t.Errorf("server trace %q, want %q", got, want.String())
	}
	out := tr.Output()
	if out.Bytesize != len(got) || out.Checksum != fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(got)) {
		t.Errorf("output %+v", out)
	}
}

func TestTraceCancellationAndInterval(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{UpdateInterval: 7})
	c := client(t, srv)
	j := take(t, srv, c)
	var mu sync.Mutex
	var causes []error
	stopped := make(chan struct{})
	tr := c.NewTrace(j, gitlab.TraceOptions{Interval: 10 * time.Millisecond, ForceSendInterval: 10 * time.Millisecond, OnStop: func(err error) {
		mu.Lock()
		causes = append(causes, err)
		mu.Unlock()
		close(stopped)
	}})
	tr.Write([]byte("hello\n"))
	tr.Start(context.Background())
	eventually.NoError(t, "the server's 7s interval", 10*time.Second, func() error {
		if iv := tr.Interval(); iv != 7*time.Second {
			return fmt.Errorf("interval %v", iv)
		}
		return nil
	})
	// The next contact is 7s away; a canceled job is noticed at the final flush at
	// the latest, here through the state update of the silent job.
	srv.Cancel(j.GitLabID)
	r, err := c.UpdateJob(context.Background(), j.GitLabID, gitlab.UpdateRequest{Token: j.Token, State: "running"})
	if err != nil || !r.Canceling {
		t.Fatalf("update of a canceling job: %+v %v", r, err)
	}
	tr.Write([]byte("more\n"))
	_ = tr.Finish(context.Background(), func(int) time.Duration { return time.Millisecond })
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("OnStop not called for a canceling job")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(causes) != 1 || !errors.Is(causes[0], gitlab.ErrJobCanceled) {
		t.Errorf("causes %v", causes)
	}
	// Once final, the job is gone: 403.
	if _, err := c.UpdateJob(context.Background(), j.GitLabID, gitlab.UpdateRequest{Token: j.Token, State: "failed"}); err != nil {
		t.Fatal(err)
	}
	r, err = c.UpdateJob(context.Background(), j.GitLabID, gitlab.UpdateRequest{Token: j.Token, State: "failed"})
	if err != nil || !r.Gone {
		t.Errorf("update of a finished job: %+v %v, want gone", r, err)
	}
	if _, err := c.PatchTrace(context.Background(), j.GitLabID, j.Token, 0, []byte("x")); err != nil {
		t.Errorf("patch of a finished job: %v", err)
	}
	if st := srv.Job(j.GitLabID).State; st != gitlabtest.Canceled {
		t.Errorf("server state %s, want canceled", st)
	}
}

func TestTraceLimit(t *testing.T) {
	srv := gitlabtest.New(t, gitlabtest.Options{})
	c := client(t, srv)
	j := take(t, srv, c)
	tr := c.NewTrace(j, gitlab.TraceOptions{Limit: 10})
	tr.Write([]byte("0123456789abcdef"))
	tr.Write([]byte("more"))
	got := string(tr.Bytes())
	if !strings.HasPrefix(got, "0123456789\n") || !strings.Contains(got, "exceeded limit of 10 bytes") || strings.Count(got, "more") != 1 {
		t.Errorf("limited trace %q", got)
	}
}

func TestTarGzToZip(t *testing.T) {
	var tgz bytes.Buffer
	gz := gzip.NewWriter(&tgz)
	tw := tar.NewWriter(gz)
	tw.WriteHeader(&tar.Header{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "out/a.txt", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	gz.Close()
	z, n, err := gitlab.TarGzToZip(tgz.Bytes())
	if err != nil || n != 2 {
		t.Fatalf("convert: %d %v", n, err)
	}
	zr, err := zip.NewReader(bytes.NewReader(z), int64(len(z)))
	if err != nil {
		t.Fatal(err)
	}
	rc, _ := zr.File[1].Open()
	b, _ := io.ReadAll(rc)
	if zr.File[1].Name != "out/a.txt" || string(b) != "hello" {
		t.Errorf("zip entry %s = %q", zr.File[1].Name, b)
	}
}

// BenchmarkTraceUpload measures how fast a job log reaches the server through
// incremental PATCH uploads (1 KiB writes, 20ms interval).
func BenchmarkTraceUpload(b *testing.B) {
	srv := gitlabtest.New(b, gitlabtest.Options{})
	c, _ := gitlab.NewClient(srv.URL, gitlab.ClientOptions{})
	srv.AddRunner("glrt-b")
	line := bytes.Repeat([]byte("x"), 1023)
	line = append(line, '\n')
	total := 0
	b.ResetTimer()
	for range b.N {
		srv.Enqueue(gitlab.JobResponse{JobInfo: gitlab.JobInfo{Name: "b"}})
		resp, err := c.RequestJob(context.Background(), "glrt-b", "s_b")
		if err != nil || resp == nil {
			b.Fatal(err)
		}
		j, _ := resp.ToJob("")
		tr := c.NewTrace(j, gitlab.TraceOptions{Interval: 20 * time.Millisecond, Limit: 64 << 20})
		tr.Start(context.Background())
		for range 1024 {
			tr.Write(line)
		}
		if err := tr.Finish(context.Background(), func(int) time.Duration { return time.Millisecond }); err != nil {
			b.Fatal(err)
		}
		total += 1024 * len(line)
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds()/(1<<20), "MiB/s")
	b.ReportMetric(float64(srv.Requests("PATCH trace"))/float64(b.N), "patches/job")
}

// TestRawArtifactFormat: the raw format (dotenv) is the one file as it is; two files
// cannot be sent raw.
func TestRawArtifactFormat(t *testing.T) {
	tgz := func(files ...string) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for _, f := range files {
			tw.WriteHeader(&tar.Header{Name: f, Mode: 0o644, Size: 3, Typeflag: tar.TypeReg})
			tw.Write([]byte("A=1"))
		}
		tw.Close()
		zw.Close()
		return buf.Bytes()
	}
	data, name, err := gitlab.TarGzToRaw(tgz("out/build.env"))
	if err != nil || name != "build.env" || string(data) != "A=1" {
		t.Errorf("raw = %q %q %v", data, name, err)
	}
	if _, _, err := gitlab.TarGzToRaw(tgz("a.env", "b.env")); err == nil || !strings.Contains(err.Error(), "one file") {
		t.Errorf("two files sent raw: %v", err)
	}
}

// TestDownloadArtifactsKeepsTheTokenOnGitLab is GitLab with artifacts in object
// storage: the download is redirected to a pre-signed URL on another host, which gets
// the archive request without the job token; a redirect within GitLab keeps it.
func TestDownloadArtifactsKeepsTheTokenOnGitLab(t *testing.T) {
	var mu sync.Mutex
	tokens := map[string]string{}
	store := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		tokens["store"] = r.Header.Get("Job-Token")
		mu.Unlock()
		w.Write([]byte("archive"))
	}))
	defer store.Close()
	gl := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		tokens[r.URL.Path] = r.Header.Get("Job-Token")
		mu.Unlock()
		switch r.URL.Path {
		case "/api/v4/jobs/7/artifacts":
			http.Redirect(w, r, "/api/v4/jobs/7/artifacts/moved", http.StatusFound)
		case "/api/v4/jobs/7/artifacts/moved":
			http.Redirect(w, r, store.URL+"/bucket/7.zip?X-Amz-Signature=s", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer gl.Close()
	c, err := gitlab.NewClient(gl.URL, gitlab.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	body, err := c.DownloadArtifacts(context.Background(), 7, "job-secret")
	if err != nil || string(body) != "archive" {
		t.Fatalf("download: %q %v", body, err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string]string{"/api/v4/jobs/7/artifacts": "job-secret", "/api/v4/jobs/7/artifacts/moved": "job-secret", "store": ""}
	for k, v := range want {
		if tokens[k] != v {
			t.Errorf("%s got token %q, want %q", k, tokens[k], v)
		}
	}
}
