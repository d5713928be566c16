package dockerautoscaler

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"github.com/flotilla-ci/flotilla/connector"
	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/host/cachestore"
	"github.com/flotilla-ci/flotilla/host/cachestore/storetest"
	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/dockertest"
	"github.com/flotilla-ci/flotilla/host/internal/gittest"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// tunnel returns a connection to a real sshd on loopback, through which the executor
// reaches the real Docker Engine's socket, as it would on an instance.
func tunnel(t *testing.T) *connector.Client {
	t.Helper()
	if ok, why := sshdtest.Available(); !ok {
		t.Skip(why)
	}
	srv := sshdtest.Start(t, sshdtest.Options{})
	c, err := connector.Dial(context.Background(), srv.ConnectInfo("i-docker"), connector.DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestJobInContainerThroughTunnel(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "data.txt"), []byte("from the working tree\n"), 0o644)

	tests := []struct {
		name    string
		job     jobs.Job
		opts    Options
		status  executors.Status
		reason  executors.FailureReason
		exit    int
		wantLog []string
	}{
		{"script and after_script share the volume",
			jobs.Job{ID: "d1", Script: []string{"cat data.txt", "echo made > out.txt"}, AfterScript: []string{"cat out.txt", "uname -s"}},
			Options{Image: dockertest.Image, PullPolicy: []string{PullNever}}, executors.StatusSuccess, "", 0,
			[]string{"from the working tree", "made", "Linux"}},
		{"script failure", jobs.Job{ID: "d2", Script: []string{"exit 4"}},
			Options{Image: dockertest.Image, PullPolicy: []string{PullIfNotPresent}}, executors.StatusFailed, executors.ScriptFailure, 4, nil},
		{"image not allowed", jobs.Job{ID: "d3", Script: []string{"true"}},
			Options{Image: dockertest.Image, AllowedImages: []string{"docker.io/library/*"}, PullPolicy: []string{PullNever}},
			executors.StatusFailed, executors.ImagePullFailure, -1, []string{"is not allowed"}},
		{"pull policy not allowed", jobs.Job{ID: "d4", Script: []string{"true"}},
			Options{Image: dockertest.Image, PullPolicy: []string{PullAlways}, AllowedPullPolicies: []string{PullNever}},
			executors.StatusFailed, executors.ImagePullFailure, -1, []string{"allowed_pull_policies"}},
		{"missing image with never", jobs.Job{ID: "d5", Script: []string{"true"}, Image: jobs.Image{Name: "flotilla-test/absent:1"}},
			Options{PullPolicy: []string{PullNever}}, executors.StatusFailed, executors.ImagePullFailure, -1, []string{"pull_policy is never"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.job.Source = jobs.Source{Kind: jobs.SourceLocal, Dir: src}
			env, err := New(cli, &tt.job, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			var log bytes.Buffer
			res := executors.Run(context.Background(), &tt.job, env, &log, executors.RunOptions{Executor: "docker-autoscaler"})
			if res.Status != tt.status || res.FailureReason != tt.reason || res.ExitCode != tt.exit {
				t.Fatalf("result %+v\n%s", res, log.String())
			}
			for _, w := range tt.wantLog {
				if !strings.Contains(log.String(), w) {
					t.Errorf("log lacks %q:\n%s", w, log.String())
				}
			}
			assertNothingLeft(t, local, tt.job.ID)
		})
	}
}

func TestCancelledJobLeavesNoContainer(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	job := &jobs.Job{ID: "cancel-1", Script: []string{"echo started", "sleep 60"}}
	env, err := New(cli, job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := &notifyWriter{substr: "started", hit: make(chan struct{})}
	go func() { <-out.hit; cancel() }()
	res := executors.Run(ctx, job, env, out, executors.RunOptions{})
	if res.Status != executors.StatusCanceled {
		t.Fatalf("status %s, want canceled", res.Status)
	}
	assertNothingLeft(t, local, job.ID)
}

type notifyWriter struct {
	bytes.Buffer
	substr string
	hit    chan struct{}
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	n, err := w.Buffer.Write(p)
	if w.hit != nil && strings.Contains(w.String(), w.substr) {
		close(w.hit)
		w.hit = nil
	}
	return n, err
}

func assertNothingLeft(t *testing.T, local interface {
	ContainerList(context.Context, client.ContainerListOptions) (client.ContainerListResult, error)
	VolumeList(context.Context, client.VolumeListOptions) (client.VolumeListResult, error)
}, jobID string) {
	t.Helper()
	f := make(client.Filters).Add("label", LabelJob+"="+jobID)
	cs, err := local.ContainerList(context.Background(), client.ContainerListOptions{All: true, Filters: f})
	if err != nil || len(cs.Items) != 0 {
		t.Errorf("containers left for job %s: %d (%v)", jobID, len(cs.Items), err)
	}
	vs, err := local.VolumeList(context.Background(), client.VolumeListOptions{Filters: f})
	if err != nil || len(vs.Items) != 0 {
		t.Errorf("volumes left for job %s: %d (%v)", jobID, len(vs.Items), err)
	}
}

func TestImageAllowed(t *testing.T) {
	tests := []struct {
		image   string
		allowed []string
		ok      bool
	}{
		{"alpine:3", nil, true},
		{"alpine:3", []string{"alpine:*"}, true},
		{"alpine:3", []string{"docker.io/library/*"}, true},
		{"registry.example.com/team/app:1", []string{"registry.example.com/**"}, true},
		{"registry.example.com/team/app:1", []string{"registry.example.com/*"}, false},
		{"evil.example.com/alpine:3", []string{"alpine:*"}, false},
	}
	for _, tt := range tests {
		if err := imageAllowed(tt.image, tt.allowed); (err == nil) != tt.ok {
			t.Errorf("imageAllowed(%q, %q) = %v, want ok=%v", tt.image, tt.allowed, err, tt.ok)
		}
	}
}

func TestServicesReachableByAlias(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	// The service serves a file written from a job variable: services get the job's
	// variables, and the job reaches them by their aliases on the job's network.
	svc := jobs.Image{Name: dockertest.Image, Alias: "web",
		Command: []string{"sh", "-c", `mkdir -p /srv && echo "greeting=$GREETING" > /srv/index.html && exec httpd -f -p 8080 -h /srv`}}
	fetch := func(host string) string {
		return `(for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://` + host + `:8080/ && exit 0; sleep 0.3; done; exit 1)`
	}
	job := jobs.Job{ID: "svc-1", Services: []jobs.Image{svc}, Variables: jobs.Variables{{Key: "GREETING", Value: "hello from the job"}},
		Script: []string{fetch("web"), fetch("flotilla-test__busybox"), fetch("flotilla-test-busybox")},
		Source: jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
	res, log := runJob(t, cli, &job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever}}, executors.RunOptions{Executor: "docker-autoscaler"})
	if res.Status != executors.StatusSuccess {
		t.Fatalf("result %+v\n%s", res, log)
	}
	if got := strings.Count(log, "greeting=hello from the job"); got != 3 {
		t.Errorf("service answered %d times by alias, want 3 (web, __ and - forms):\n%s", got, log)
	}
	assertNothingLeft(t, local, job.ID)
	nets, err := local.NetworkList(context.Background(), client.NetworkListOptions{Filters: make(client.Filters).Add("label", LabelJob+"="+job.ID)})
	if err != nil || len(nets.Items) != 0 {
		t.Errorf("networks left for the job: %d (%v)", len(nets.Items), err)
	}

	// A service image outside allowed_services is refused before anything starts.
	job.ID = "svc-2"
	res, log = runJob(t, cli, &job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever}, AllowedServices: []string{"postgres:*"}}, executors.RunOptions{})
	if res.FailureReason != executors.ImagePullFailure || !strings.Contains(log, "allowed_services") {
		t.Errorf("disallowed service: %+v", res)
	}
	assertNothingLeft(t, local, job.ID)
}

