package pipelinerun

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestResourceGroupSerialises runs two jobs of one resource_group that could run at
// once (the pool has room for both). Each writes when it starts, waits up to 5s for
// the other to start, and writes when it ends: run together, the first sees the
// second start and both intervals overlap; serialised, the first waits out its 5s
// alone and the second starts after it ended. The nanosecond timestamps come from
// the jobs.
func TestResourceGroupSerialises(t *testing.T) {
	h := newHarness(t, nil)
	dir := t.TempDir()
	job := func(me, other string) string {
		return fmt.Sprintf(`%s:
  resource_group: production
  script:
    - date +%%s%%N > %[2]s/%[1]s.start
    - for i in $(seq 50); do [ -e %[2]s/%[3]s.start ] && break; sleep 0.1; done
    - date +%%s%%N > %[2]s/%[1]s.end
`, me, dir, other)
	}
	pl := mustPlan(t, job("a", "b")+job("b", "a")+"other:\n  script: [echo not in the group]\n")
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Passed {
		t.Fatalf("pipeline failed: %+v", sum.Jobs)
	}
	stamp := func(name string) int64 {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	aStart, aEnd, bStart, bEnd := stamp("a.start"), stamp("a.end"), stamp("b.start"), stamp("b.end")
	if aStart < bEnd && bStart < aEnd {
		t.Errorf("a ran %d..%d and b %d..%d: they overlap", aStart, aEnd, bStart, bEnd)
	}
}

// TestCoverageInSummary checks that coverage: is taken from the last matching line
// of the job's log and shown in the summary.
func TestCoverageInSummary(t *testing.T) {
	h := newHarness(t, nil)
	pl := mustPlan(t, `unit:
  coverage: '/^total:\s+\(statements\)\s+\d+\.\d+%/'
  script:
    - 'echo "total: (statements) 12.5%"'
    - 'echo "coverage of a package: 99.0%"'
    - 'echo "total: (statements) 81.3%"'
lint:
  script: [echo no coverage here]
`)
	sum, err := h.runner.Run(context.Background(), pl)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, j := range sum.Jobs {
		got[j.Name] = j.Coverage
	}
	if got["unit"] != "81.3" || got["lint"] != "" {
		t.Errorf("coverage = %q, want unit 81.3 and none for lint", got)
	}
	var out bytes.Buffer
	PrintSummary(&out, sum)
	if !regexp.MustCompile(`(?m)^JOB .* COVERAGE +LOG$`).MatchString(out.String()) ||
		!regexp.MustCompile(`(?m)^unit .* 81\.3% +\S+unit\.log$`).MatchString(out.String()) ||
		!regexp.MustCompile(`(?m)^lint .* - +\S+lint\.log$`).MatchString(out.String()) {
		t.Errorf("summary:\n%s", out.String())
	}
}
