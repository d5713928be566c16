package gitlab

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/flotilla-ci/flotilla/host/executors"
)

// ArtifactsEnv wraps a job's executor environment so that, before the environment is
// cleaned up, the job's declared artifact paths are collected from the instance
// (a tar stream over the executor's own connection), zipped, and uploaded to GitLab.
// Upload problems are written to the job log; they do not change the job's outcome.
type ArtifactsEnv struct {
	executors.Env
	Client *Client
	Job    *Job
	// Log receives the upload's messages (the job's trace).
	Log io.Writer

	mu     sync.Mutex
	first  bool
	passed bool
}

// Exec runs a script and remembers whether the job's main script passed, which
// decides the artifacts' `when`.
func (e *ArtifactsEnv) Exec(ctx context.Context, s executors.Script, out io.Writer) (int, error) {
	code, err := e.Env.Exec(ctx, s, out)
	e.mu.Lock()
	if !e.first {
		e.first = true
		e.passed = code == 0 && err == nil && ctx.Err() == nil
	}
	e.mu.Unlock()
	return code, err
}

// Cleanup collects and uploads the artifacts, then cleans up.
func (e *ArtifactsEnv) Cleanup(ctx context.Context) error {
	e.mu.Lock()
	ran, passed := e.first, e.passed
	e.mu.Unlock()
	if ran {
		for i, a := range e.Job.Artifacts {
			if !wanted(a.When, passed) || len(a.Paths) == 0 {
				continue
			}
			fmt.Fprintf(e.Log, "\x1b[32;1mUploading artifacts...\x1b[0;m\n")
			if err := e.upload(ctx, i); err != nil {
				fmt.Fprintf(e.Log, "\x1b[0;33mWARNING: Uploading artifacts failed: %v\x1b[0;m\n", err)
				continue
			}
		}
	}
	return e.Env.Cleanup(ctx)
}

func wanted(when string, passed bool) bool {
	switch when {
	case "always":
		return true
	case "on_failure":
		return !passed
	}
	return passed
}

func (e *ArtifactsEnv) upload(ctx context.Context, i int) error {
	a := e.Job.Artifacts[i]
	var tgz bytes.Buffer
	if err := e.Env.Pack(ctx, a.Paths, &tgz, &warnings{w: e.Log}); err != nil {
		return fmt.Errorf("collect %v: %w", a.Paths, err)
	}
	if tgz.Len() == 0 {
		fmt.Fprintf(e.Log, "\x1b[0;33mWARNING: no files to upload\x1b[0;m\n")
		return nil
	}
	archive, n, err := TarGzToZip(tgz.Bytes())
	if err != nil {
		return err
	}
	up := e.Job.ArtifactUploads[i]
	if err := e.Client.UploadArtifacts(ctx, e.Job.GitLabID, e.Job.Token, archive, ArtifactsOptions{
		Type: up.ArtifactType, Format: up.ArtifactFormat, ExpireIn: up.ExpireIn, FileName: "artifacts.zip"}); err != nil {
		return err
	}
	fmt.Fprintf(e.Log, "%d files and directories uploaded to %s (%d bytes)\n", n, e.Client.URL(), len(archive))
	return nil
}

// warnings writes each line it is given as a job-log warning.
type warnings struct {
	w   io.Writer
	buf []byte
}

func (w *warnings) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		fmt.Fprintf(w.w, "\x1b[0;33mWARNING: %s\x1b[0;m\n", w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

// TarGzToZip converts a gzip tar stream into a zip archive and counts its entries.
func TarGzToZip(tgz []byte) ([]byte, int, error) {
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		return nil, 0, fmt.Errorf("read artifacts: %w", err)
	}
	tr := tar.NewReader(zr)
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	n := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read artifacts: %w", err)
		}
		fh := &zip.FileHeader{Name: h.Name, Modified: h.ModTime, Method: zip.Deflate}
		fh.SetMode(h.FileInfo().Mode())
		switch h.Typeflag {
		case tar.TypeDir:
			if !strings.HasSuffix(fh.Name, "/") {
				fh.Name += "/"
			}
			fh.Method = zip.Store
			if _, err := zw.CreateHeader(fh); err != nil {
				return nil, 0, err
			}
		case tar.TypeReg:
			w, err := zw.CreateHeader(fh)
			if err != nil {
				return nil, 0, err
			}
			if _, err := io.Copy(w, tr); err != nil {
				return nil, 0, fmt.Errorf("zip %s: %w", h.Name, err)
			}
		case tar.TypeSymlink:
			w, err := zw.CreateHeader(fh)
			if err != nil {
				return nil, 0, err
			}
			if _, err := io.WriteString(w, h.Linkname); err != nil {
				return nil, 0, err
			}
		default:
			continue
		}
		n++
	}
	if err := zw.Close(); err != nil {
		return nil, 0, err
	}
	return buf.Bytes(), n, nil
}
