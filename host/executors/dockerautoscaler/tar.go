package dockerautoscaler

import (
	"archive/tar"
	"errors"
	"io"
	"strconv"
	"strings"
)

// emptyDirTar writes a tar stream holding one empty directory, name.
func emptyDirTar(w io.Writer, name string) error {
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o777}); err != nil {
		return err
	}
	return tw.Close()
}

// numericUser splits a user given as "uid" or "uid:gid" (the gid defaults to 0, as in
// Docker for a uid without a passwd entry); ok is false for a user name.
func numericUser(user string) (uid, gid int, ok bool) {
	u, g, hasGID := strings.Cut(user, ":")
	uid, err := strconv.Atoi(u)
	if err != nil || uid < 0 {
		return 0, 0, false
	}
	if hasGID {
		if gid, err = strconv.Atoi(g); err != nil || gid < 0 {
			return 0, 0, false
		}
	}
	return uid, gid, true
}

// chownTar copies the tar stream r to w with every entry owned by uid:gid.
func chownTar(w io.Writer, r io.Reader, uid, gid int) error {
	tr, tw := tar.NewReader(r), tar.NewWriter(w)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tw.Close()
		}
		if err != nil {
			return err
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = uid, gid, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
}
