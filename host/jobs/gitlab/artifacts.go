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
)

// UploadJobArtifacts uploads the job's i-th artifacts entry (Job.Artifacts[i] and
// Job.ArtifactUploads[i]), collected from the instance as a gzip tar stream: it is
// converted to the zip GitLab stores, and what was uploaded is reported to log.
func (c *Client) UploadJobArtifacts(ctx context.Context, job *Job, i int, tgz []byte, log io.Writer) error {
	archive, n, err := TarGzToZip(tgz)
	if err != nil {
		return err
	}
	up := job.ArtifactUploads[i]
	if err := c.UploadArtifacts(ctx, job.GitLabID, job.Token, archive, ArtifactsOptions{
		Type: up.ArtifactType, Format: up.ArtifactFormat, ExpireIn: up.ExpireIn, FileName: "artifacts.zip"}); err != nil {
		return err
	}
	fmt.Fprintf(log, "%d files and directories uploaded to %s (%d bytes)\n", n, c.URL(), len(archive))
	return nil
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
