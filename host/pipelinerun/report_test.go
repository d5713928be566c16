package pipelinerun

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/pool"
)

func TestFollowWriterStreamsReadableLines(t *testing.T) {
	// A real job log, as the runtime writes it, split at awkward places.
	var raw bytes.Buffer
	tr := executors.NewTrace(&raw, func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) })
	tr.Section("step_script", "Executing the script", false, func() error {
		tr.Write([]byte("hello\npartial"))
		tr.Write([]byte(" line\n"))
		return nil
	})
	tr.Infof("Job succeeded")

	var out bytes.Buffer
	var mu sync.Mutex
	w := &followWriter{mu: &mu, out: &out, prefix: "build │ "}
	data := raw.Bytes()
	for len(data) > 0 { // 7-byte chunks: lines arrive in pieces
		n := min(7, len(data))
		w.Write(data[:n])
		data = data[n:]
	}
	w.flush()
	got := out.String()
	for _, want := range []string{"build │ \x1b[32;1mExecuting the script", "build │ hello\n", "build │ partial line\n", "Job succeeded"} {
		if !strings.Contains(got, want) {
			t.Errorf("followed output lacks %q:\n%s", want, got)
		}
	}
	for _, never := range []string{"2026-01-02T03:04:05", "section_end", "section_start"} {
		if strings.Contains(got, never) {
			t.Errorf("followed output contains %q:\n%s", never, got)
		}
	}
}

// TestSummaryNamesWhyJobsFailed: every job that failed or was canceled gets its
// failure reason and the error behind it, and the verdict names them; before, a
// system failure showed only "failed" and "Pipeline FAILED".
func TestSummaryNamesWhyJobsFailed(t *testing.T) {
	sum := Summary{Jobs: []JobResult{
		{Name: "build", State: StatePassed, Attempts: 1, Result: executors.Result{Status: executors.StatusSuccess}},
		{Name: "test", State: StateFailed, Attempts: 2, Result: executors.Result{Status: executors.StatusFailed,
			FailureReason: executors.RunnerSystemFailure, ExitCode: -1, Err: errors.New("unable to acquire instance: plugin local exited")}},
		{Name: "lint", State: StateFailed, Attempts: 1, Result: executors.Result{Status: executors.StatusFailed,
			FailureReason: executors.ScriptFailure, ExitCode: 2}},
		{Name: "deploy", State: StateCanceled, Reason: pool.ErrNotStarted.Error()},
	}}
	var out bytes.Buffer
	PrintSummary(&out, sum)
	for _, want := range []string{
		"--- test failed: runner_system_failure: unable to acquire instance: plugin local exited ---",
		"--- lint failed: script_failure: exit code 2 ---",
		"--- deploy canceled: " + pool.ErrNotStarted.Error() + " ---",
		"Pipeline FAILED in 0s: test failed (runner_system_failure); lint failed (script_failure); deploy canceled (not started)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
