package runcmd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/flotilla-ci/flotilla/host/config"
)

// config.toml is edited as text, not re-encoded, so that comments, key order and the
// other runners stay exactly as their author wrote them; every edit is re-parsed with
// config.Parse before the file is replaced atomically.

var (
	runnersHeader = regexp.MustCompile(`^\s*\[\[\s*runners\s*\]\]\s*(#.*)?$`)
	tableHeader   = regexp.MustCompile(`^\s*\[\[?\s*([^\]\s]+)\s*\]\]?\s*(#.*)?$`)
	commentLine   = regexp.MustCompile(`^\s*#`)
)

// runnerBlock is the text of one [[runners]] entry: lines [start, end) of the file,
// including the comment lines directly above its header.
type runnerBlock struct {
	start, end int
	Name, URL  string
	Token      string
}

func splitLines(data []byte) []string {
	s := string(data)
	if s == "" {
		return nil
	}
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// findRunnerBlocks locates every [[runners]] entry in the text of a config.toml.
func findRunnerBlocks(file string, data []byte) ([]runnerBlock, error) {
	lines := splitLines(data)
	var heads []int
	var ends []int // lines that start a table outside [[runners]]
	for i, l := range lines {
		l = strings.TrimRight(l, "\r\n")
		if runnersHeader.MatchString(l) {
			heads = append(heads, i)
			continue
		}
		if m := tableHeader.FindStringSubmatch(l); m != nil && !strings.HasPrefix(strings.Trim(m[1], `"'`), "runners.") {
			ends = append(ends, i)
		}
	}
	var out []runnerBlock
	for k, h := range heads {
		start := h
		for start > 0 && commentLine.MatchString(lines[start-1]) {
			start--
		}
		end := len(lines)
		if k+1 < len(heads) {
			end = heads[k+1]
		}
		for _, e := range ends {
			if e > h && e < end {
				end = e
			}
		}
		// Blank and comment lines at the end belong to what follows (the next entry,
		// or the file's closing remarks).
		for end > h+1 && (strings.TrimSpace(lines[end-1]) == "" || commentLine.MatchString(lines[end-1])) {
			end--
		}
		text := strings.Join(lines[h:end], "")
		var doc struct {
			Runners []struct {
				Name  string `toml:"name"`
				URL   string `toml:"url"`
				Token string `toml:"token"`
			} `toml:"runners"`
		}
		if err := toml.Unmarshal([]byte(text), &doc); err != nil || len(doc.Runners) != 1 {
			return nil, fmt.Errorf("%s:%d: cannot isolate this [[runners]] entry to edit it (%v); edit the file by hand", file, h+1, err)
		}
		r := doc.Runners[0]
		out = append(out, runnerBlock{start: start, end: end, Name: r.Name, URL: r.URL, Token: r.Token})
	}
	return out, nil
}

// writeConfig checks data with config.Parse and replaces path with it atomically,
// keeping the file's mode (0600 for a new file: it holds tokens).
func writeConfig(path string, data []byte, check func(*config.Config) error) error {
	cfg, _, err := config.Parse(path, data)
	if err != nil {
		return fmt.Errorf("the edited configuration would not load, so %s was left unchanged: %w", path, err)
	}
	if check != nil {
		if err := check(cfg); err != nil {
			return fmt.Errorf("the edited configuration is not as intended, so %s was left unchanged: %w", path, err)
		}
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".config.toml.*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// AppendRunner adds entry (a `[[runners]]` table as TOML text) at the end of the
// config file at path, creating the file if needed. The rest of the file is kept byte
// for byte.
func AppendRunner(path, entry string, wantToken string) error {
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if os.IsNotExist(err) {
		data = []byte("concurrent = 1\ncheck_interval = 0\n")
	}
	var b bytes.Buffer
	b.Write(data)
	if len(data) > 0 && !bytes.HasSuffix(data, []byte("\n")) {
		b.WriteByte('\n')
	}
	if len(data) > 0 {
		b.WriteByte('\n')
	}
	b.WriteString(entry)
	if !strings.HasSuffix(entry, "\n") {
		b.WriteByte('\n')
	}
	return writeConfig(path, b.Bytes(), func(c *config.Config) error {
		for _, r := range c.Runners {
			if r.Token == wantToken {
				return nil
			}
		}
		return fmt.Errorf("the new entry is not among the runners")
	})
}

// RemoveRunners deletes the text of every [[runners]] entry match selects and returns
// how many it removed.
func RemoveRunners(path string, match func(name, url, token string) bool) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	blocks, err := findRunnerBlocks(path, data)
	if err != nil {
		return 0, err
	}
	lines := splitLines(data)
	drop := make([]bool, len(lines))
	removed := map[string]bool{}
	n := 0
	for _, b := range blocks {
		if !match(b.Name, b.URL, b.Token) {
			continue
		}
		n++
		removed[b.Token] = true
		for i := b.start; i < b.end; i++ {
			drop[i] = true
		}
		switch {
		case b.end < len(lines):
			// One blank line that separated the entry from what follows goes with it.
			if strings.TrimSpace(lines[b.end]) == "" && (b.start == 0 || strings.TrimSpace(lines[b.start-1]) == "") {
				drop[b.end] = true
			}
		default:
			// The last entry: the blank lines that separated it from the rest go too,
			// so that register then unregister gives back the file as it was.
			for i := b.start - 1; i >= 0 && strings.TrimSpace(lines[i]) == ""; i-- {
				drop[i] = true
			}
		}
	}
	if n == 0 {
		return 0, nil
	}
	var out bytes.Buffer
	for i, l := range lines {
		if !drop[i] {
			out.WriteString(l)
		}
	}
	return n, writeConfig(path, out.Bytes(), func(c *config.Config) error {
		for _, r := range c.Runners {
			if removed[r.Token] {
				return fmt.Errorf("runner %q is still there", r.Name)
			}
		}
		return nil
	})
}
