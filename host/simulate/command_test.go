package simulate

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const testConfig = `concurrent = 20
[[runners]]
  name = "plain"
  url = "https://gitlab.example.com"
  token = "glrt-a"
  executor = "shell"

[[runners]]
  name = "fleet"
  url = "https://gitlab.example.com"
  token = "glrt-b"
  executor = "docker-autoscaler"
  [runners.docker]
    image = "busybox:latest"
  [runners.autoscaler]
    plugin = "aws:latest"
    max_use_count = 5
    max_instances = 20
    [[runners.autoscaler.policy]]
      idle_count = 2
      idle_time = "5m"
`

func runCLI(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := Command()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	return out.String(), errb.String(), err
}

func writeTemp(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCommand(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace.csv")
	if _, _, err := runCLI(t, "generate", "--seed", "3", "--jobs", "300", "-o", trace); err != nil {
		t.Fatalf("generate: %v", err)
	}
	jobs, err := ReadTraceFile(trace)
	if err != nil || len(jobs) != 300 {
		t.Fatalf("generated trace: %d jobs, %v", len(jobs), err)
	}
	withSim := func(sim string) string { return writeTemp(t, "config.toml", testConfig+sim) }

	t.Run("json keys", func(t *testing.T) {
		cfg := withSim("[simulate]\nboot_time = \"30s\"\n")
		out, stderr, err := runCLI(t, "--config", cfg, "--trace", trace, "--json")
		if err != nil {
			t.Fatalf("simulate: %v (%s)", err, stderr)
		}
		if strings.Contains(stderr, "warning: simulate") {
			t.Errorf("the [simulate] table drew a warning: %s", stderr)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("output is not one JSON object: %v\n%s", err, out)
		}
		for _, k := range []string{"jobs", "instance_seconds", "idle_instance_seconds", "wait_p50_s", "wait_p95_s", "wait_p99_s",
			"max_instances_seen", "clairvoyant_instance_seconds", "zero_idle_wait_s"} {
			if _, ok := m[k]; !ok {
				t.Errorf("JSON lacks %q", k)
			}
		}
		if m["jobs"].(float64) != 300 || m["zero_idle_wait_s"].(float64) != 30 || m["boot_time"] != "fixed 30s" {
			t.Errorf("jobs %v, zero_idle_wait_s %v, boot %v: want 300, 30 and the [simulate] boot time", m["jobs"], m["zero_idle_wait_s"], m["boot_time"])
		}
	})
	t.Run("flags override the table; text output; plot", func(t *testing.T) {
		cfg := withSim("[simulate]\nboot_time = \"30s\"\n")
		svg := filepath.Join(dir, "plot.svg")
		out, _, err := runCLI(t, "--config", cfg, "--trace", trace, "--boot-median", "1m", "--boot-p99", "2m", "--plot", svg)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"instance-seconds", "job wait p50/p95/p99", "clairvoyant cost floor", "zero-idle wait floor", "log-normal, median 1m0s, p99 2m0s"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		checkSVG(t, svg)
	})
	t.Run("same seed, same output", func(t *testing.T) {
		cfg := withSim("[simulate]\nboot_median = \"40s\"\nboot_p99 = \"2m\"\nseed = 9\ncapacity_error_rate = 0.1\n")
		a, _, err1 := runCLI(t, "--config", cfg, "--trace", trace, "--json")
		b, _, err2 := runCLI(t, "--config", cfg, "--trace", trace, "--json")
		if err1 != nil || err2 != nil || a != b {
			t.Fatalf("two runs differ or failed (%v, %v)", err1, err2)
		}
	})

	t.Run("sweep: table, JSON and the frontier plot", func(t *testing.T) {
		cfg := withSim("[simulate]\nboot_time = \"30s\"\n")
		svg := filepath.Join(dir, "frontier.svg")
		out, _, err := runCLI(t, "--config", cfg, "--trace", trace, "--sweep", "scale_factor=0..1:0.5", "--plot", svg)
		if err != nil {
			t.Fatal(err)
		}
		var rows []string
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				rows = append(rows, f[0])
			}
		}
		if len(rows) < 5 || !slices.Equal(rows[:5], []string{"scale_factor", "0", "0.5", "1", "forecast"}) {
			t.Errorf("want a header, one row per value and the forecast row:\n%s", out)
		}
		checkFrontierSVG(t, svg, "0.5")

		out, _, err = runCLI(t, "--config", cfg, "--trace", trace, "--sweep", "idle_count=0..1", "--json")
		if err != nil {
			t.Fatal(err)
		}
		var sw struct {
			Key    string           `json:"key"`
			Points []map[string]any `json:"points"`
			Fc     map[string]any   `json:"forecast"`
		}
		if err := json.Unmarshal([]byte(out), &sw); err != nil || sw.Key != "idle_count" || len(sw.Points) != 2 || sw.Fc["value"] != "forecast" || sw.Points[1]["queue_wait_p95_s"] == nil {
			t.Errorf("JSON (%v):\n%s", err, out)
		}
	})
	t.Run("preemptive cap: warned before the run and explained after it", func(t *testing.T) {
		busy := filepath.Join(dir, "busy.csv")
		if _, _, err := runCLI(t, "generate", "--seed", "4", "--jobs", "1000", "--max-fanout", "8", "-o", busy); err != nil {
			t.Fatal(err)
		}
		cfg := writeTemp(t, "config.toml", strings.NewReplacer("max_use_count = 5", "max_use_count = 1", "max_instances = 20", "max_instances = 200",
			"idle_count = 2", "idle_count = 1", "concurrent = 20", "concurrent = 200").Replace(testConfig)+"[simulate]\nboot_time = \"1m\"\n")
		out, stderr, err := runCLI(t, "--config", cfg, "--trace", busy)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"runners[1].autoscaler.policy[0].idle_count: preemptive mode", // config check
			"policy[0]: preemptive mode with idle_count = 1 and max_use_count = 1 starts at most 1 job per 1m0s boot (60 jobs/h)"} { // the trace's rate
			if !strings.Contains(stderr, want) {
				t.Errorf("stderr lacks %q:\n%s", want, stderr)
			}
		}
		if !strings.Contains(out, "queued in GitLab") || !strings.Contains(out, "Preemptive mode caps throughput") || strings.Contains(stderr, "Preemptive mode caps") {
			t.Errorf("want the report, not stderr, to explain the queue:\n%s\nstderr:\n%s", out, stderr)
		}
		out, stderr, err = runCLI(t, "--config", cfg, "--trace", busy, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("not one JSON object: %v\n%s", err, out)
		}
		if m["queue_wait_p95_s"].(float64) < 3600 || m["queued_jobs"].(float64) < 500 || m["warnings"] == nil || !strings.Contains(stderr, "Preemptive mode caps throughput") {
			t.Errorf("queue wait p95 %v s, queued %v, warnings %v, stderr:\n%s\nwant hours in GitLab's queue, explained in JSON and on stderr", m["queue_wait_p95_s"], m["queued_jobs"], m["warnings"], stderr)
		}
	})

	errTests := []struct {
		name string
		args []string
		want string
	}{
		{"missing flags", []string{"--trace", trace}, "needs --config FILE and --trace FILE"},
		{"bad boot time", []string{"--config", withSim("[simulate]\nboot_time = \"soon\"\n"), "--trace", trace}, `simulate.boot_time = "soon": want a duration`},
		{"both boot forms", []string{"--config", withSim("[simulate]\nboot_time = \"1s\"\nboot_median = \"1s\"\nboot_p99 = \"2s\"\n"), "--trace", trace}, "not both"},
		{"bad rate", []string{"--config", withSim(""), "--trace", trace, "--capacity-error-rate", "1.5"}, "capacity_error_rate = 1.5"},
		{"bad start", []string{"--config", withSim("[simulate]\nstart = \"monday\"\n"), "--trace", trace}, `simulate.start = "monday"`},
		{"unknown runner", []string{"--config", withSim(""), "--trace", trace, "--runner", "plain"}, `no [[runners]] entry named "plain" with a [runners.autoscaler] table`},
		{"missing trace", []string{"--config", withSim(""), "--trace", filepath.Join(dir, "nope.csv")}, "open trace"},
		{"bad generate", []string{"generate", "--jobs", "-3"}, "jobs = -3"},
		{"bad sweep key", []string{"--config", withSim(""), "--trace", trace, "--sweep", "idle=0..3"}, `--sweep "idle=0..3": unknown key "idle"`},
		{"bad sweep range", []string{"--config", withSim(""), "--trace", trace, "--sweep", "idle_count=3..0"}, "--sweep \"idle_count=3..0\": FROM 3 is above TO 0"},
		{"sweep step 0", []string{"--config", withSim(""), "--trace", trace, "--sweep", "idle_time=0s..1m:0s"}, "STEP 0s must be above 0"},
		{"sweep too many points", []string{"--config", withSim(""), "--trace", trace, "--sweep", "idle_count=0..1000"}, "at most 200"},
		{"empty sweep", []string{"--config", withSim(""), "--trace", trace, "--sweep", ""}, "--sweep \"\": want KEY=FROM..TO[:STEP]"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runCLI(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// checkSVG parses the file as XML and looks for the legend and both panels.
func checkSVG(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	elems := map[string]int{}
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			elems[se.Name.Local]++
		}
	}
	if elems["svg"] != 1 || elems["polygon"] != 3 || elems["polyline"] < 2 {
		t.Errorf("elements %v: want one svg, three stacked areas and the demand and wait lines", elems)
	}
	for _, want := range []string{">busy instances (running a job)<", ">idle instances<", ">booting instances<", "demand", "wait p95", "instances", "job wait (s)"} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("the SVG lacks %q", want)
		}
	}
}

// checkFrontierSVG parses the frontier plot and looks for its axes, reference lines,
// the forecast point and a swept value's label.
func checkFrontierSVG(t *testing.T, path, label string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	for {
		_, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v", err)
		}
	}
	for _, want := range []string{"cost: instance-seconds / clairvoyant floor", "job wait p95 (s)", "clairvoyant floor<", "one boot (30s)", ">forecast", ">" + label} {
		if !bytes.Contains(data, []byte(want)) {
			t.Errorf("the frontier SVG lacks %q", want)
		}
	}
}
