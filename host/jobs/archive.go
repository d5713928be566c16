package jobs

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
)

// EachArchiveFile calls fn for every regular file of an artifacts archive (the gzip
// tar stream executors pack and unpack), with its header and a reader of its content,
// in archive order. fn returning fs.SkipAll stops the walk without an error; any other
// error stops it and is returned as is. Errors of the archive itself are wrapped with
// "read archive".
func EachArchiveFile(r io.Reader, fn func(h *tar.Header, content io.Reader) error) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("read archive: %w", err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if err := fn(h, tr); errors.Is(err, fs.SkipAll) {
			return nil
		} else if err != nil {
			return err
		}
	}
}
