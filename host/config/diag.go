package config

import (
	"errors"
	"fmt"
	"strings"
)

// Severity says whether a Diagnostic stops the configuration from loading.
type Severity int

// The severities: a Warning is reported and the configuration still loads; an Error
// makes Load return no configuration.
const (
	Warning Severity = iota
	Error
)

// String returns "warning" or "error".
func (s Severity) String() string {
	if s == Error {
		return "error"
	}
	return "warning"
}

// Diagnostic is one problem found in a configuration file, located by file, line,
// column and key path (e.g. "runners[0].autoscaler.policy[1].idle_time").
type Diagnostic struct {
	Severity Severity
	File     string
	// Line and Column are 1-based; 0 when the problem has no place in the file (for
	// example a table that is missing altogether is reported at its parent).
	Line, Column int
	// Path is the key path the problem is about; "" for the whole document.
	Path    string
	Message string
	// Hint says how to fix it; may be empty.
	Hint string
}

// String formats the diagnostic as "file:line:col: severity: path: message (hint)".
func (d Diagnostic) String() string {
	var b strings.Builder
	file := d.File
	if file == "" {
		file = "config.toml"
	}
	b.WriteString(file)
	if d.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", d.Line, d.Column)
	}
	fmt.Fprintf(&b, ": %s: ", d.Severity)
	if d.Path != "" {
		b.WriteString(d.Path)
		b.WriteString(": ")
	}
	b.WriteString(d.Message)
	if d.Hint != "" {
		b.WriteString(" (hint: ")
		b.WriteString(d.Hint)
		b.WriteString(")")
	}
	return b.String()
}

// Diagnostics is every problem found in one file, in file order.
type Diagnostics []Diagnostic

// HasErrors reports whether any diagnostic is an Error.
func (ds Diagnostics) HasErrors() bool {
	for _, d := range ds {
		if d.Severity == Error {
			return true
		}
	}
	return false
}

// Errors returns only the Error diagnostics.
func (ds Diagnostics) Errors() Diagnostics { return ds.filter(Error) }

// Warnings returns only the Warning diagnostics.
func (ds Diagnostics) Warnings() Diagnostics { return ds.filter(Warning) }

func (ds Diagnostics) filter(s Severity) Diagnostics {
	var out Diagnostics
	for _, d := range ds {
		if d.Severity == s {
			out = append(out, d)
		}
	}
	return out
}

// String is one diagnostic per line.
func (ds Diagnostics) String() string {
	lines := make([]string, len(ds))
	for i, d := range ds {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

// Err returns an *InvalidError holding the errors, or nil when there are none.
func (ds Diagnostics) Err() error {
	errs := ds.Errors()
	if len(errs) == 0 {
		return nil
	}
	return &InvalidError{Diagnostics: errs}
}

// InvalidError is returned by Load when the file has errors; it lists all of them.
type InvalidError struct {
	Diagnostics Diagnostics
}

// Error lists every error, one per line after a summary line.
func (e *InvalidError) Error() string {
	file := "config.toml"
	if len(e.Diagnostics) > 0 && e.Diagnostics[0].File != "" {
		file = e.Diagnostics[0].File
	}
	n := len(e.Diagnostics)
	plural := "s"
	if n == 1 {
		plural = ""
	}
	return fmt.Sprintf("invalid configuration %s: %d error%s:\n%s", file, n, plural, e.Diagnostics.String())
}

// AsInvalid returns the diagnostics of an *InvalidError in err's chain.
func AsInvalid(err error) (Diagnostics, bool) {
	var ie *InvalidError
	if errors.As(err, &ie) {
		return ie.Diagnostics, true
	}
	return nil, false
}
