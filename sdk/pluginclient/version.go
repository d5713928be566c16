package pluginclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"time"
)

// MaxVersionOutput bounds what ReadVersion accepts from `<plugin> version --json`. The
// record is a few hundred bytes; a binary printing more is not answering the question,
// and reading it all would let it fill the host's memory.
const MaxVersionOutput = 64 << 10

// Version is what a plugin built with sdk/plugin prints for `version --json`.
type Version struct {
	Name      string `json:"name"`
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Reference string `json:"reference"`
	BuiltAt   string `json:"built_at"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	Protocols []int  `json:"protocol_versions"`
}

// ReadVersion runs `<binary> [opts.Args…] version --json` without the handshake (the
// binary answers as it would to a person) and decodes the JSON object it prints. At
// most MaxVersionOutput bytes of stdout are read: a binary printing more is stopped and
// the error says so. Errors quote the end of its stderr.
func ReadVersion(ctx context.Context, binary string, opts Options) (Version, error) {
	if opts.Name == "" {
		opts.Name = baseName(binary)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, append(slices.Clone(opts.Args), "version", "--json")...)
	cmd.Env = append(os.Environ(), opts.Env...)
	stderr := &tail{}
	cmd.Stderr = stderr
	// A child that inherited the pipes must not keep Wait from returning.
	cmd.WaitDelay = time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Version{}, fmt.Errorf("run plugin %s version --json: %w", opts.Name, err)
	}
	if err := cmd.Start(); err != nil {
		return Version{}, fmt.Errorf("run plugin %s version --json: %w", opts.Name, err)
	}
	out, rerr := io.ReadAll(io.LimitReader(stdout, MaxVersionOutput+1))
	if len(out) > MaxVersionOutput {
		cancel() // stop it: the rest is not read
		_ = cmd.Wait()
		return Version{}, fmt.Errorf("plugin %s printed more than %d bytes for version --json; the answer is one small JSON object (is %s a fleeting plugin?)",
			opts.Name, MaxVersionOutput, binary)
	}
	werr := cmd.Wait()
	if err := errors.Join(rerr, werr); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		return Version{}, withStderr(fmt.Errorf("run plugin %s version --json: %w", opts.Name, err), stderr)
	}
	var v Version
	if err := json.Unmarshal(out, &v); err != nil {
		return Version{}, withStderr(fmt.Errorf("plugin %s printed no JSON object for version --json: %w; it printed %q",
			opts.Name, err, truncate(out, 200)), stderr)
	}
	return v, nil
}

// withStderr adds the plugin's last stderr lines to err, if it wrote any.
func withStderr(err error, stderr *tail) error {
	if s := stderr.String(); s != "" {
		return fmt.Errorf("%w; plugin stderr:\n%s", err, s)
	}
	return err
}

// truncate returns at most n bytes of b, marking a cut.
func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
