package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/flotilla-ci/flotilla/nesting/guestimage"
)

func init() { extraCommands = append(extraCommands, newImageCommand) }

// newImageCommand is `nesting image build`: the qemu backend's guest image, built
// offline from the host's Debian packages and cached by the hash of its recipe.
func newImageCommand() *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Manage the qemu backend's guest images"}
	var name, imagesDir, suite string
	var verbose bool
	build := &cobra.Command{
		Use:   "build",
		Short: "Build a Linux guest image (Debian kernel, OpenSSH, git, bash) into the images directory",
		Long: `Build a Linux guest image from the Debian packages this host's apt reaches
(mmdebstrap, apt-get download; needs root) and install it as NAME in the images directory.
Builds are cached by the hash of their recipe in ${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/vm-images,
so building the same recipe again only links the cached image.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if err := guestimage.ValidName(name); err != nil {
				return err
			}
			dir, err := guestimage.Build(cmd.Context(), guestimage.Recipe{Suite: suite}, log)
			if err != nil {
				return err
			}
			dst, err := guestimage.Install(dir, imagesDir, name)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), dst)
			return nil
		},
	}
	build.Flags().StringVar(&name, "name", guestimage.DefaultName, "the image's name (a job's image:)")
	build.Flags().StringVar(&imagesDir, "images-dir", guestimage.DefaultImagesDir(), "the images directory")
	build.Flags().StringVar(&suite, "suite", "", "the Debian suite (default: the host's)")
	build.Flags().BoolVarP(&verbose, "verbose", "v", false, "show the build commands' output")
	img.AddCommand(build)
	return img
}
