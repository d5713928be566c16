package simulate

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// htmlCell is one element of the report that carries a number of the JSON report: its
// data-key, its text, and the sweep value of the frontier row it is in ("" outside).
type htmlCell struct {
	key, text, row string
}

// parsedReport is what a test reads back from an HTML report: it is written as
// well-formed XML, so encoding/xml reads it.
type parsedReport struct {
	cells    []htmlCell
	sections []string // section ids in order
	text     string   // all character data, entities decoded
	attrs    []xml.Attr
	elems    map[string]int
}

func parseReport(t *testing.T, data []byte) parsedReport {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = true
	pr := parsedReport{elems: map[string]int{}}
	var text strings.Builder
	type open struct {
		key, row string
		text     strings.Builder
	}
	var stack []*open
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the report is not well-formed: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			pr.elems[tok.Name.Local]++
			pr.attrs = append(pr.attrs, tok.Attr...)
			o := &open{}
			if len(stack) > 0 {
				o.row = stack[len(stack)-1].row
			}
			for _, a := range tok.Attr {
				switch a.Name.Local {
				case "data-key":
					o.key = a.Value
				case "data-value":
					o.row = a.Value
				case "id":
					if tok.Name.Local == "section" {
						pr.sections = append(pr.sections, a.Value)
					}
				}
			}
			stack = append(stack, o)
		case xml.EndElement:
			o := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if o.key != "" {
				pr.cells = append(pr.cells, htmlCell{o.key, strings.TrimSpace(o.text.String()), o.row})
			}
		case xml.CharData:
			text.Write(tok)
			for _, o := range stack {
				o.text.Write(tok)
			}
		}
	}
	pr.text = text.String()
	return pr
}

// leadingNumber reads the number a cell starts with ("74.6 s (1m14.6s)", "+101.4 %",
// "1 214 989"), and how many decimals it was written with.
var numberRE = regexp.MustCompile(`^[+-]?[0-9\x{202f}]+(\.[0-9]+)?`)

func leadingNumber(t *testing.T, text string) (float64, int) {
	t.Helper()
	m := numberRE.FindString(text)
	if m == "" {
		t.Fatalf("cell %q does not start with a number", text)
	}
	v, err := strconv.ParseFloat(strings.ReplaceAll(m, "\u202f", ""), 64)
	if err != nil {
		t.Fatalf("cell %q: %v", text, err)
	}
	dec := 0
	if i := strings.IndexByte(m, '.'); i >= 0 {
		dec = len(m) - i - 1
	}
	if strings.Contains(text, "%") {
		v /= 100
		dec += 2
	}
	return v, dec
}

// checkCell compares a cell with the JSON report's value of its key at the precision
// the cell shows.
func checkCell(t *testing.T, c htmlCell, obj map[string]any) {
	t.Helper()
	want, ok := obj[c.key].(float64)
	if !ok {
		t.Errorf("cell %s = %q (row %q): the JSON report has no number %q", c.key, c.text, c.row, c.key)
		return
	}
	got, dec := leadingNumber(t, c.text)
	if tol := 0.5*math.Pow(10, -float64(dec)) + 1e-9; math.Abs(got-want) > tol {
		t.Errorf("cell %s (row %q) shows %q, the JSON report %v", c.key, c.row, c.text, want)
	}
}

