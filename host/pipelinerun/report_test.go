package pipelinerun

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/executors"
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
