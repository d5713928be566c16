package chaos

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestAccountJobs checks the suite's own rules for lost, interrupted, double-run and
// orphaned jobs, since every table cell depends on them.
func TestAccountJobs(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	m := func(kind, job, pid string, s float64) marker {
		return marker{at: at(s), kind: kind, phase: phaseFault, job: job, pid: pid}
	}
	passedOut := "[   1.0s] a passed 1.00s on local-x\n\nPipeline PASSED in 1s\n"
	failedOut := "[   1.0s] a failed 1.00s on local-x\n\nPipeline FAILED in 1s\n"
	tests := []struct {
		name    string
		o       outcome
		markers []marker
		mayLose bool
		want    func(jobReport) bool
	}{
		{"ran once, passed", outcome{phase: phaseFault, stdout: passedOut, exit0: true, end: at(5)},
			[]marker{m("start", "a", "1", 0), m("done", "a", "1", 1)}, false,
			func(r jobReport) bool { return len(r.lost)+len(r.interrupted)+len(r.double)+len(r.orphans) == 0 }},
		{"reported passed without a done marker", outcome{phase: phaseFault, stdout: passedOut, exit0: true, end: at(5)},
			[]marker{m("start", "a", "1", 0)}, true,
			func(r jobReport) bool { return len(r.lost) == 1 && len(r.interrupted) == 0 }},
		{"not done, the fault may lose it", outcome{phase: phaseFault, stdout: failedOut, end: at(5)},
			[]marker{m("start", "a", "1", 0)}, true,
			func(r jobReport) bool { return len(r.lost) == 0 && slices.Equal(r.interrupted, []string{"a"}) }},
		{"not done, the fault must not lose it", outcome{phase: phaseFault, stdout: failedOut, end: at(5)},
			nil, false,
			func(r jobReport) bool { return len(r.lost) == 1 && len(r.interrupted) == 0 }},
		{"ran to the end twice", outcome{phase: phaseFault, stdout: passedOut, exit0: true, end: at(5)},
			[]marker{m("start", "a", "1", 0), m("start", "a", "2", 0.5), m("done", "a", "1", 1), m("done", "a", "2", 1.5)}, false,
			func(r jobReport) bool { return len(r.double) == 1 && len(r.lost) == 0 }},
		{"an attempt outlived a later one's start", outcome{phase: phaseFault, stdout: passedOut, exit0: true, end: at(5)},
			[]marker{m("start", "a", "1", 0), m("start", "a", "2", 0.5), m("done", "a", "1", 1)}, false,
			func(r jobReport) bool { return len(r.double) == 1 }},
		{"a retry after the first attempt died", outcome{phase: phaseFault, stdout: passedOut, exit0: true, end: at(5)},
			[]marker{m("start", "a", "1", 0), m("start", "a", "2", 0.5), m("done", "a", "2", 1)}, false,
			func(r jobReport) bool { return len(r.double)+len(r.lost) == 0 }},
		{"finished after its runner was gone", outcome{phase: phaseFault, stdout: "", end: at(1)},
			[]marker{m("start", "a", "1", 0), m("done", "a", "1", 3)}, true,
			func(r jobReport) bool { return len(r.orphans) == 1 }},
		{"markers of the other run do not count", outcome{phase: phaseRecover, stdout: failedOut, end: at(5)},
			[]marker{m("start", "a", "1", 0), m("done", "a", "1", 1)}, false,
			func(r jobReport) bool { return len(r.lost) == 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := accountJobs(tt.o, tt.markers, []string{"a"}, tt.mayLose); !tt.want(r) {
				t.Errorf("accountJobs = %+v", r)
			}
		})
	}
}

// TestWriteReport checks that the report only ever touches the text between the chaos
// markers, and adds the section (or the file) when it is missing.
func TestWriteReport(t *testing.T) {
	sum := summarize([]*result{{plugin: pluginLocal, fault: "runner-kill9", recovered: true, recovery: time.Second}})
	dir := t.TempDir()

	path := filepath.Join(dir, "new.md")
	if err := writeReport(path, sum, time.Minute); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(got), "# Reliability\n\n## Chaos suite\n\n"+beginMarker+"\n") || !strings.Contains(string(got), "| local | runner-kill9 | 1 | 0 |") {
		t.Errorf("new file:\n%s", got)
	}

	path = filepath.Join(dir, "existing.md")
	before := "# Reliability\n\n## Signal contract\n\nSIGTERM is graceful.\n\n## Chaos suite\n\nHand-written.\n\n" + beginMarker + "\nold table\n" + endMarker + "\n\n## After\n\nkept\n"
	if err := os.WriteFile(path, []byte(before), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeReport(path, sum, time.Minute); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(path)
	s := string(got)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if s[:i] != before[:strings.Index(before, beginMarker)] || s[j:] != before[strings.Index(before, endMarker):] {
		t.Errorf("text outside the markers changed:\n%s", s)
	}
	if strings.Contains(s, "old table") || !strings.Contains(s[i:j], "runner-kill9") {
		t.Errorf("section not replaced:\n%s", s)
	}

	path = filepath.Join(dir, "other.md")
	if err := os.WriteFile(path, []byte("# Reliability\n\n## Signal contract\n\ntext\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeReport(path, sum, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !strings.HasPrefix(string(got), "# Reliability\n\n## Signal contract\n\ntext\n\n## Chaos suite\n\n"+beginMarker) {
		t.Errorf("section not appended:\n%s", got)
	}

	path = filepath.Join(dir, "broken.md")
	if err := os.WriteFile(path, []byte(endMarker+"\n"+beginMarker+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeReport(path, sum, time.Minute); err == nil {
		t.Error("markers out of order: no error")
	}
}
