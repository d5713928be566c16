// Package guestimage builds the Linux guest images of the nesting daemon's qemu backend,
// offline, only from Debian packages the host's apt reaches.
//
// An image is a directory of four files:
//
//	image.json   Metadata (the format the qemu backend reads)
//	vmlinuz      Debian's cloud kernel (linux-image-cloud-amd64)
//	initrd.img   A busybox initramfs: loads the virtio modules, configures the user-mode
//	             network, installs the SSH key given on the kernel command line, mounts
//	             the disk and switches to it
//	rootfs.img   A raw ext4 disk: a minimal Debian tree (mmdebstrap --variant=essential,
//	             no systemd) with OpenSSH, git, bash and ca-certificates; busybox init
//	             starts sshd, nothing else
//
// The qemu backend boots each VM from the kernel and initramfs with a copy-on-write
// overlay of rootfs.img, so VMs share the base disk. No SSH key is baked in: the backend
// passes the authorized key on the kernel command line (flotilla.key=<base64>) and the
// guest generates its own host key at boot.
//
// Builds are cached by the hash of the recipe under
// ${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/vm-images/<hash>; an images directory holds a
// symbolic link NAME → that cache entry.
package guestimage

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
)

// RecipeVersion changes whenever the build steps change in a way the hashed inputs do
// not show, so that a cached image of an older recipe is not reused.
const RecipeVersion = 1

// Format is the value of Metadata.Format for images of this package.
const Format = "flotilla-qemu-v1"

// MetadataFile is the name of the metadata file in an image directory.
const MetadataFile = "image.json"

// DefaultName is the image name `nesting image build` uses without --name.
const DefaultName = "debian"

// DefaultPackages are installed into the root file system besides the essential set.
var DefaultPackages = []string{"openssh-server", "git", "bash", "ca-certificates", "busybox-static"}

// KernelPackage is the Debian metapackage the kernel comes from.
const KernelPackage = "linux-image-cloud-amd64"

// Modules are the kernel modules the initramfs loads, in dependency order: the cloud
// kernel builds virtio as modules (ext4 is built in).
var Modules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
	"virtio_pci", "failover", "net_failover", "virtio_net", "virtio_blk"}

//go:embed init.sh
var initScript string

//go:embed rc.sh
var rcScript string

const inittab = "::sysinit:/etc/flotilla/rc\n::respawn:/usr/sbin/sshd -D -e\n"

const sshdConfig = "# Written by Flotilla's guest image recipe.\nHostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n"

// Metadata is image.json: what the qemu backend needs to boot the image.
type Metadata struct {
	Format string `json:"format"`
	// Kernel, Initrd and Disk are file names in the image directory.
	Kernel string `json:"kernel"`
	Initrd string `json:"initrd"`
	Disk   string `json:"disk"`
	// DiskFormat is QEMU's name of Disk's format ("raw").
	DiskFormat string `json:"disk_format"`
	// Cmdline is the kernel command line without the key.
	Cmdline string `json:"cmdline"`
	// User is the account the authorized key logs in to.
	User string `json:"user"`
	// Recipe is the hash of the recipe that built the image.
	Recipe string `json:"recipe"`
	// Suite and KernelVersion say what it was built from.
	Suite         string `json:"suite"`
	KernelVersion string `json:"kernel_version"`
}

// ReadMetadata reads and checks the metadata of the image in dir.
func ReadMetadata(dir string) (Metadata, error) {
	var m Metadata
	data, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(dir, MetadataFile), err)
	}
	if m.Format != Format {
		return m, fmt.Errorf("%s: format %q, want %q (rebuild the image with `nesting image build`)", filepath.Join(dir, MetadataFile), m.Format, Format)
	}
	for _, f := range []string{m.Kernel, m.Initrd, m.Disk} {
		if f == "" || strings.Contains(f, "/") {
			return m, fmt.Errorf("%s: bad file name %q", filepath.Join(dir, MetadataFile), f)
		}
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return m, fmt.Errorf("image %s: %w", dir, err)
		}
	}
	return m, nil
}

// Recipe is what an image is built from; its hash names the cache entry.
type Recipe struct {
	// Suite is the Debian suite (default: the host's VERSION_CODENAME).
	Suite string
	// Packages are installed besides the essential set (default DefaultPackages).
	Packages []string
	// DiskMiB is the size of the (sparse) disk in MiB (default 2048).
	DiskMiB int
	// Sources are apt source files handed to mmdebstrap (default: the host's Debian
	// sources, /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list). They
	// say where packages come from, not what they are, so they are not hashed.
	Sources []string
}

