// Package dockertest gives tests a real Docker Engine and a small image built locally,
// since no registry can be reached: the image is a busybox-static rootfs made into an
// image with the import API (the equivalent of `docker import`).
package dockertest

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	"github.com/moby/moby/client"
)

// Image is the name of the test image: busybox and its applets on a bare rootfs.
const Image = "flotilla-test/busybox:3"

// Socket is the Docker Engine socket the tests use.
const Socket = "/var/run/docker.sock"

// RequireEnv, when set to 1 (as .ci/run does), turns a missing Docker Engine into a test
// failure instead of a skip, so CI cannot pass without running these tests.
const RequireEnv = "FLOTILLA_REQUIRE_DOCKER"

// Client returns a client of the local Docker Engine, skipping the test (or failing it
// under RequireEnv) when there is none.
func Client(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.New(client.WithHost("unix://" + Socket))
	if err == nil {
		_, err = cli.Ping(context.Background(), client.PingOptions{})
	}
	if err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("Docker Engine required (%s=1) but not reachable at %s: %v", RequireEnv, Socket, err)
		}
		t.Skipf("no Docker Engine at %s (start dockerd; .ci/run does): %v", Socket, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// EnsureImage builds Image from /bin/busybox if the engine does not have it yet.
func EnsureImage(t testing.TB, cli *client.Client) {
	t.Helper()
	ctx := context.Background()
	if _, err := cli.ImageInspect(ctx, Image); err == nil {
		return
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("build test image: need /bin/busybox (Debian busybox-static): %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"bin/", "tmp/", "etc/", "root/"} {
		tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o1777})
	}
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))})
	tw.Write(bb)
	for _, applet := range []string{"sh", "echo", "cat", "ls", "sleep", "true", "false", "env", "mkdir", "rm", "tar",
		"printf", "test", "pwd", "id", "grep", "wc", "head", "touch", "cp", "mv", "sed", "awk", "uname", "date", "kill",
		"httpd", "wget", "nc", "hostname", "xargs", "gzip", "gunzip", "zcat"} {
		tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	tw.WriteHeader(&tar.Header{Name: "etc/passwd", Mode: 0o644, Size: int64(len("root:x:0:0:root:/root:/bin/sh\n"))})
	tw.Write([]byte("root:x:0:0:root:/root:/bin/sh\n"))
	tw.Close()
	rc, err := cli.ImageImport(ctx, client.ImageImportSource{Source: &buf, SourceName: "-"}, Image,
		client.ImageImportOptions{Changes: []string{`ENV PATH=/bin`}})
	if err != nil {
		t.Fatalf("import test image: %v", err)
	}
	io.Copy(io.Discard, rc)
	rc.Close()
}
