package pipeline

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxRetry is GitLab's limit on retry:max.
const MaxRetry = 2

// retryReasons are GitLab's retry:when values. runner exec meets only the first five
// (a job it runs fails with script_failure, runner_system_failure,
// job_execution_timeout or unknown_failure); the others are accepted and never match.
var retryReasons = []string{"always", "script_failure", "runner_system_failure", "job_execution_timeout", "unknown_failure",
	"api_failure", "stuck_or_timeout_failure", "runner_unsupported", "stale_schedule", "archived_failure",
	"unmet_prerequisites", "scheduler_failure", "data_integrity_failure"}

// Retry is a job's retry: how many times a failed job is run again, for which
// failure reasons and exit codes.
type Retry struct {
	// Max is how many times the job is retried, 0 to MaxRetry.
	Max int
	// When are the failure reasons that are retried; empty means always.
	When []string
	// ExitCodes, when set, limits retries to script failures with these exit codes.
	ExitCodes []int
}

// Retries reports whether a job that failed with reason (GitLab's name) and
// exitCode after attempt attempts is run again.
func (r Retry) Retries(attempt int, reason string, exitCode int) bool {
	if attempt > r.Max {
		return false
	}
	if len(r.ExitCodes) > 0 && !slices.Contains(r.ExitCodes, exitCode) {
		return false
	}
	return len(r.When) == 0 || slices.Contains(r.When, "always") || slices.Contains(r.When, reason)
}

// parseRetry reads retry: N or retry: {max, when, exit_codes}.
func parseRetry(d *diags, n node, path string) Retry {
	v := resolve(n)
	maxOf := func(v node, path string) int {
		m, err := strconv.Atoi(scalar(d, v, path))
		if err != nil || m < 0 || m > MaxRetry {
			d.errorHint(v, path, "use 0, 1 or 2", "retry %q is not a number from 0 to %d (GitLab's limit)", v.Value, MaxRetry)
		}
		return m
	}
	if v.Kind == yaml.ScalarNode {
		return Retry{Max: maxOf(v, path)}
	}
	m := mapping(d, v, path)
	if m == nil {
		return Retry{}
	}
	var r Retry
	for _, kv := range d.pairs(m) {
		fp := path + "." + kv.key.Value
		switch kv.key.Value {
		case "max":
			r.Max = maxOf(resolve(kv.value), fp)
		case "when":
			for i, w := range listOrOne(d, kv.value, fp) {
				s := scalar(d, w, fmt.Sprintf("%s[%d]", fp, i))
				if !slices.Contains(retryReasons, s) {
					d.errorHint(w, fp, suggestOr(s, retryReasons), "unknown retry reason %q", s)
					continue
				}
				r.When = append(r.When, s)
			}
		case "exit_codes":
			for _, c := range listOrOne(d, kv.value, fp) {
				code, err := strconv.Atoi(scalar(d, c, fp))
				if err != nil {
					d.errorf(c, fp, "expected an exit code number")
					continue
				}
				r.ExitCodes = append(r.ExitCodes, code)
			}
		default:
			d.errorHint(kv.key, fp, "allowed: max, when, exit_codes", "unknown retry keyword %q", kv.key.Value)
		}
	}
	return r
}

// listOrOne reads a list, or a single value as a list of one.
func listOrOne(d *diags, n node, path string) []node {
	if v := resolve(n); v.Kind != yaml.SequenceNode {
		return []node{v}
	}
	return seq(d, n, path)
}

// String is the retry as the dry run shows it: "2", "2 when script_failure".
func (r Retry) String() string {
	s := strconv.Itoa(r.Max)
	if len(r.When) > 0 {
		s += " when " + strings.Join(r.When, ", ")
	}
	return s
}
