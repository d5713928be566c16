package executors

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	pathpkg "path"
	"path/filepath"
)

// ErrGetSources marks Prepare errors of the job's own making while its sources are
// put in place: a Git variable GitLab would not accept (GIT_STRATEGY=bogus), or the
// get-sources step (Git, pre_get_sources_script, post_get_sources_script) exiting
// non-zero. The job fails with script_failure, as GitLab Runner's get_sources stage
// does, and is not retried on a new slot, which could not help. An executor that
// cannot reach the instance to run that step still fails with a system failure.
var ErrGetSources = errors.New("get sources")

// SourcesError marks err as ErrGetSources; its message stays err's.
func SourcesError(err error) error { return sourcesError{err} }

type sourcesError struct{ error }

func (e sourcesError) Is(target error) bool { return target == ErrGetSources }
func (e sourcesError) Unwrap() error        { return e.error }

// TarDir writes the tree under dir to w as a tar stream, each name under prefix (""
// for none): regular files, directories and symlinks with their modes; sockets,
// devices and pipes are skipped. It is how `runner exec` puts a local working tree in
// place on an instance or in a container volume.
func TarDir(w io.Writer, dir, prefix string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		if rel == "." && prefix == "" {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		case !info.Mode().IsRegular() && !info.IsDir():
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return fmt.Errorf("tar %s: %w", path, err)
		}
		hdr.Name = pathpkg.Join(prefix, filepath.ToSlash(rel))
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname, hdr.Uid, hdr.Gid = "", "", 0, 0
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return fmt.Errorf("pack %s: %w", dir, err)
	}
	return tw.Close()
}
