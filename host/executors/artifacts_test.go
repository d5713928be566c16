package executors

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// memStore keeps what the runtime hands it: the entries of each archive by name.
type memStore struct {
	mu     sync.Mutex
	stored map[string][]string // artifact name → entry names
	data   map[string][]byte   // artifact name → the archive
}

func (m *memStore) Store(_ context.Context, a jobs.Artifact, archive io.Reader, log io.Writer) error {
	b, err := io.ReadAll(archive)
	if err != nil {
		return err
	}
	names, err := tarNames(b)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stored == nil {
		m.stored, m.data = map[string][]string{}, map[string][]byte{}
	}
	m.stored[a.Name], m.data[a.Name] = names, b
	fmt.Fprintf(log, "stored %s\n", a.Name)
	return nil
}

func tarNames(tgz []byte) ([]string, error) {
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(zr)
	var out []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, strings.TrimSuffix(h.Name, "/"))
	}
}

func tgzOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(content))
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

func runStore(t *testing.T, env *localEnv, job jobs.Job) (Result, string, *memStore) {
	t.Helper()
	store := &memStore{}
	var log bytes.Buffer
	res := Run(context.Background(), &job, env, &log, RunOptions{Artifacts: store})
	return res, log.String(), store
}

// TestArtifactsExcludeAndWhen: the runtime collects each entry its when wants, leaves
// out what exclude matches (** across directories) with a count in the log, and
// reports a path that matches nothing.
func TestArtifactsExcludeAndWhen(t *testing.T) {
	script := []string{"mkdir -p out/sub out/keep", "echo bin > out/bin", "echo o > out/a.o", "echo o > out/sub/b.o", "echo c > out/sub/c.c"}
	arts := []jobs.Artifact{
		{Name: "main", Paths: []string{"out/", "nothing-*"}, Exclude: []string{"out/**/*.o"}, When: "on_success"},
		{Name: "fail", Paths: []string{"out/bin"}, When: "on_failure"},
		{Name: "always", Paths: []string{"out/bin"}, When: "always"},
	}
	for _, tt := range []struct {
		name   string
		exit   string
		stored []string
	}{
		{"success", "true", []string{"always", "main"}},
		{"failure", "false", []string{"always", "fail"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, log, store := runStore(t, &localEnv{dir: t.TempDir(), shell: ShellSh}, jobs.Job{Script: append(slices.Clone(script), tt.exit), Artifacts: arts})
			var got []string
			for k := range store.stored {
				got = append(got, k)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.stored) {
				t.Fatalf("stored %v, want %v (%s)\n%s", got, tt.stored, res.Status, log)
			}
			if tt.name != "success" {
				return
			}
			names := store.stored["main"]
			slices.Sort(names)
			if want := []string{"out", "out/bin", "out/keep", "out/sub", "out/sub/c.c"}; !slices.Equal(names, want) {
				t.Errorf("main archive %v, want %v", names, want)
			}
			for _, w := range []string{"out/**/*.o: 2 excluded", "nothing-*: no matching files", "Uploading artifacts for successful job"} {
				if !strings.Contains(log, w) {
					t.Errorf("log lacks %q:\n%s", w, log)
				}
			}
		})
	}
}

// TestArtifactsUntracked: untracked: true adds the files Git does not track (ignored
// ones too, as GitLab documents), not the tracked ones; without a Git checkout the
// log says why none were added.
func TestArtifactsUntracked(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	dir := t.TempDir()
	for _, args := range [][]string{{"init", "-q"}, {"-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"}} {
		if out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	job := jobs.Job{Script: []string{"echo t > tracked", "git add tracked", "echo ignored > .gitignore", "git add .gitignore",
		"echo u > 'new file'", "echo i > ignored", "mkdir -p out && echo r > out/r"},
		Artifacts: []jobs.Artifact{{Name: "u", Paths: []string{"out/r"}, Untracked: true, When: "on_success"}}}
	res, log, store := runStore(t, &localEnv{dir: dir, shell: ShellSh}, job)
	names := store.stored["u"]
	slices.Sort(names)
	if want := []string{"ignored", "new file", "out/r"}; !slices.Equal(names, want) {
		t.Fatalf("untracked archive %v, want %v (%s)\n%s", names, want, res.Status, log)
	}

	res, log, _ = runStore(t, &localEnv{dir: t.TempDir(), shell: ShellSh}, jobs.Job{Script: []string{"echo x > f"},
		Artifacts: []jobs.Artifact{{Name: "u", Untracked: true, When: "on_success"}}})
	if !strings.Contains(log, "untracked: git ls-files failed") || !strings.Contains(log, "No files to upload") {
		t.Errorf("outside a checkout: %s\n%s", res.Status, log)
	}
}

// TestDependenciesRestored: the dependencies' archives are unpacked into the project
// before the script, in order, with GitLab's log line; a missing archive fails the
// job with missing_dependency_failure before its script, another error is a system
// failure.
func TestDependenciesRestored(t *testing.T) {
	open := func(b []byte, err error) func(context.Context) (io.ReadCloser, error) {
		return func(context.Context) (io.ReadCloser, error) {
			if err != nil {
				return nil, err
			}
			return io.NopCloser(bytes.NewReader(b)), nil
		}
	}
	deps := []jobs.Dependency{
		{ID: "7", Name: "build", Open: open(tgzOf(t, map[string]string{"out/bin": "first", "out/only-a": "a"}), nil)},
		{ID: "8", Name: "gen", Open: open(tgzOf(t, map[string]string{"out/bin": "second"}), nil)},
	}
	res, log := runIn(t, "", jobs.Job{Dependencies: deps, Script: []string{`test "$(cat out/bin)" = second`, "cat out/only-a"}})
	if res.Status != StatusSuccess || !strings.Contains(log, "Downloading artifacts for build (7)...") || !strings.Contains(log, "Downloading artifacts for gen (8)...") {
		t.Fatalf("%+v\n%s", res, log)
	}

	for _, tt := range []struct {
		err    error
		reason FailureReason
	}{
		{fmt.Errorf("download: %w", jobs.ErrMissingDependency), MissingDependencyFailure},
		{errors.New("connection reset"), RunnerSystemFailure},
	} {
		res, log = runIn(t, "", jobs.Job{Dependencies: []jobs.Dependency{{ID: "9", Name: "gone", Open: open(nil, tt.err)}},
			Script: []string{"echo script ran"}})
		if res.Status != StatusFailed || res.FailureReason != tt.reason || strings.Contains(log, "script ran") {
			t.Errorf("%v: %+v\n%s", tt.err, res, log)
		}
	}
}

// TestFilterArchive: an empty stream (Pack found nothing) stays empty, a repeated
// name (a path listed and also untracked) is written once.
func TestFilterArchive(t *testing.T) {
	var out bytes.Buffer
	if n, _, err := FilterArchive(bytes.NewReader(nil), &out, nil); n != 0 || err != nil || out.Len() != 0 {
		t.Fatalf("empty: %d %v %d bytes", n, err, out.Len())
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, name := range []string{"a", "b.o", "a", "b.o"} {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 1, Typeflag: tar.TypeReg})
		tw.Write([]byte("x"))
	}
	tw.Close()
	zw.Close()
	n, excluded, err := FilterArchive(&buf, &out, []string{"*.o"})
	names, _ := tarNames(out.Bytes())
	if err != nil || n != 1 || excluded[0] != 1 || !slices.Equal(names, []string{"a"}) {
		t.Fatalf("kept %d excluded %v names %v: %v", n, excluded, names, err)
	}
}
