package executors

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// ArtifactStore keeps the artifacts a job collects: `runner exec` in the run's
// directory, `runner run` on GitLab.
type ArtifactStore interface {
	// Store keeps one artifacts entry of the job. archive is a gzip tar of its files,
	// excluded files already left out. Store writes what it did to log; an error is
	// a warning in the job's log and does not change how the job ended, as in GitLab.
	Store(ctx context.Context, a jobs.Artifact, archive io.Reader, log io.Writer) error
}

// collectArtifacts packs every artifacts entry the job's outcome wants and hands it to
// store, with GitLab's log lines. It has its own time budget: it runs also after a
// cancel or a timeout (for when: always and on_failure).
func collectArtifacts(ctx context.Context, env Env, job *jobs.Job, success bool, store ArtifactStore, trace *Trace) {
	var wanted []jobs.Artifact
	for _, a := range job.Artifacts {
		if a.Wanted(success) && (len(a.Paths) > 0 || a.Untracked) {
			wanted = append(wanted, a)
		}
	}
	if len(wanted) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jobs.DefaultAfterScriptTimeout)
	defer cancel()
	name, header := "upload_artifacts_on_success", "Uploading artifacts for successful job"
	if !success {
		name, header = "upload_artifacts_on_failure", "Uploading artifacts for failed job"
	}
	_ = trace.Section(name, header, false, func() error {
		for _, a := range wanted {
			if a.IsReport() {
				trace.Infof("Uploading artifacts as %q...", a.Type)
			} else {
				trace.Infof("Uploading artifacts...")
			}
			if err := collectOne(cctx, env, a, store, trace); err != nil {
				trace.Warnf("Uploading artifacts failed: %v", err)
			}
		}
		return nil
	})
}

// collectOne packs one artifacts entry into a temporary file on the host, leaving out
// what exclude matches, and stores it. The archive goes through a file so that large
// artifacts do not sit in memory.
func collectOne(ctx context.Context, env Env, a jobs.Artifact, store ArtifactStore, trace *Trace) error {
	tmp, err := os.CreateTemp("", "flotilla-artifacts-*.tar.gz")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	pr, pw := io.Pipe()
	var kept int
	var excluded []int
	filtered := make(chan error, 1)
	go func() {
		var err error
		kept, excluded, err = FilterArchive(pr, tmp, a.Exclude)
		pr.CloseWithError(err) // stops Pack if the filter gave up
		filtered <- err
	}()
	packErr := env.Pack(ctx, PackSpec{Paths: a.Paths, Untracked: a.Untracked}, pw, &warnLines{t: trace})
	pw.Close()
	if err := <-filtered; err != nil {
		return fmt.Errorf("collect %s: %w", strings.Join(a.Paths, " "), err)
	}
	if packErr != nil {
		return packErr
	}
	for i, n := range excluded {
		if n > 0 {
			fmt.Fprintf(trace, "%s: %d excluded\n", a.Exclude[i], n)
		}
	}
	if kept == 0 {
		trace.Warnf("No files to upload")
		return nil
	}
	fmt.Fprintf(trace, "Found %d matching artifact files and directories\n", kept)
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return store.Store(ctx, a, tmp, trace)
}

// FilterArchive copies the gzip tar r to w without the entries one of exclude
// matches (see jobs.MatchExclude) and without a second entry of a name already
// written. It returns how many entries it wrote and how many each pattern left out;
// it writes nothing when r is empty or nothing is left.
func FilterArchive(r io.Reader, w io.Writer, exclude []string) (kept int, excluded []int, err error) {
	excluded = make([]int, len(exclude))
	// An empty stream is what Pack writes when nothing matched.
	head := make([]byte, 1)
	n, err := io.ReadFull(r, head)
	if n == 0 {
		if errors.Is(err, io.EOF) {
			return 0, excluded, nil
		}
		return 0, excluded, err
	}
	zr, err := gzip.NewReader(io.MultiReader(strings.NewReader(string(head)), r))
	if err != nil {
		return 0, excluded, fmt.Errorf("read archive: %w", err)
	}
	tr := tar.NewReader(zr)
	var zw *gzip.Writer
	var tw *tar.Writer
	seen := map[string]bool{}
entries:
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return kept, excluded, fmt.Errorf("read archive: %w", err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
		if seen[name] {
			continue
		}
		seen[name] = true
		for i, p := range exclude {
			if jobs.MatchExclude(p, name) {
				excluded[i]++
				continue entries
			}
		}
		if tw == nil {
			zw = gzip.NewWriter(w)
			tw = tar.NewWriter(zw)
		}
		if err := tw.WriteHeader(h); err != nil {
			return kept, excluded, err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return kept, excluded, err
		}
		kept++
	}
	// Drain what tar leaves after its end marker, so that the writer never blocks.
	_, _ = io.Copy(io.Discard, r)
	if tw == nil {
		return 0, excluded, nil
	}
	if err := tw.Close(); err != nil {
		return kept, excluded, err
	}
	return kept, excluded, zw.Close()
}

// restoreDependencies unpacks each dependency's artifacts into the project directory,
// with GitLab's log lines. An error ends the job before its script.
func restoreDependencies(ctx context.Context, env Env, deps []jobs.Dependency, trace *Trace) error {
	for _, d := range deps {
		trace.Infof("Downloading artifacts for %s (%s)...", d.Name, d.ID)
		rc, err := d.Open(ctx)
		if err != nil {
			trace.Errorf("Downloading artifacts for %s (%s) failed: %v", d.Name, d.ID, err)
			return fmt.Errorf("artifacts of %s (%s): %w", d.Name, d.ID, err)
		}
		err = env.Unpack(ctx, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("unpack artifacts of %s (%s): %w", d.Name, d.ID, err)
		}
	}
	return nil
}

// warnLines writes each line it is given as a warning of the job log.
type warnLines struct {
	t   *Trace
	buf []byte
}

func (w *warnLines) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		w.t.Warnf("%s", w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}
