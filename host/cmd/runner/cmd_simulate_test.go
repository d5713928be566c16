package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestSimulateCommand runs `runner simulate` on the shipped example, so that the
// example config and trace keep working, and `runner simulate generate`.
func TestSimulateCommand(t *testing.T) {
	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&errOut)
		root.SetArgs(args)
		defer root.SetArgs(nil)
		if err := root.Execute(); err != nil {
			t.Fatalf("runner %s: %v (%s)", strings.Join(args, " "), err, errOut.String())
		}
		if errOut.Len() > 0 {
			t.Errorf("runner %s printed warnings: %s", strings.Join(args, " "), errOut.String())
		}
		return out.String()
	}
	out := run("simulate", "--config", "../../../examples/simulate/config.toml", "--trace", "../../../examples/simulate/trace.csv", "--json")
	var res map[string]any
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, out)
	}
	if res["jobs"] != float64(2000) || res["failed_jobs"] != float64(0) || res["boot_time"] != "log-normal, median 1m0s, p99 3m0s" {
		t.Errorf("jobs %v, failed %v, boot %v: want the example's 2000 jobs, none failed, and its [simulate] boot time", res["jobs"], res["failed_jobs"], res["boot_time"])
	}
	gen := run("simulate", "generate", "--seed", "2", "--jobs", "3")
	if lines := strings.Split(strings.TrimSpace(gen), "\n"); len(lines) != 4 || lines[0] != "arrival_s,duration_s" {
		t.Errorf("generate printed %q: want the header and 3 jobs", gen)
	}
}
