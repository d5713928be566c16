// Package doctor is the preflight vocabulary of provider plugins: a plugin checks the
// cloud-side settings that break autoscaling (scale-in protection, overprovisioning,
// an autoscaler fighting the host) and its own permissions, reports each check as a
// Finding, fails Init on errors, and offers the same checks as a `doctor` subcommand.
package doctor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Severity grades a Finding.
type Severity string

// The severities: an error fails Init, a warning is logged, ok is reported by the
// doctor command only.
const (
	OK      Severity = "ok"
	Warning Severity = "warning"
	Error   Severity = "error"
)

// Finding is the result of one check.
type Finding struct {
	Check    string   `json:"check"`
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix,omitempty"`
}

// Apply is how Init uses findings: warnings are logged, errors are returned joined,
// each wrapping provider.ErrInvalidConfig (the group must be fixed; retrying will not
// help).
func Apply(logger hclog.Logger, findings []Finding) error {
	var errs []error
	for _, f := range findings {
		switch f.Severity {
		case Error:
			errs = append(errs, fmt.Errorf("doctor %s: %s (fix: %s): %w", f.Check, f.Message, f.Fix, provider.ErrInvalidConfig))
		case Warning:
			if logger != nil {
				logger.Warn("group check", "check", f.Check, "problem", f.Message, "fix", f.Fix)
			}
		}
	}
	return errors.Join(errs...)
}

// Report is how the doctor command uses findings: one line per check (or JSON), then
// runErr if the checks could not all run, else an error naming every failed check.
func Report(w io.Writer, findings []Finding, asJSON bool, runErr error) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(findings); err != nil {
			return err
		}
	} else {
		width := 0
		for _, f := range findings {
			width = max(width, len(f.Check))
		}
		for _, f := range findings {
			fmt.Fprintf(w, "%-7s %-*s %s\n", strings.ToUpper(string(f.Severity)), width, f.Check, f.Message)
			if f.Fix != "" {
				fmt.Fprintf(w, "        fix: %s\n", f.Fix)
			}
		}
	}
	if runErr != nil {
		return runErr
	}
	var bad []string
	for _, f := range findings {
		if f.Severity == Error {
			bad = append(bad, f.Check)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d check(s) failed: %s", len(bad), strings.Join(bad, ", "))
	}
	return nil
}