func TestReport(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace.csv")
	if _, _, err := runCLI(t, "generate", "--seed", "5", "--jobs", "400", "--days", "2", "-o", trace); err != nil {
		t.Fatal(err)
	}
	busy := filepath.Join(dir, "busy.csv")
	if _, _, err := runCLI(t, "generate", "--seed", "4", "--jobs", "1000", "--max-fanout", "8", "-o", busy); err != nil {
		t.Fatal(err)
	}
	// Not preemptive, so that the runs without a queue in GitLab have no warning.
	plain := strings.Replace(testConfig, `idle_time = "5m"`, `idle_time = "5m"
      preemptive_mode = false`, 1)
	berlin := strings.Replace(plain, `idle_time = "5m"`, `idle_time = "5m"
      periods = ["* 8-18 * * mon-fri"]
      timezone = "Europe/Berlin"`, 1)
	fourSlots := strings.Replace(berlin, "max_use_count = 5", "max_use_count = 5\n    capacity_per_instance = 4", 1)
	preemptive := strings.NewReplacer("max_use_count = 5", "max_use_count = 1", "max_instances = 20", "max_instances = 200",
		"idle_count = 2", "idle_count = 1", "concurrent = 20", "concurrent = 200").Replace(testConfig)

	// mainKeys are the numbers of the JSON report that the report must show.
	mainKeys := []string{"wait_p50_s", "wait_p95_s", "wait_p99_s", "wait_mean_s", "wait_max_s",
		"queue_wait_p50_s", "queue_wait_p95_s", "queue_wait_max_s", "zero_idle_wait_s", "zero_idle_wait_p95_s",
		"instance_seconds", "busy_instance_seconds", "idle_instance_seconds", "booting_instance_seconds", "idle_per_job_s",
		"clairvoyant_instance_seconds", "excess_over_floor", "instances_created", "max_instances_seen", "capacity_refused",
		"failed_jobs", "reconciles"}
	tests := []struct {
		name   string
		config string
		trace  string
		args   []string
		sweep  string
		// want are texts the page shows; not texts it must not.
		want, not []string
		sections  []string
	}{
		{"fixed boot, one slot an instance, UTC", plain + "[simulate]\nboot_time = \"30s\"\n", trace, nil, "",
			[]string{"wall-clock time in UTC", "Mon 2 Mar", "Tue 3 Mar", "instances, or jobs (one slot each)", "demand: jobs waiting or running",
				"boot time fixed 30s", "the fleet runner in config.toml", "400 jobs from trace.csv"},
			[]string{"÷", "right axis", "Warnings", "Frontier"},
			[]string{"glance", "day", "wait", "cost", "floors"}},
		{"log-normal boot, four slots, a policy in Berlin", fourSlots, trace, []string{"--boot-median", "40s", "--boot-p99", "2m", "--seed", "3"}, "",
			[]string{"wall-clock time in Europe/Berlin", "the trace starts Mon 2 Mar 2026 01:00", "demand: jobs waiting or running (right axis)",
				"jobs waiting or running", "4 slots per instance", "log-normal, median 40s, p99 2m0s"},
			[]string{"÷", "(one slot each)", "Frontier"},
			[]string{"glance", "day", "wait", "cost", "floors"}},
		{"a preemptive queue: the warning", preemptive + "[simulate]\nboot_time = \"1m\"\n", busy, nil, "",
			[]string{"Preemptive mode caps throughput", "of which queued in GitLab"},
			[]string{"Frontier"},
			[]string{"glance", "day", "wait", "cost", "floors", "warnings"}},
		{"a sweep: the frontier", berlin + "[simulate]\nboot_time = \"30s\"\n", trace, nil, "idle_count=0..4:2",
			[]string{"Frontier: idle_count against the forecast policy", "cost / floor", `mode = "forecast"`, "wall-clock time in Europe/Berlin"},
			nil,
			[]string{"glance", "day", "wait", "cost", "floors", "frontier"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "config.toml")
			if err := os.WriteFile(cfg, []byte(tt.config), 0o644); err != nil {
				t.Fatal(err)
			}
			base := append([]string{"--config", cfg, "--trace", tt.trace}, tt.args...)
			page := filepath.Join(t.TempDir(), "report.html")
			args := append(slices.Clone(base), "--report", page)
			if tt.sweep != "" {
				args = append(args, "--sweep", tt.sweep)
			}
			if _, stderr, err := runCLI(t, args...); err != nil {
				t.Fatalf("simulate --report: %v (%s)", err, stderr)
			}
			data, err := os.ReadFile(page)
			if err != nil {
				t.Fatal(err)
			}
			checkSelfContained(t, data)
			pr := parseReport(t, data)

			// The run's numbers equal those of --json of the same config and trace.
			out, _, err := runCLI(t, append(slices.Clone(base), "--json")...)
			if err != nil {
				t.Fatal(err)
			}
			var obj map[string]any
			if err := json.Unmarshal([]byte(out), &obj); err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for _, c := range pr.cells {
				if c.row == "" {
					checkCell(t, c, obj)
					seen[c.key] = true
				}
			}
			for _, k := range mainKeys {
				if !seen[k] {
					t.Errorf("the report does not show %s", k)
				}
			}
			if !slices.Equal(pr.sections, tt.sections) {
				t.Errorf("sections %q, want %q", pr.sections, tt.sections)
			}
			for _, w := range tt.want {
				if !strings.Contains(pr.text, w) {
					t.Errorf("the report does not say %q", w)
				}
			}
			for _, w := range tt.not {
				if strings.Contains(pr.text, w) {
					t.Errorf("the report says %q", w)
				}
			}
			if pr.elems["svg"] != 1+boolInt(tt.sweep != "") {
				t.Errorf("%d svg elements: want the day plot, and the frontier with --sweep", pr.elems["svg"])
			}
			if tt.sweep == "" {
				return
			}

			// The frontier's rows equal the points of --sweep --json.
			out, _, err = runCLI(t, append(slices.Clone(base), "--sweep", tt.sweep, "--json")...)
			if err != nil {
				t.Fatal(err)
			}
			var sw struct {
				Points   []map[string]any `json:"points"`
				Forecast map[string]any   `json:"forecast"`
			}
			if err := json.Unmarshal([]byte(out), &sw); err != nil {
				t.Fatal(err)
			}
			byValue := map[string]map[string]any{}
			var order []string
			for _, pt := range append(sw.Points, sw.Forecast) {
				v, _ := pt["value"].(string)
				byValue[v] = pt
				order = append(order, v)
			}
			var rows []string
			perRow := map[string]int{}
			for _, c := range pr.cells {
				if c.row == "" {
					continue
				}
				if len(rows) == 0 || rows[len(rows)-1] != c.row {
					rows = append(rows, c.row)
				}
				pt, ok := byValue[c.row]
				if !ok {
					t.Errorf("frontier row %q: no such point in the JSON", c.row)
					continue
				}
				checkCell(t, c, pt)
				perRow[c.row]++
			}
			if !slices.Equal(rows, order) {
				t.Errorf("frontier rows %q, want %q", rows, order)
			}
			for _, v := range order {
				if perRow[v] != 7 {
					t.Errorf("frontier row %q has %d numbers, want 7", v, perRow[v])
				}
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// checkSelfContained fails unless the page loads nothing from anywhere: no URL of any
// scheme (not even the SVG namespace, which inline SVG does without), no script, no
// stylesheet or image to fetch, links only within the page, and a viewport for phones.
func checkSelfContained(t *testing.T, data []byte) {
	t.Helper()
	low := strings.ToLower(string(data))
	for _, bad := range []string{"http", "//", "<script", "<link", "<img", "<iframe", "<object", "src=", "url(", "@import", "@font-face"} {
		if bad == "//" {
			// "//" may only appear inside the text of the page, never in markup: the
			// page has none, so any is a protocol-relative URL.
			if strings.Contains(low, "=\"//") || strings.Contains(low, "='//") {
				t.Errorf("the report has a protocol-relative URL")
			}
			continue
		}
		if i := strings.Index(low, bad); i >= 0 {
			t.Errorf("the report has %q: …%s…", bad, low[max(0, i-60):min(len(low), i+60)])
		}
	}
	for _, m := range regexp.MustCompile(`href="([^"]*)"`).FindAllStringSubmatch(low, -1) {
		if !strings.HasPrefix(m[1], "#") {
			t.Errorf("link to %q: want links within the page only", m[1])
		}
	}
	if !strings.Contains(low, `<meta name="viewport" content="width=device-width, initial-scale=1"/>`) {
		t.Error("the report has no viewport meta: phones would show it zoomed out")
	}
}

func TestWriteHTMLNoResult(t *testing.T) {
	if err := WriteHTML(io.Discard, Report{}); err == nil {
		t.Error("a report without a result: want an error")
	}
}

func TestGroupThousands(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		want string
	}{{0, "0"}, {999.4, "999"}, {999.5, "1\u202f000"}, {1214989, "1\u202f214\u202f989"}, {-12345, "-12\u202f345"}} {
		if got := groupThousands(tt.v); got != tt.want {
			t.Errorf("groupThousands(%v) = %q, want %q", tt.v, got, tt.want)
		}
	}
}
