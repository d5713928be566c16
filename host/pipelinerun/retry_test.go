package pipelinerun

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRetry runs jobs whose script fails the first time (exit 3) and passes the next,
// or always fails, under different retry: settings; the attempts come from the
// runner, the outcome from the real script.
func TestRetry(t *testing.T) {
	h := newHarness(t, nil)
	dir := t.TempDir()
	failOnce := func(name string) string {
		m := filepath.Join(dir, name)
		return fmt.Sprintf("'if [ -e %s ]; then echo passed on retry; else touch %s; exit 3; fi'", m, m)
	}
	tests := []struct {
		job, retry, script string
		state              State
		attempts           int
	}{
		{"plain", "1", failOnce("plain"), StatePassed, 2},
		{"max-when", "{max: 2, when: [script_failure]}", failOnce("max-when"), StatePassed, 2},
		{"always", "{max: 1, when: always}", failOnce("always"), StatePassed, 2},
		{"other-reason", "{max: 2, when: runner_system_failure}", failOnce("other-reason"), StateFailed, 1},
		{"exit-code-matches", "{max: 1, exit_codes: [3]}", failOnce("exit-code-matches"), StatePassed, 2},
		{"exit-code-differs", "{max: 1, exit_codes: 4}", failOnce("exit-code-differs"), StateFailed, 1},
		{"gives-up", "2", "'exit 3'", StateFailed, 3},
		{"none", "0", failOnce("none"), StateFailed, 1},
	}
	var yml strings.Builder
	for _, tt := range tests {
		fmt.Fprintf(&yml, "%s:\n  retry: %s\n  script: [%s]\n", tt.job, tt.retry, tt.script)
	}
	pl := mustPlan(t, yml.String())
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]JobResult{}
	for _, j := range sum.Jobs {
		got[j.Name] = j
	}
	for _, tt := range tests {
		j := got[tt.job]
		if j.State != tt.state || j.Attempts != tt.attempts {
			log, _ := os.ReadFile(j.LogPath)
			t.Errorf("%s (retry: %s) = %s after %d attempts, want %s after %d; log:\n%s", tt.job, tt.retry, j.State, j.Attempts, tt.state, tt.attempts, log)
		}
	}
	log, err := os.ReadFile(got["plain"].LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "script_failure; retry 1 of 1") || !strings.Contains(string(log), "passed on retry") {
		t.Errorf("plain's log does not show the retry:\n%s", log)
	}
}