func (r Recipe) withDefaults() (Recipe, error) {
	if r.Suite == "" {
		s, err := hostSuite()
		if err != nil {
			return r, err
		}
		r.Suite = s
	}
	if len(r.Packages) == 0 {
		r.Packages = DefaultPackages
	}
	if r.DiskMiB == 0 {
		r.DiskMiB = 2048
	}
	if r.Sources == nil {
		for _, f := range []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"} {
			if _, err := os.Stat(f); err == nil {
				r.Sources = []string{f}
				break
			}
		}
	}
	return r, nil
}

// Hash is the recipe's cache key: the recipe version, suite, packages, disk size and
// the scripts and files put into the image.
func (r Recipe) Hash() (string, error) {
	r, err := r.withDefaults()
	if err != nil {
		return "", err
	}
	pk := append([]string(nil), r.Packages...)
	sort.Strings(pk)
	in, _ := json.Marshal(map[string]any{
		"version": RecipeVersion, "suite": r.Suite, "packages": pk, "disk_mib": r.DiskMiB,
		"kernel": KernelPackage, "modules": Modules, "init": initScript, "rc": rcScript,
		"inittab": inittab, "sshd": sshdConfig,
	})
	sum := sha256.Sum256(in)
	return hex.EncodeToString(sum[:])[:16], nil
}

func hostSuite() (string, error) {
	data, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return "", fmt.Errorf("guest image: find the Debian suite: %w (set the suite explicitly)", err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VERSION_CODENAME="); ok && strings.Trim(v, `"`) != "" {
			return strings.Trim(v, `"`), nil
		}
	}
	return "", errors.New("guest image: /etc/os-release has no VERSION_CODENAME: set the suite explicitly")
}

// Cached returns the cache directory of the default recipe's image, or an error if
// it is not built yet.
func Cached() (string, error) {
	dir, err := Recipe{}.cacheEntry()
	if err != nil {
		return "", err
	}
	_, err = ReadMetadata(dir)
	return dir, err
}

// cacheEntry is the directory r's image has in the cache (built or not).
func (r Recipe) cacheEntry() (string, error) {
	hash, err := r.Hash()
	if err != nil {
		return "", err
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(cache, hash), nil
}

// CacheDir is where built images are cached:
// ${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/vm-images.
func CacheDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("guest image cache: %w", err)
	}
	return filepath.Join(d, "flotilla", "vm-images"), nil
}

// DefaultImagesDir is the images directory of `nesting image build` and of the qemu
// backend when none is configured: /var/lib/flotilla/vm-images for root, else
// ${XDG_DATA_HOME:-$HOME/.local/share}/flotilla/vm-images.
func DefaultImagesDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/flotilla/vm-images"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "flotilla", "vm-images")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "flotilla", "vm-images")
}

// Tools are the host commands a build runs, with the Debian package of each.
var Tools = map[string]string{
	"mmdebstrap": "mmdebstrap", "apt-get": "apt", "dpkg-deb": "dpkg", "mke2fs": "e2fsprogs",
}

// CheckTools says which tools a build needs and the host lacks, or nil.
func CheckTools() error {
	var missing []string
	for _, t := range []string{"mmdebstrap", "apt-get", "dpkg-deb", "mke2fs"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, fmt.Sprintf("%s (Debian package %s)", t, Tools[t]))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("building a guest image needs %s: apt-get install them", strings.Join(missing, ", "))
	}
	if os.Geteuid() != 0 {
		return errors.New("building a guest image needs root (mmdebstrap builds the tree in root mode and mke2fs keeps its owners)")
	}
	return nil
}

