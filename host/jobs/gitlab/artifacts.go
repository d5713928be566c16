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
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/version"
)

// UploadJobArtifacts uploads one artifacts entry of the job, collected from the
// instance as a gzip tar stream, in the entry's artifact_format as GitLab Runner does:
// zip for the archive, gzip (one gzip stream per file) for reports such as junit, raw
// (the one file as it is) for dotenv. What was uploaded is reported to log.
func (c *Client) UploadJobArtifacts(ctx context.Context, job *Job, a jobs.Artifact, tgz []byte, log io.Writer) error {
	format := nonEmpty(a.Format, "zip")
	var archive []byte
	var n int
	var err error
	name := nonEmpty(a.Name, "artifacts") + ".zip"
	switch format {
	case "zip":
		archive, n, err = TarGzToZip(tgz)
	case "gzip":
		archive, n, err = TarGzToGzip(tgz)
		name = nonEmpty(a.Type, "artifacts") + ".gz"
	case "raw":
		archive, name, err = TarGzToRaw(tgz)
		n = 1
	default:
		return fmt.Errorf("artifact_format %q is not supported (zip, gzip or raw)", format)
	}
	if err != nil {
		return err
	}
	typ := nonEmpty(a.Type, jobs.ArtifactArchive)
	if err := c.UploadArtifacts(ctx, job.GitLabID, job.Token, archive, ArtifactsOptions{
		Type: typ, Format: format, ExpireIn: a.ExpireIn, FileName: name}); err != nil {
		return err
	}
	fmt.Fprintf(log, "Uploaded artifacts as %q (%s): %d files and directories to %s (%d bytes)\n", typ, format, n, c.URL(), len(archive))
	return nil
}

// TarGzToGzip converts a gzip tar stream into GitLab's gzip artifact format: one gzip
// stream per regular file, named after the file, one after the other.
func TarGzToGzip(tgz []byte) ([]byte, int, error) {
	var buf bytes.Buffer
	n := 0
	err := jobs.EachArchiveFile(bytes.NewReader(tgz), func(h *tar.Header, r io.Reader) error {
		zw := gzip.NewWriter(&buf)
		zw.Name, zw.ModTime = h.Name, h.ModTime
		if _, err := io.Copy(zw, r); err != nil {
			return fmt.Errorf("gzip %s: %w", h.Name, err)
		}
		n++
		return zw.Close()
	})
	return buf.Bytes(), n, err
}

// TarGzToRaw returns the one regular file of a gzip tar stream and its base name, as
// GitLab's raw artifact format (dotenv) wants it.
func TarGzToRaw(tgz []byte) ([]byte, string, error) {
	var data []byte
	var name string
	err := jobs.EachArchiveFile(bytes.NewReader(tgz), func(h *tar.Header, r io.Reader) error {
		if name != "" {
			return fmt.Errorf("the raw artifact format takes one file; found %s and %s", name, h.Name)
		}
		name = h.Name
		var err error
		data, err = io.ReadAll(r)
		return err
	})
	if err == nil && name == "" {
		err = errors.New("no file to upload in the raw format")
	}
	return data, path.Base(name), err
}

// ZipToTarGz converts a zip archive, as GitLab serves artifacts, into the gzip tar
// stream the executors unpack. Symlinks (stored as their target, with the symlink
// mode) stay symlinks.
func ZipToTarGz(data []byte) ([]byte, error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("read artifacts zip: %w", err)
	}
	var buf bytes.Buffer
	gw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gw)
	for _, f := range zr.File {
		mode := f.Mode()
		h := &tar.Header{Name: f.Name, ModTime: f.Modified, Mode: int64(mode.Perm())}
		rc, err := f.Open()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name, err)
		}
		body, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", f.Name, err)
		}
		switch {
		case mode.IsDir() || strings.HasSuffix(f.Name, "/"):
			h.Typeflag, h.Mode = tar.TypeDir, int64(mode.Perm()|0o700)
		case mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname = tar.TypeSymlink, string(body)
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(body); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Dependencies turns the payload's dependencies into the job model's: those with an
// artifacts file, each downloaded with its own token when the job restores it.
func (c *Client) Dependencies(deps []Dependency) []jobs.Dependency {
	var out []jobs.Dependency
	for _, d := range deps {
		if d.ArtifactsFile.Filename == "" {
			continue // GitLab Runner downloads only dependencies that have artifacts
		}
		out = append(out, jobs.Dependency{ID: strconv.FormatInt(d.ID, 10), Name: d.Name,
			Open: func(ctx context.Context) (io.ReadCloser, error) {
				zipped, err := c.DownloadArtifacts(ctx, d.ID, d.Token)
				if err != nil {
					return nil, err
				}
				tgz, err := ZipToTarGz(zipped)
				if err != nil {
					return nil, err
				}
				return io.NopCloser(bytes.NewReader(tgz)), nil
			}})
	}
	return out
}

// DownloadArtifacts downloads the artifacts archive of job id with token (GET
// /api/v4/jobs/:id/artifacts, JOB-TOKEN header). A 404, 403 or 401 answer wraps
// jobs.ErrMissingDependency: the archive is gone or not allowed, which retrying does
// not mend.
func (c *Client) DownloadArtifacts(ctx context.Context, id int64, token string) ([]byte, error) {
	op := fmt.Sprintf("download artifacts of job %d", id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint("jobs/"+strconv.FormatInt(id, 10)+"/artifacts"), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	req.Header.Set("Job-Token", token)
	req.Header.Set("User-Agent", "flotilla "+version.Version)
	// GitLab answers with a redirect to object storage when artifacts live there; the
	// pre-signed URL needs no token, and the job token must not reach another host
	// (Go's client keeps custom headers across hosts, unlike Authorization).
	hc := *c.http
	hc.CheckRedirect = func(r *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		if r.URL.Host != via[0].URL.Host {
			r.Header.Del("Job-Token")
		}
		return nil
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		err := statusErr(op, resp, body)
		switch resp.StatusCode {
		case http.StatusNotFound, http.StatusForbidden, http.StatusUnauthorized:
			return nil, fmt.Errorf("%w: %w", jobs.ErrMissingDependency, err)
		}
		return nil, err
	}
	// Unlike API answers, an archive is read whole: a cut one would not unpack.
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: read archive: %w", op, err)
	}
	return body, nil
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
