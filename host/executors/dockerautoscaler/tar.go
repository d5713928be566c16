package dockerautoscaler

import (
	"archive/tar"
	"io"
)

// emptyDirTar writes a tar stream holding one empty directory, name.
func emptyDirTar(w io.Writer, name string) error {
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o777}); err != nil {
		return err
	}
	return tw.Close()
}