func TestServiceAliases(t *testing.T) {
	tests := map[string][]string{
		"postgres:15": {"postgres"},
		"team/db:1":   {"team__db", "team-db"},
		"registry.example.com:5000/a/b@sha256:abc": {"registry.example.com:5000__a__b", "registry.example.com:5000-a-b"},
	}
	for img, want := range tests {
		if got := serviceAliases(jobs.Image{Name: img}); !slices.Equal(got, want) {
			t.Errorf("serviceAliases(%s) = %v, want %v", img, got, want)
		}
	}
	if got := serviceAliases(jobs.Image{Name: "redis", Alias: "cache, kv"}); !slices.Equal(got, []string{"redis", "cache", "kv"}) {
		t.Errorf("aliases = %v", got)
	}
}

// TestCacheThroughContainers saves a cache from one job's volume and restores it into
// another's: on the runner host, and in an S3 store that the job's busybox container
// cannot use itself (no curl, and the store listens on the host's loopback), so the
// runner host relays.
func TestCacheThroughContainers(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	s3 := storetest.S3(t)
	store, err := cachestore.New(context.Background(), s3.Cache)
	if err != nil {
		t.Fatal(err)
	}
	shared := executors.NewSharedCache(store, s3.Cache, "glrt-docker-test", 1)
	for _, where := range []struct {
		name string
		opts executors.RunOptions
		want string
	}{
		{"runner host", executors.RunOptions{CacheDir: t.TempDir()}, `Restored cache "c"`},
		{"s3", executors.RunOptions{SharedCache: shared}, `Restored cache "c" from ` + store.Describe() + ` (`},
	} {
		t.Run(where.name, func(t *testing.T) {
			run := func(id string, script ...string) string {
				job := jobs.Job{ID: id, Script: script, Caches: []jobs.Cache{{Key: "c", Paths: []string{"vendor/"}}},
					Source: jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
				res, log := runJob(t, cli, &job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever}}, where.opts)
				if res.Status != executors.StatusSuccess {
					t.Fatalf("job %s: %+v\n%s", id, res, log)
				}
				assertNothingLeft(t, local, id)
				return log
			}
			if log := run("cache-1", "mkdir -p vendor", "echo cached-bytes > vendor/lib"); !strings.Contains(log, `Saved cache "c"`) {
				t.Fatalf("not saved:\n%s", log)
			}
			if log := run("cache-2", "cat vendor/lib"); !strings.Contains(log, "cached-bytes") || !strings.Contains(log, where.want) {
				t.Fatalf("not restored in a new volume:\n%s", log)
			}
		})
	}
}

