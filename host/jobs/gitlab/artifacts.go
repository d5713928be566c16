package gitlab

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/flotilla-ci/flotilla/host/executors"
)

// Markers around the base64 tar stream in the collection script's output: the shell
// echoes commands and may print warnings, so the archive is cut out between them.
const (
	beginMarker = "---FLOTILLA-ARTIFACTS-BEGIN---"
	endMarker   = "---FLOTILLA-ARTIFACTS-END---"
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
	last   executors.Script
}

// Exec runs a script and remembers whether the job's main script passed, which
// decides the artifacts' `when`.
func (e *ArtifactsEnv) Exec(ctx context.Context, s executors.Script, out io.Writer) (int, error) {
	code, err := e.Env.Exec(ctx, s, out)
	e.mu.Lock()
	if !e.first {
		e.first = true
		e.passed = code == 0 && err == nil && ctx.Err() == nil
		e.last = s
	}
	e.mu.Unlock()
	return code, err
}

// Cleanup collects and uploads the artifacts, then cleans up.
func (e *ArtifactsEnv) Cleanup(ctx context.Context) error {
	e.mu.Lock()
	ran, passed, script := e.first, e.passed, e.last
	e.mu.Unlock()
	if ran {
		for i, a := range e.Job.Artifacts {
			if !wanted(a.When, passed) || len(a.Paths) == 0 {
				continue
			}
			fmt.Fprintf(e.Log, "\x1b[32;1mUploading artifacts...\x1b[0;m\n")
			if err := e.upload(ctx, script, i); err != nil {
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

func (e *ArtifactsEnv) upload(ctx context.Context, base executors.Script, i int) error {
	a := e.Job.Artifacts[i]
	var out bytes.Buffer
	s := executors.Script{Shell: base.Shell, Dir: base.Dir, Commands: []string{CollectScript(a.Paths)}}
	code, err := e.Env.Exec(ctx, s, &out)
	if err != nil {
		return fmt.Errorf("collect %v: %w", a.Paths, err)
	}
	warnings, tgz, found := cutArchive(out.String())
	for _, w := range warnings {
		fmt.Fprintf(e.Log, "\x1b[0;33mWARNING: %s\x1b[0;m\n", w)
	}
	if code != 0 {
		return fmt.Errorf("collect %v: exit code %d", a.Paths, code)
	}
	if !found {
		fmt.Fprintf(e.Log, "\x1b[0;33mWARNING: no files to upload\x1b[0;m\n")
		return nil
	}
	archive, n, err := TarGzToZip(tgz)
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

// CollectScript returns a shell command that writes the files matching paths (shell
// globs, relative to the project directory) as a base64 gzip tar stream between
// markers, warning about patterns that match nothing.
func CollectScript(paths []string) string {
	var pats []string
	for _, p := range paths {
		pats = append(pats, globWord(p))
	}
	return "set --; for p in " + strings.Join(pats, " ") + `; do if [ -e "$p" ] || [ -L "$p" ]; then set -- "$@" "$p"; ` +
		`else echo "$p: no matching files"; fi; done; ` +
		`if [ $# -gt 0 ]; then echo ` + beginMarker + `; tar -czf - -- "$@" | base64; echo ` + endMarker + `; fi`
}

// globWord escapes every shell-special character of p except the glob characters,
// so the shell expands the pattern and nothing else.
func globWord(p string) string {
	var b strings.Builder
	for _, r := range p {
		switch {
		case r == '*' || r == '?' || r == '[' || r == ']':
			b.WriteRune(r)
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune("/._-+=@%,", r):
			b.WriteRune(r)
		default:
			b.WriteByte('\\')
			b.WriteRune(r)
		}
	}
	return b.String()
}

// cutArchive splits the collection output into warning lines and the decoded archive.
func cutArchive(out string) (warnings []string, tgz []byte, found bool) {
	before, rest, ok := strings.Cut(out, beginMarker+"\n")
	for _, l := range strings.Split(before, "\n") {
		if strings.HasSuffix(l, ": no matching files") {
			warnings = append(warnings, strings.TrimSpace(l))
		}
	}
	if !ok {
		return warnings, nil, false
	}
	body, _, _ := strings.Cut(rest, endMarker)
	b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(body), ""))
	if err != nil {
		return append(warnings, "artifact stream corrupt: "+err.Error()), nil, false
	}
	return warnings, b, true
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
