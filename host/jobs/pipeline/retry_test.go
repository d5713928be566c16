package pipeline

import (
	"slices"
	"testing"
)

func TestParseRetry(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       Retry
	}{
		{"number", "j:\n  retry: 2\n  script: x\n", Retry{Max: 2}},
		{"max and when list", "j:\n  retry:\n    max: 1\n    when: [script_failure, stuck_or_timeout_failure]\n  script: x\n", Retry{Max: 1, When: []string{"script_failure", "stuck_or_timeout_failure"}}},
		{"when and exit_codes as one value", "j:\n  retry: {max: 2, when: always, exit_codes: 137}\n  script: x\n", Retry{Max: 2, When: []string{"always"}, ExitCodes: []int{137}}},
		{"from default", "default:\n  retry: 1\nj:\n  script: x\n", Retry{Max: 1}},
		{"job over default", "default:\n  retry: 1\nj:\n  retry: 0\n  script: x\n", Retry{Max: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(".gitlab-ci.yml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			got := p.Job("j").Retry
			if got.Max != tt.want.Max || !slices.Equal(got.When, tt.want.When) || !slices.Equal(got.ExitCodes, tt.want.ExitCodes) {
				t.Errorf("retry = %+v, want %+v", got, tt.want)
			}
			if len(p.Warnings) != 0 {
				t.Errorf("warnings: %v", p.Warnings)
			}
		})
	}
}

func TestParseRetryErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"too many", "j:\n  retry: 3\n  script: x\n", `.gitlab-ci.yml:2:10: j.retry: retry "3" is not a number from 0 to 2 (GitLab's limit) (use 0, 1 or 2)`},
		{"max too many", "j:\n  retry:\n    max: -1\n  script: x\n", `3:10: j.retry.max: retry "-1" is not a number from 0 to 2`},
		{"unknown reason", "j:\n  retry:\n    max: 1\n    when: [script_failur]\n  script: x\n", `4:12: j.retry.when: unknown retry reason "script_failur" (did you mean "script_failure"?)`},
		{"unknown key", "j:\n  retry: {max: 1, wen: always}\n  script: x\n", `2:19: j.retry.wen: unknown retry keyword "wen"`},
		{"bad exit code", "j:\n  retry: {max: 1, exit_codes: [x]}\n  script: x\n", `2:32: j.retry.exit_codes: expected an exit code number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, tt.yaml, tt.want)
		})
	}
}

func TestRetryRetries(t *testing.T) {
	tests := []struct {
		r        Retry
		attempt  int
		reason   string
		exitCode int
		want     bool
	}{
		{Retry{Max: 1}, 1, "script_failure", 1, true},
		{Retry{Max: 1}, 2, "script_failure", 1, false},
		{Retry{Max: 0}, 1, "runner_system_failure", -1, false},
		{Retry{Max: 2, When: []string{"job_execution_timeout"}}, 1, "job_execution_timeout", -1, true},
		{Retry{Max: 2, When: []string{"job_execution_timeout"}}, 1, "script_failure", 1, false},
		{Retry{Max: 2, When: []string{"unknown_failure", "always"}}, 2, "script_failure", 1, true},
		{Retry{Max: 2, ExitCodes: []int{137}}, 1, "script_failure", 137, true},
		{Retry{Max: 2, ExitCodes: []int{137}}, 1, "script_failure", 1, false},
	}
	for _, tt := range tests {
		if got := tt.r.Retries(tt.attempt, tt.reason, tt.exitCode); got != tt.want {
			t.Errorf("%+v.Retries(%d, %s, %d) = %v, want %v", tt.r, tt.attempt, tt.reason, tt.exitCode, got, tt.want)
		}
	}
}