// archiveStore keeps the archives the runtime collects, by artifact name.
type archiveStore map[string][]byte

func (s archiveStore) Store(_ context.Context, a jobs.Artifact, archive io.Reader, _ io.Writer) error {
	b, err := io.ReadAll(archive)
	s[a.Name] = b
	return err
}

// TestArtifactsThroughContainers: artifacts are packed in a container of the job's
// (busybox) image, exclude leaves files out, untracked says that the image has no git,
// and a later job in a new volume gets the archive back as a dependency.
func TestArtifactsThroughContainers(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	store := archiveStore{}
	run := func(job jobs.Job) string {
		job.Source = jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}
		res, log := runJob(t, cli, &job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever}}, executors.RunOptions{Artifacts: store})
		if res.Status != executors.StatusSuccess {
			t.Fatalf("job %s: %+v\n%s", job.ID, res, log)
		}
		assertNothingLeft(t, local, job.ID)
		return log
	}
	log := run(jobs.Job{ID: "art-1", Script: []string{"mkdir -p out/obj", "echo built > out/bin", "echo o > out/obj/x.o"},
		Artifacts: []jobs.Artifact{{Name: "build", Paths: []string{"out/"}, Exclude: []string{"out/**/*.o"}, Untracked: true, When: "on_success"}}})
	for _, w := range []string{"out/**/*.o: 1 excluded", "untracked: git is not installed"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	if store["build"] == nil {
		t.Fatalf("nothing stored:\n%s", log)
	}
	dep := jobs.Dependency{ID: "art-1", Name: "build", Open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(store["build"])), nil
	}}
	if log := run(jobs.Job{ID: "art-2", Dependencies: []jobs.Dependency{dep}, Script: []string{"cat out/bin", "test ! -e out/obj/x.o"}}); !strings.Contains(log, "built") {
		t.Errorf("dependency not restored:\n%s", log)
	}
}

