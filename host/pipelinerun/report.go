package pipelinerun

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// TextProgress prints one line per job state change, with the time since the start:
//
//	[  1.2s] build        running on local-3f2a slot 0 (waited 0.8s)
type TextProgress struct {
	mu    sync.Mutex
	out   io.Writer
	start time.Time
	width int
}

// NewTextProgress prints to out; width aligns job names (the longest name's length).
func NewTextProgress(out io.Writer, width int) *TextProgress {
	return &TextProgress{out: out, start: time.Now(), width: width}
}

// JobState prints a state change; pending states are not printed.
func (p *TextProgress) JobState(job string, s State, detail string) {
	if s == StatePending {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	line := fmt.Sprintf("[%6.1fs] %-*s %s", time.Since(p.start).Seconds(), p.width, job, s)
	if detail != "" {
		line += " " + detail
	}
	fmt.Fprintln(p.out, line)
}

// PrintSummary writes a table of every job and, for each job that failed or was
// canceled, why (its failure reason and the error behind it) and the end of its log,
// so that the reason is on screen without opening a file. The last line is the
// verdict, naming the jobs that made the pipeline fail.
func PrintSummary(out io.Writer, s Summary) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	// The coverage column is there when a job reported coverage.
	withCoverage := slices.ContainsFunc(s.Jobs, func(j JobResult) bool { return j.Coverage != "" })
	cov := func(c string) string {
		if !withCoverage {
			return ""
		}
		if c != "" {
			c += "%"
		}
		return "\t" + orDash(c)
	}
	header := "JOB\tSTAGE\tSTATUS\tDURATION\tWAITED\tINSTANCE\tLOG"
	if withCoverage {
		header = "JOB\tSTAGE\tSTATUS\tDURATION\tWAITED\tINSTANCE\tCOVERAGE\tLOG"
	}
	fmt.Fprintln(tw, header)
	for _, j := range s.Jobs {
		dur, waited := "-", "-"
		if j.Attempts > 0 {
			dur, waited = j.Result.Duration.Round(10*time.Millisecond).String(), j.Waited.Round(10*time.Millisecond).String()
		}
		status := string(j.State)
		if j.Attempts > 1 {
			status += fmt.Sprintf(" (%d attempts)", j.Attempts)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s%s\t%s\n", j.Name, orDash(j.Stage), status, dur, waited, orDash(j.InstanceID), cov(j.Coverage), orDash(j.LogPath))
	}
	tw.Flush()
	printArtifacts(out, s)
	var blame, childFailed []string
	for _, j := range s.Jobs {
		if j.State != StateFailed && j.State != StateCanceled {
			continue
		}
		why := j.Why()
		// A child pipeline's job fails the pipeline only through its trigger job
		// (strategy: depend), which is blamed itself.
		if j.Parent == "" {
			blame = append(blame, fmt.Sprintf("%s %s (%s)", j.Name, j.State, short(why)))
		} else {
			childFailed = append(childFailed, j.Name)
		}
		fmt.Fprintf(out, "\n--- %s %s: %s ---\n", j.Name, j.State, orDash(why))
		// A job that never got a slot has nothing in its log but the error above.
		if j.State != StateFailed || j.LogPath == "" || j.InstanceID == "" {
			continue
		}
		fmt.Fprintf(out, "last lines of %s:\n", j.LogPath)
		for _, l := range tail(j.LogPath, 15) {
			fmt.Fprintln(out, l)
		}
	}
	verdict := "PASSED"
	if !s.Passed {
		verdict = "FAILED"
	}
	line := fmt.Sprintf("\nPipeline %s in %s", verdict, s.Duration.Round(10*time.Millisecond))
	if len(blame) > 0 {
		const most = 5
		if len(blame) > most {
			blame = append(blame[:most], fmt.Sprintf("and %d more", len(blame)-most))
		}
		line += ": " + strings.Join(blame, "; ")
	}
	if len(childFailed) > 0 && s.Passed {
		line += fmt.Sprintf("; in child pipelines %s failed, which does not fail this pipeline (their trigger jobs have no strategy: depend)", strings.Join(childFailed, ", "))
	}
	fmt.Fprintln(out, line)
}

// printArtifacts lists where the jobs' artifacts and reports were saved.
func printArtifacts(out io.Writer, s Summary) {
	first := true
	for _, j := range s.Jobs {
		if j.Artifacts == "" && len(j.Reports) == 0 {
			continue
		}
		if first {
			fmt.Fprintln(out, "\nArtifacts:")
			first = false
		}
		if j.Artifacts != "" {
			fmt.Fprintf(out, "  %s: %s\n", j.Name, j.Artifacts)
		}
		for _, r := range j.Reports {
			fmt.Fprintf(out, "  %s: report %s\n", j.Name, r)
		}
	}
}

// short is a failure's reason without the error behind it ("runner_system_failure"),
// or the first clause of an error without one.
func short(why string) string {
	if why == "" {
		return "-"
	}
	if i := strings.Index(why, ": "); i > 0 {
		return why[:i]
	}
	return why
}

// coverageNumber is the number GitLab takes from the text a coverage regex matched.
var coverageNumber = regexp.MustCompile(`\d+(?:\.\d+)?`)

// coverage returns the coverage of a job as GitLab finds it: the first number in the
// last line of the log that re matches; "" when none does.
func coverage(path string, re *regexp.Regexp) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	found := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		l, ok := readable(strings.TrimRight(sc.Text(), "\r"))
		if !ok {
			continue
		}
		if m := re.FindString(l); m != "" {
			if n := coverageNumber.FindString(m); n != "" {
				found = n
			}
		}
	}
	return found
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// tail returns the last n lines of a log file, without the timestamp prefixes and
// section markers that make raw logs hard to read in a terminal.
func tail(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{fmt.Sprintf("(cannot read log: %v)", err)}
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		l, ok := readable(sc.Text())
		if !ok {
			continue
		}
		lines = append(lines, l)
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return lines
}

// readable turns a raw job-log line into what a person wants on a terminal: without
// the timestamp prefix, a section start as its header, and nothing for a section end.
func readable(l string) (string, bool) {
	if len(l) > 31 && l[27:31] == " 00O" {
		l = l[32:]
	}
	switch {
	case strings.HasPrefix(l, "section_end:"):
		return "", false
	case strings.HasPrefix(l, "section_start:"):
		if i := strings.LastIndex(l, ansiClearLine); i >= 0 {
			return l[i+len(ansiClearLine):], true
		}
		return "", false
	}
	return l, true
}

const ansiClearLine = "\x1b[0K"

// followWriter streams a job's log to a shared terminal as readable lines, each
// prefixed with the job's name; lines of concurrent jobs interleave whole.
type followWriter struct {
	mu     *sync.Mutex
	out    io.Writer
	prefix string
	buf    []byte
}

func (w *followWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.emit(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

func (w *followWriter) emit(line string) {
	if l, ok := readable(strings.TrimRight(line, "\r")); ok {
		w.mu.Lock()
		fmt.Fprintf(w.out, "%s%s\n", w.prefix, l)
		w.mu.Unlock()
	}
}

// flush writes an unterminated last line.
func (w *followWriter) flush() {
	if len(w.buf) > 0 {
		w.emit(string(w.buf))
		w.buf = nil
	}
}
