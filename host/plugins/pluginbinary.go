package plugins

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"io"
	"os"
	"strings"
)

// GoPluginModule is the module every plugin links: hashicorp/go-plugin, which
// implements the handshake the runner starts plugins with (the magic cookie, then the
// protocol line on stdout). Flotilla's SDK and GitLab's fleeting SDK both build on it.
const GoPluginModule = "github.com/hashicorp/go-plugin"

// knownTools names the programs a bare plugin name most often finds on PATH instead
// of a plugin, for the error message.
var knownTools = map[string]string{
	"aws":    "the AWS command-line tool",
	"az":     "the Azure command-line tool",
	"gcloud": "the Google Cloud command-line tool",
}

// A program found on PATH under a bare plugin name is checked by reading its Go build
// information, never by running it: the AWS CLI found for plugin = "aws" must not be
// started with the handshake (and its usage text shown as a protocol error).

// notPluginReason returns "" when path is a Go program linking GoPluginModule, else
// what the file is, naming the tool its name suggests.
func notPluginReason(path, name string) string {
	why := describeNonPlugin(path)
	if why == "" {
		return ""
	}
	if tool, ok := knownTools[name]; ok {
		why += "; it looks like " + tool
	}
	return why
}

func describeNonPlugin(path string) string {
	info, err := buildinfo.ReadFile(path)
	if err == nil {
		for _, d := range info.Deps {
			if d.Path == GoPluginModule {
				return ""
			}
		}
		return fmt.Sprintf("a Go program (%s) that does not link %s, so it cannot answer the plugin handshake", info.Path, GoPluginModule)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("cannot read it: %v", err)
	}
	defer f.Close()
	head := make([]byte, 256)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte("#!")):
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		return fmt.Sprintf("a script run by %q, not a plugin binary", strings.TrimSpace(string(line)))
	case bytes.HasPrefix(head, []byte("\x7fELF")), bytes.HasPrefix(head, []byte("MZ")),
		bytes.HasPrefix(head, []byte{0xcf, 0xfa, 0xed, 0xfe}), bytes.HasPrefix(head, []byte{0xca, 0xfe, 0xba, 0xbe}):
		return "a program that is not a Go plugin (no Go build information), so it cannot answer the plugin handshake"
	}
	return "not a program the runner can start as a plugin"
}
