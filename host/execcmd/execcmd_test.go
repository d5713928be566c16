package execcmd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/connector/sshdtest"
	"github.com/flotilla-ci/flotilla/host/executors/dockertest"
	"github.com/flotilla-ci/flotilla/plugins/local"
)

// TestMain lets this test binary serve the embedded local plugin, as the runner binary
// does, so `runner exec` is tested end to end with the plugin out of process.
func TestMain(m *testing.M) {
	local.ServeIfAsked(os.Args)
	os.Exit(m.Run())
}

func run(t *testing.T, dir string, o Options) (int, string, string) {
	t.Helper()
	if ok, why := sshdtest.Available(); !ok {
		// Not needed by the local plugin itself, but its absence means the machine
		// lacks the test dependencies .ci/run installs.
		t.Log(why)
	}
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	var stdout, stderr bytes.Buffer
	o.Dir, o.Stdout, o.Stderr = dir, &stdout, &stderr
	code, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("exec: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	// Nothing may be left behind: every instance directory is deleted at the end.
	entries, _ := os.ReadDir(filepath.Join(state, "flotilla", "exec-instances"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "local-") {
			t.Errorf("instance %s left behind", e.Name())
		}
	}
	return code, stdout.String(), stderr.String()
}

func example(name string) string { return filepath.Join("..", "..", "examples", "pipelines", name) }

func TestExecInstanceExecutor(t *testing.T) {
	tests := []struct {
		dir      string
		jobs     []string
		wantCode int
		wantOut  []string
	}{
		{example("needs-dag"), nil, 0, []string{"Pipeline PASSED", "deploy", "passed"}},
		{example("failing-job"), nil, 1, []string{"Pipeline FAILED", "failed (allowed)", "after_script ran with status failed", "exit code 1"}},
		{example("needs-dag"), []string{"test-a"}, 0, []string{"build-a", "test-a"}},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.dir)+strings.Join(tt.jobs, ","), func(t *testing.T) {
			code, out, errOut := run(t, tt.dir, Options{Jobs: tt.jobs})
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d\n%s\n%s", code, tt.wantCode, out, errOut)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if tt.jobs != nil && strings.Contains(out, "build-b ") {
				t.Errorf("job not needed by %v ran:\n%s", tt.jobs, out)
			}
		})
	}
}

func TestExecDockerAutoscalerExecutor(t *testing.T) {
	cli := dockertest.Client(t)
	dockertest.EnsureImage(t, cli)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "input.txt"), []byte("42\n"), 0o644)
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(`
build:
  script:
    - cat input.txt
    - uname -s
    - test -f /.dockerenv && echo inside a container
after-build:
  needs: [build]
  image: `+dockertest.Image+`
  variables:
    GREETING: from the pipeline
  services:
    - name: `+dockertest.Image+`
      alias: web
      command: ["sh", "-c", "mkdir -p /srv && echo \"$GREETING\" > /srv/index.html && exec httpd -f -p 8080 -h /srv"]
  script:
    - (for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://web:8080/ && exit 0; sleep 0.3; done; exit 1)
`), 0o644)
	code, out, errOut := run(t, dir, Options{Executor: "docker-autoscaler", Image: dockertest.Image})
	if code != 0 {
		t.Fatalf("exit code %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "Pipeline PASSED") {
		t.Fatalf("output:\n%s", out)
	}
	logs, _ := filepath.Glob(filepath.Join(os.Getenv("XDG_STATE_HOME"), "flotilla", "exec-logs", "*", "after-build.log"))
	if len(logs) != 1 {
		t.Fatalf("after-build log: %v", logs)
	}
	if b, _ := os.ReadFile(logs[0]); !strings.Contains(string(b), "from the pipeline") {
		t.Errorf("the job did not reach its service:\n%s", b)
	}
}

func TestExecBadPipelineFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte("build:\n  scirpt: make\n"), 0o644)
	_, err := Run(context.Background(), Options{Dir: dir, Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}})
	if err == nil || !strings.Contains(err.Error(), ".gitlab-ci.yml:2:3: build.scirpt") {
		t.Fatalf("err = %v", err)
	}
}

// TestExecCacheAcrossRuns: a cache written by one `runner exec` is restored by the
// next, although every instance of the first run was deleted.
func TestExecCacheAcrossRuns(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte(`
build:
  cache:
    key: deps
    paths: [.deps/]
  script:
    - if [ -f .deps/stamp ]; then echo "restored $(cat .deps/stamp)"; else mkdir -p .deps && echo first-run > .deps/stamp; fi
`), 0o644)
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	for i, want := range []string{"first", "restored first-run"} {
		var stdout, stderr bytes.Buffer
		code, err := Run(context.Background(), Options{Dir: dir, Stdout: &stdout, Stderr: &stderr, LogDir: filepath.Join(state, "logs", want)})
		if err != nil || code != 0 {
			t.Fatalf("run %d: %d %v\n%s%s", i, code, err, stdout.String(), stderr.String())
		}
		if i == 1 {
			b, _ := os.ReadFile(filepath.Join(state, "logs", want, "build.log"))
			if !strings.Contains(string(b), want) {
				t.Fatalf("second run did not find the cache:\n%s", b)
			}
		}
	}
}

// TestExecPoolSizeFlags: a negative or huge --capacity or --max-instances is refused
// with an error naming the flag; before, a negative value silently became the default.
func TestExecPoolSizeFlags(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".gitlab-ci.yml"), []byte("build:\n  script: [echo hi]\n"), 0o644)
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"negative capacity", Options{Capacity: -1}, "--capacity -1: must be between 1 and 1000"},
		{"negative max instances", Options{MaxInstances: -3}, "--max-instances -3: must be between 1 and 100000"},
		{"huge capacity", Options{Capacity: 1 << 62}, "--capacity 4611686018427387904: must be between 1 and 1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("XDG_STATE_HOME", t.TempDir())
			o := tt.o
			o.Dir, o.Stdout, o.Stderr = dir, &bytes.Buffer{}, &bytes.Buffer{}
			code, err := Run(context.Background(), o)
			if err == nil || err.Error() != tt.want || code != ExitInvalid {
				t.Fatalf("Run = %d, %v; want 2, %q", code, err, tt.want)
			}
		})
	}
}
