package jobs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"slices"
	"strings"
	"testing"
)

func TestEachArchiveFile(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "out/", Typeflag: tar.TypeDir, Mode: 0o755})
	for _, f := range []struct{ name, body string }{{"out/a", "A"}, {"out/b", "B"}, {"out/c", "C"}} {
		tw.WriteHeader(&tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.body))})
		tw.Write([]byte(f.body))
	}
	tw.WriteHeader(&tar.Header{Name: "out/link", Typeflag: tar.TypeSymlink, Linkname: "a"})
	tw.Close()
	zw.Close()
	archive := buf.Bytes()

	boom := errors.New("boom")
	tests := []struct {
		name    string
		stopAt  string // the file whose fn call returns stop
		stop    error
		want    []string
		wantErr error
	}{
		{"every regular file, in order", "", nil, []string{"out/a=A", "out/b=B", "out/c=C"}, nil},
		{"fs.SkipAll stops without an error", "out/b", fs.SkipAll, []string{"out/a=A", "out/b=B"}, nil},
		{"another error stops and is returned", "out/a", boom, []string{"out/a=A"}, boom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			err := EachArchiveFile(bytes.NewReader(archive), func(h *tar.Header, r io.Reader) error {
				b, _ := io.ReadAll(r)
				got = append(got, h.Name+"="+string(b))
				if h.Name == tt.stopAt {
					return tt.stop
				}
				return nil
			})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) || !slices.Equal(got, tt.want) {
				t.Errorf("got %v, %v; want %v, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if err := EachArchiveFile(strings.NewReader("not gzip"), func(*tar.Header, io.Reader) error { return nil }); err == nil || !strings.Contains(err.Error(), "read archive") {
		t.Errorf("a broken archive: %v", err)
	}
}
