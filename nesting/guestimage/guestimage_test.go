package guestimage_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/nesting/guestimage"
	"github.com/flotilla-ci/flotilla/nesting/vmtest"
)

func TestRecipeHash(t *testing.T) {
	base := guestimage.Recipe{Suite: "bookworm"}
	h1, err := base.Hash()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		r    guestimage.Recipe
		same bool
	}{
		{"same recipe", guestimage.Recipe{Suite: "bookworm"}, true},
		{"packages in another order", guestimage.Recipe{Suite: "bookworm", Packages: []string{"busybox-static", "ca-certificates", "bash", "git", "openssh-server"}}, true},
		{"sources are not hashed", guestimage.Recipe{Suite: "bookworm", Sources: []string{"/elsewhere.sources"}}, true},
		{"another suite", guestimage.Recipe{Suite: "trixie"}, false},
		{"another package", guestimage.Recipe{Suite: "bookworm", Packages: append([]string{"curl"}, guestimage.DefaultPackages...)}, false},
		{"another disk size", guestimage.Recipe{Suite: "bookworm", DiskMiB: 4096}, false},
	}
	for _, tt := range tests {
		h2, err := tt.r.Hash()
		if err != nil {
			t.Fatal(err)
		}
		if (h1 == h2) != tt.same {
			t.Errorf("%s: hash %s vs %s, same = %v, want %v", tt.name, h2, h1, h1 == h2, tt.same)
		}
	}
}

func TestReadMetadataRejectsForeignImages(t *testing.T) {
	dir := t.TempDir()
	if _, err := guestimage.ReadMetadata(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no image.json: %v", err)
	}
	for _, m := range []guestimage.Metadata{
		{Format: "other", Kernel: "k", Initrd: "i", Disk: "d"},
		{Format: guestimage.Format, Kernel: "../k", Initrd: "i", Disk: "d"},
		{Format: guestimage.Format, Kernel: "k", Initrd: "i", Disk: "missing"},
	} {
		for _, f := range []string{"k", "i", "d"} {
			os.WriteFile(filepath.Join(dir, f), nil, 0o644)
		}
		data, _ := json.Marshal(m)
		os.WriteFile(filepath.Join(dir, guestimage.MetadataFile), data, 0o644)
		if _, err := guestimage.ReadMetadata(dir); err == nil {
			t.Errorf("ReadMetadata accepted %+v", m)
		}
	}
}

func TestInstallReplacesOnlyItsLinks(t *testing.T) {
	images := t.TempDir()
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if _, err := guestimage.Install(d, images, "img"); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := os.Readlink(filepath.Join(images, "img")); got != b {
		t.Errorf("img → %s, want %s", got, b)
	}
	os.Mkdir(filepath.Join(images, "mine"), 0o755)
	if _, err := guestimage.Install(a, images, "mine"); err == nil || !strings.Contains(err.Error(), "remove it first") {
		t.Errorf("Install over a directory: %v", err)
	}
	if _, err := guestimage.Install(a, images, "../x"); err == nil {
		t.Error("Install accepted the name ../x")
	}
}

// TestBuildIsCached: building the recipe again returns the cached image untouched.
func TestBuildIsCached(t *testing.T) {
	vmtest.Image(t) // builds it (or skips here)
	ctx := context.Background()
	dir, err := guestimage.Build(ctx, guestimage.Recipe{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st1, err := os.Stat(filepath.Join(dir, "rootfs.img"))
	if err != nil {
		t.Fatal(err)
	}
	dir2, err := guestimage.Build(ctx, guestimage.Recipe{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st2, _ := os.Stat(filepath.Join(dir2, "rootfs.img"))
	if dir2 != dir || !os.SameFile(st1, st2) || !st1.ModTime().Equal(st2.ModTime()) {
		t.Errorf("second build: %s (%v), first %s (%v)", dir2, st2.ModTime(), dir, st1.ModTime())
	}
	m, err := guestimage.ReadMetadata(dir)
	if err != nil || m.User != "root" || m.KernelVersion == "" || m.Recipe != filepath.Base(dir) {
		t.Errorf("metadata %+v, %v", m, err)
	}
}
