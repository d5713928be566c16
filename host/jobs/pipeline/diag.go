package pipeline

import (
	"errors"
	"fmt"
	"strings"

	"github.com/flotilla-ci/flotilla/host/internal/didyoumean"
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
	file string
	// files names the file each node was read from, for files other than file
	// (included ones) and the nodes merged from them.
	files    map[node]string
	errs     []error
	warnings []Diagnostic
	// steps counts expansion work against MaxExpansionSteps; job and jobNode name the
	// job being expanded, for the message when the budget runs out.
	steps   int
	job     string
	jobNode node
	// refused names the jobs left out for errors of their own, so that the jobs
	// that need them do not report them again as unknown.
	refused map[string]bool
}

func (d *diags) at(n node, path, format string, args ...any) Diagnostic {
	line, col := 0, 0
	if n != nil {
		line, col = n.Line, n.Column
	}
	return Diagnostic{File: d.fileOf(n), Line: line, Col: col, Path: path, Msg: fmt.Sprintf(format, args...)}
}

// fileOf returns the file a node was read from.
func (d *diags) fileOf(n node) string {
	if f, ok := d.files[n]; ok {
		return f
	}
	return d.file
}

// errorIn reports a problem with a whole file (too large, empty, not YAML), which may
// be an included one.
func (d *diags) errorIn(file, hint, format string, args ...any) {
	d.errs = append(d.errs, Diagnostic{File: file, Msg: fmt.Sprintf(format, args...), Hint: hint})
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

// suggest returns a "did you mean" hint for the closest known word, or "".
func suggest(word string, known []string) string {
	if best := didyoumean.Closest(word, known); best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return ""
}
