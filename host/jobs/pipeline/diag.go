package pipeline

import (
	"errors"
	"fmt"
	"strings"
)

// Diagnostic is one problem found in a pipeline file, with its position and the key
// path, e.g. `.gitlab-ci.yml:12:5: build.script: expected a string or a list of strings`.
type Diagnostic struct {
	File      string
	Line, Col int
	// Path is the key path, e.g. "build.script[2]".
	Path string
	Msg  string
	// Hint says what to do, when there is something better than "fix it".
	Hint string
}

func (d Diagnostic) Error() string {
	var b strings.Builder
	b.WriteString(d.File)
	if d.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", d.Line, d.Col)
	}
	b.WriteString(": ")
	if d.Path != "" {
		b.WriteString(d.Path + ": ")
	}
	b.WriteString(d.Msg)
	if d.Hint != "" {
		b.WriteString(" (" + d.Hint + ")")
	}
	return b.String()
}

// diags collects errors and warnings while a file is parsed.
type diags struct {
	file     string
	errs     []error
	warnings []Diagnostic
}

func (d *diags) at(n node, path, format string, args ...any) Diagnostic {
	line, col := 0, 0
	if n != nil {
		line, col = n.Line, n.Column
	}
	return Diagnostic{File: d.file, Line: line, Col: col, Path: path, Msg: fmt.Sprintf(format, args...)}
}

func (d *diags) errorf(n node, path, format string, args ...any) {
	d.errs = append(d.errs, d.at(n, path, format, args...))
}

func (d *diags) errorHint(n node, path, hint, format string, args ...any) {
	x := d.at(n, path, format, args...)
	x.Hint = hint
	d.errs = append(d.errs, x)
}

func (d *diags) warnf(n node, path, format string, args ...any) {
	d.warnings = append(d.warnings, d.at(n, path, format, args...))
}

func (d *diags) err() error { return errors.Join(d.errs...) }

// suggest returns a "did you mean" hint for the closest word within two edits.
func suggest(word string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if dist := editDistance(word, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("did you mean %q?", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