// Build builds the image of r into the cache, or finds it there, and returns its
// directory. Concurrent builds of one recipe (several test processes) wait for each
// other through a lock file. Progress goes to log.
func Build(ctx context.Context, r Recipe, log *slog.Logger) (string, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r, err := r.withDefaults()
	if err != nil {
		return "", err
	}
	dir, err := r.cacheEntry()
	if err != nil {
		return "", err
	}
	cache, hash := filepath.Dir(dir), filepath.Base(dir)
	if _, err := ReadMetadata(dir); err == nil {
		log.Info("guest image cached", "dir", dir)
		return dir, nil
	}
	if err := CheckTools(); err != nil {
		return "", err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("guest image cache: %w", err)
	}
	lock, err := os.OpenFile(dir+".lock", os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", fmt.Errorf("guest image cache: %w", err)
	}
	defer lock.Close()
	if err := flock(ctx, lock); err != nil {
		return "", fmt.Errorf("guest image cache: lock %s: %w", lock.Name(), err)
	}
	// Someone else may have built it while we waited.
	if _, err := ReadMetadata(dir); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(cache, hash+".build-")
	if err != nil {
		return "", fmt.Errorf("guest image cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	log.Info("building guest image", "suite", r.Suite, "recipe", hash, "dir", dir)
	m, err := build(ctx, r, tmp, log)
	if err != nil {
		return "", fmt.Errorf("build guest image %s: %w", hash, err)
	}
	m.Recipe = hash
	data, _ := json.MarshalIndent(m, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "out", MetadataFile), append(data, '\n'), 0o644); err != nil {
		return "", err
	}
	_ = os.RemoveAll(dir) // a broken earlier attempt
	if err := os.Rename(filepath.Join(tmp, "out"), dir); err != nil {
		return "", fmt.Errorf("guest image cache: %w", err)
	}
	log.Info("guest image built", "dir", dir)
	return dir, nil
}

func flock(ctx context.Context, f *os.File) error {
	done := make(chan error, 1)
	go func() { done <- syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// Closing the file (by the caller) releases the flock if it is granted later.
		return ctx.Err()
	}
}

// build runs the recipe in work and leaves the image in work/out.
func build(ctx context.Context, r Recipe, work string, log *slog.Logger) (Metadata, error) {
	root := filepath.Join(work, "root")
	out := filepath.Join(work, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return Metadata{}, err
	}
	// 1. The root file system.
	args := []string{"--variant=essential", "--mode=root", "--include=" + strings.Join(r.Packages, ","),
		"--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
		"--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
		r.Suite, root}
	args = append(args, r.Sources...)
	if err := run(ctx, log, work, "mmdebstrap", args...); err != nil {
		return Metadata{}, err
	}
	// 2. The kernel, unpacked from its package (installing it into the tree would pull
	// initramfs-tools and build an initramfs we do not use).
	kdir := filepath.Join(work, "kernel")
	if err := os.MkdirAll(kdir, 0o777); err != nil {
		return Metadata{}, err
	}
	_ = os.Chmod(kdir, 0o777) // apt-get download drops privileges to _apt
	kpkg, err := kernelPackage(ctx, log, kdir)
	if err != nil {
		return Metadata{}, err
	}
	if err := run(ctx, log, kdir, "apt-get", "download", "-q", kpkg); err != nil {
		return Metadata{}, err
	}
	debs, _ := filepath.Glob(filepath.Join(kdir, kpkg+"_*.deb"))
	if len(debs) != 1 {
		return Metadata{}, fmt.Errorf("apt-get download %s: got %d packages", kpkg, len(debs))
	}
	kx := filepath.Join(kdir, "x")
	if err := run(ctx, log, kdir, "dpkg-deb", "-x", debs[0], kx); err != nil {
		return Metadata{}, err
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(kx, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return Metadata{}, fmt.Errorf("%s: no single /boot/vmlinuz-* in it", debs[0])
	}
	kver := strings.TrimPrefix(filepath.Base(vmlinuz[0]), "vmlinuz-")
	if err := copyFile(vmlinuz[0], filepath.Join(out, "vmlinuz")); err != nil {
		return Metadata{}, err
	}
	// 3. The initramfs: busybox from the tree, the modules, /init.
	if err := buildInitrd(ctx, root, filepath.Join(kx, "lib", "modules", kver), filepath.Join(out, "initrd.img")); err != nil {
		return Metadata{}, err
	}
	// 4. The tree's configuration: no host keys (each VM makes its own), busybox init
	// starting sshd, the user-mode network's resolver.
	if err := configureRoot(root); err != nil {
		return Metadata{}, err
	}
	// 5. The disk: ext4 made from the tree without mounting anything.
	if err := run(ctx, log, work, "mke2fs", "-q", "-t", "ext4", "-L", "flotilla", "-d", root, "-F",
		filepath.Join(out, "rootfs.img"), fmt.Sprintf("%dM", r.DiskMiB)); err != nil {
		return Metadata{}, err
	}
	return Metadata{
		Format: Format, Kernel: "vmlinuz", Initrd: "initrd.img", Disk: "rootfs.img", DiskFormat: "raw",
		Cmdline: "console=ttyS0 quiet", User: "root", Suite: r.Suite, KernelVersion: kver,
	}, nil
}

var depRe = regexp.MustCompile(`^(linux-image-[^\s,|(]+)`)

// kernelPackage resolves KernelPackage to the versioned package it depends on.
func kernelPackage(ctx context.Context, log *slog.Logger, dir string) (string, error) {
	if err := run(ctx, log, dir, "apt-get", "download", "-q", KernelPackage); err != nil {
		return "", err
	}
	metas, _ := filepath.Glob(filepath.Join(dir, KernelPackage+"_*.deb"))
	if len(metas) != 1 {
		return "", fmt.Errorf("apt-get download %s: got %d packages", KernelPackage, len(metas))
	}
	dep, err := exec.CommandContext(ctx, "dpkg-deb", "-f", metas[0], "Depends").Output()
	if err != nil {
		return "", fmt.Errorf("dpkg-deb -f %s Depends: %w", metas[0], err)
	}
	for _, d := range strings.Split(string(dep), ",") {
		if m := depRe.FindStringSubmatch(strings.TrimSpace(d)); m != nil {
			return m[1], nil
		}
	}
	return "", fmt.Errorf("%s depends on no linux-image-* package (Depends: %s)", KernelPackage, strings.TrimSpace(string(dep)))
}

func buildInitrd(ctx context.Context, root, modules, dst string) error {
	ird, err := os.MkdirTemp(filepath.Dir(root), "initrd-")
	if err != nil {
		return err
	}
	for _, d := range []string{"bin", "lib/modules", "newroot", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(ird, d), 0o755); err != nil {
			return err
		}
	}
	busybox := filepath.Join(root, "bin", "busybox")
	if err := copyFile(busybox, filepath.Join(ird, "bin", "busybox")); err != nil {
		return fmt.Errorf("initramfs: %w (the recipe installs busybox-static)", err)
	}
	for _, m := range Modules {
		var found string
		_ = filepath.WalkDir(modules, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && d.Name() == m+".ko" {
				found = p
				return fs.SkipAll
			}
			return nil
		})
		if found == "" {
			return fmt.Errorf("initramfs: module %s.ko not in %s", m, modules)
		}
		if err := copyFile(found, filepath.Join(ird, "lib", "modules", m+".ko")); err != nil {
			return err
		}
	}
	script := strings.ReplaceAll(initScript, "@MODULES@", strings.Join(Modules, " "))
	if err := os.WriteFile(filepath.Join(ird, "init"), []byte(script), 0o755); err != nil {
		return err
	}
	// busybox cpio writes the newc archive the kernel unpacks.
	var list bytes.Buffer
	err = filepath.WalkDir(ird, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(ird, p); rel != "." {
			list.WriteString(rel + "\n")
		}
		return nil
	})
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, busybox, "cpio", "-o", "-H", "newc")
	cmd.Dir = ird
	cmd.Stdin = &list
	var archive, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &archive, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initramfs: busybox cpio: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(f)
	if _, err := zw.Write(archive.Bytes()); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func configureRoot(root string) error {
	keys, _ := filepath.Glob(filepath.Join(root, "etc", "ssh", "ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	files := []struct {
		path string
		data string
		mode os.FileMode
	}{
		{"etc/inittab", inittab, 0o644},
		{"etc/flotilla/rc", rcScript, 0o755},
		{"etc/ssh/sshd_config.d/flotilla.conf", sshdConfig, 0o644},
		{"etc/hostname", "flotilla-vm\n", 0o644},
		{"etc/hosts", "127.0.0.1 localhost\n127.0.1.1 flotilla-vm\n::1 localhost\n", 0o644},
		// QEMU's user-mode network answers DNS at 10.0.2.3.
		{"etc/resolv.conf", "nameserver 10.0.2.3\n", 0o644},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		_ = os.Remove(p) // resolv.conf may be a symbolic link
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, st.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// run runs a build command, logging its output line by line, and returns an error with
// the output's tail when it fails.
func run(ctx context.Context, log *slog.Logger, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var tail []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			log.Debug(name, "out", sc.Text())
			tail = append(tail, sc.Text())
			if len(tail) > 20 {
				tail = tail[1:]
			}
		}
	}()
	err := cmd.Run()
	pw.Close()
	<-done
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.Join(tail, "\n"))
	}
	return nil
}

// Install makes the cached image in dir available as name in imagesDir (a symbolic
// link, replaced atomically: VMs running from the previous image keep their base disk,
// which the backend resolves through the link).
func Install(dir, imagesDir, name string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	if err := os.MkdirAll(imagesDir, 0o755); err != nil {
		return "", fmt.Errorf("images directory: %w", err)
	}
	dst := filepath.Join(imagesDir, name)
	if st, err := os.Lstat(dst); err == nil && st.Mode()&os.ModeSymlink == 0 {
		return "", fmt.Errorf("install image %s: %s exists and is not a link this command made; remove it first", name, dst)
	}
	tmp := fmt.Sprintf("%s.tmp-%d", dst, os.Getpid())
	_ = os.Remove(tmp)
	if err := os.Symlink(dir, tmp); err != nil {
		return "", fmt.Errorf("install image %s: %w", name, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("install image %s: %w", name, err)
	}
	return dst, nil
}

var nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidName says whether name can name an image: letters, digits, '.', '_', '-', not
// starting with a dot or dash.
func ValidName(name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("image name %q: use letters, digits, '.', '_' and '-' (not first)", name)
	}
	return nil
}