// TestGetSourcesScripts: config.toml's pre_get_sources_script runs in a container of
// the job's image on the builds volume before the sources are there, with the job's
// variables, post_get_sources_script after them; a failing pre script fails the job as
// its own (script_failure) before anything else runs.
func TestGetSourcesScripts(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	repo := t.TempDir()
	for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"config", "user.email", "t@example.invalid"}, {"config", "user.name", "t"}} {
		gittest.Run(t, repo, args...)
	}
	os.WriteFile(filepath.Join(repo, "VERSION"), []byte("1.2.3\n"), 0o644)
	gittest.Run(t, repo, "add", ".")
	gittest.Run(t, repo, "commit", "-q", "-m", "v")
	src := jobs.Source{Kind: jobs.SourceGit, RepoURL: "file://" + repo, Ref: "main", SHA: gittest.Run(t, repo, "rev-parse", "HEAD")}
	opts := Options{Image: dockertest.Image, PullPolicy: []string{PullNever},
		PreGetSourcesScript:  `echo "pre sees $(ls -A | wc -l) files, $GREETING, in $(uname -s) $(cat /etc/passwd | head -c 4)"`,
		PostGetSourcesScript: `echo "post sees $(cat VERSION)"`}

	job := jobs.Job{ID: "gss-1", Source: src, Script: []string{"echo script sees $(cat VERSION)"}, Variables: jobs.Variables{{Key: "GREETING", Value: "hi"}}}
	res, out := runJob(t, cli, &job, opts, executors.RunOptions{Executor: "docker-autoscaler"})
	if res.Status != executors.StatusSuccess {
		t.Fatalf("result %+v\n%s", res, out)
	}
	pre, fetch, post, script := strings.Index(out, "pre sees 0 files, hi, in Linux root"), strings.Index(out, "Fetching changes of"),
		strings.Index(out, "post sees 1.2.3"), strings.Index(out, "script sees 1.2.3")
	if pre < 0 || fetch < pre || post < fetch || script < post {
		t.Errorf("want pre (%d) < fetch (%d) < post (%d) < script (%d):\n%s", pre, fetch, post, script, out)
	}
	assertNothingLeft(t, local, job.ID)

	job = jobs.Job{ID: "gss-2", Source: src, Script: []string{"echo script ran"}}
	opts.PreGetSourcesScript = "echo failing pre; exit 3"
	res, out = runJob(t, cli, &job, opts, executors.RunOptions{Executor: "docker-autoscaler"})
	if res.Status != executors.StatusFailed || res.FailureReason != executors.ScriptFailure ||
		!strings.Contains(out, "pre_get_sources_script failed with exit code 3") {
		t.Fatalf("failing pre script: %+v\n%s", res, out)
	}
	if strings.Contains(out, "Fetching changes") || strings.Contains(out, "script ran") {
		t.Errorf("sources fetched or script run after a failing pre script:\n%s", out)
	}
	assertNothingLeft(t, local, job.ID)
}

// TestCopiedTreeGitStrategy: a copied working tree honours GIT_STRATEGY none and empty
// (the job's own volume starts empty), and a bad value is the job's failure.
func TestCopiedTreeGitStrategy(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "data.txt"), []byte("x\n"), 0o644)
	for _, tt := range []struct {
		strategy string
		reason   executors.FailureReason
	}{{"none", ""}, {"empty", ""}, {"bogus", executors.ScriptFailure}} {
		job := jobs.Job{ID: "strategy-" + tt.strategy, Script: []string{`test -z "$(ls -A)"`}, Source: jobs.Source{Kind: jobs.SourceLocal, Dir: src},
			Variables: jobs.Variables{{Key: "GIT_STRATEGY", Value: tt.strategy}}}
		res, log := runJob(t, cli, &job, Options{Image: dockertest.Image, PullPolicy: []string{PullNever}}, executors.RunOptions{})
		bad := tt.reason != "" && !strings.Contains(log, `GIT_STRATEGY="bogus": want clone, fetch, none or empty`)
		if bad || res.FailureReason != tt.reason || (tt.reason == "") != (res.Status == executors.StatusSuccess) {
			t.Errorf("GIT_STRATEGY=%s: %+v\n%s", tt.strategy, res, log)
		}
		assertNothingLeft(t, local, job.ID)
	}
}

// dockerOverTunnel is this machine's Docker Engine twice: as the test inspects it
// (local) and as a job's executor reaches it, through an SSH tunnel (cli); the test
// image is there.
func dockerOverTunnel(t *testing.T) (local, cli *client.Client) {
	t.Helper()
	local = dockertest.Client(t)
	dockertest.EnsureImage(t, local)
	cli, err := NewClient(tunnel(t), "")
	if err != nil {
		t.Fatal(err)
	}
	return local, cli
}

// runJob runs job once in a new environment and returns the result and the log.
func runJob(t *testing.T, cli *client.Client, job *jobs.Job, o Options, ro executors.RunOptions) (executors.Result, string) {
	t.Helper()
	env, err := New(cli, job, o)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	res := executors.Run(context.Background(), job, env, &log, ro)
	return res, log.String()
}
