package config

import (
	"fmt"
	"strings"
	"testing"
)

// want is one expected diagnostic: "severity line:col path" (or a prefix of it, or
// "severity path" exactly) plus a message fragment and a hint fragment.
type want struct {
	where, msg, hint string
}

// checkDiagnostics parses doc as c.toml and checks its diagnostics against wants, in
// order: each names c.toml and a line, and when there are errors nothing is applied.
// It returns the diagnostics for further checks.
func checkDiagnostics(t *testing.T, doc string, wants []want) Diagnostics {
	t.Helper()
	cfg, diags, err := Parse("c.toml", []byte(doc))
	var got []string
	for _, d := range diags {
		got = append(got, fmt.Sprintf("%s %d:%d %s | %s | %s", d.Severity, d.Line, d.Column, d.Path, d.Message, d.Hint))
	}
	if len(diags) != len(wants) {
		t.Fatalf("got %d diagnostics, want %d:\n%s", len(diags), len(wants), strings.Join(got, "\n"))
	}
	for i, w := range wants {
		d := diags[i]
		where := strings.HasPrefix(got[i], w.where) || fmt.Sprintf("%s %s", d.Severity, d.Path) == w.where
		if !where || !strings.Contains(d.Message, w.msg) || !strings.Contains(d.Hint, w.hint) {
			t.Errorf("diagnostic %d:\n got  %s\n want %q, message ~ %q, hint ~ %q", i, got[i], w.where, w.msg, w.hint)
		}
		if d.File != "c.toml" || d.Line == 0 {
			t.Errorf("diagnostic %d does not name c.toml and a line: %s", i, got[i])
		}
	}
	if diags.HasErrors() != (err != nil) || diags.HasErrors() != (cfg == nil) {
		t.Errorf("errors %v but err=%v cfg=%v: nothing may be half-applied", diags.HasErrors(), err, cfg != nil)
	}
	return diags
}

// diag is one expected diagnostic of a table test: severity, key path, and parts of
// its message and hint.
type diag struct{ sev, path, msg, hint string }

// checkDiagTable is checkDiagnostics for a table of diags.
func checkDiagTable(t *testing.T, doc string, ds []diag) {
	t.Helper()
	wants := make([]want, len(ds))
	for i, d := range ds {
		wants[i] = want{d.sev + " " + d.path, d.msg, d.hint}
	}
	checkDiagnostics(t, doc, wants)
}

const okRunner = `
[[runners]]
  executor = "instance"
  [runners.autoscaler]
    plugin = "local"
`

func TestCheckDiagnostics(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []want
	}{
		{"valid", okRunner, nil},
		{"syntax error", "concurrent = \n", []want{{"error 1:14 ", "", "TOML syntax"}}},
		{"unterminated string", "[[runners]]\nname = \"x\n", []want{{"error 2:", "", ""}}},
		{"duplicate key", "concurrent = 1\nconcurrent = 2\n", []want{{"error 2:1 concurrent", "already defined", "only once"}}},
		{"unknown global key with suggestion", "concurent = 2\n" + okRunner,
			[]want{{"warning 1:1 concurent", `unknown key "concurent"`, `did you mean "concurrent"?`}}},
		{"docker+machine spelling in a policy", okRunner + "    [[runners.autoscaler.policy]]\n      IdleCount = 3\n",
			[]want{{"warning 7:7 runners[0].autoscaler.policy[0].IdleCount", "unknown key", `did you mean "idle_count"?`}}},
		{"key in the wrong table", "[[runners]]\n  executor = \"instance\"\n  [runners.autoscaler]\n    plugin = \"local\"\n    shell = \"sh\"\n",
			[]want{{"warning 5:5 runners[0].autoscaler.shell", "unknown key", "runners[0].shell"}}},
		{"key matched ignoring case is read", "[[runners]]\n  Executor = \"instance\"\n  [runners.Autoscaler]\n    plugin = \"local\"\n    Max_Instances = \"2\"\n",
			[]want{{"warning 2:3 runners[0].Executor", `read as "executor"`, `write "executor"`},
				{"warning 3:12 runners[0].Autoscaler", `read as "autoscaler"`, ""},
				{"warning 5:5 runners[0].autoscaler.Max_Instances", `read as "max_instances"`, ""},
				{"error 5:5 runners[0].autoscaler.max_instances", "got string, want integer", ""}}},
		{"unknown key without suggestion", "zzz_totally_new = 1\n" + okRunner, []want{{"warning 1:1 zzz_totally_new", "unknown key", ""}}},
		{"wrong type int", "concurrent = \"10\"\n" + okRunner, []want{{"error 1:1 concurrent", "got string, want integer", "quotes"}}},
		{"wrong type bool", okRunner + "  [runners.docker]\n    privileged = \"yes\"\n",
			[]want{{"error 7:5 runners[0].docker.privileged", "want boolean", "true or false"}}},
		{"runners not an array of tables", "[runners]\nexecutor = \"instance\"\n",
			[]want{{"error 1:2 runners", "got table, want array of tables", ""}}},
		{"bad duration", okRunner + "    instance_acquire_timeout = \"15 minutes\"\n",
			[]want{{"error 6:5 runners[0].autoscaler.instance_acquire_timeout", `invalid duration "15 minutes"`, "20m0s"}}},
		{"duration as integer", okRunner + "    update_interval = 60\n",
			[]want{{"error 6:5 runners[0].autoscaler.update_interval", "got integer", `"60s"`}}},
		{"negative duration", okRunner + "    [runners.autoscaler.connector_config]\n      timeout = \"-5m\"\n",
			[]want{{"error 7:7 runners[0].autoscaler.connector_config.timeout", "negative", ""}}},
		{"idle_time below 1s", okRunner + "    [[runners.autoscaler.policy]]\n      idle_count = 1\n    [[runners.autoscaler.policy]]\n      idle_time = \"500ms\"\n",
			[]want{{"error 9:7 runners[0].autoscaler.policy[1].idle_time", "below the minimum of 1s", "at least 1s"}}},
		{"idle_time zero, as in GitLab's examples", okRunner + "    [[runners.autoscaler.policy]]\n      idle_count = 0\n      idle_time = \"0s\"\n", nil},
		{"idle_time a nanosecond", okRunner + "    [[runners.autoscaler.policy]]\n      idle_time = \"1ns\"\n",
			[]want{{"error 7:7 runners[0].autoscaler.policy[0].idle_time", "below the minimum", ""}}},
		{"negative capacity", okRunner + "    capacity_per_instance = -1\n",
			[]want{{"error 6:5 runners[0].autoscaler.capacity_per_instance", "must not be negative", ""}}},
		{"bad cron period", okRunner + "    [[runners.autoscaler.policy]]\n      periods = [\"* * * * *\", \"* 25 * * *\"]\n",
			[]want{{"error 7:31 runners[0].autoscaler.policy[0].periods[1]", `invalid period "* 25 * * *"`, "5 fields"}}},
		{"docker+machine period in a policy", okRunner + "    [[runners.autoscaler.policy]]\n      periods = [\"* * 9-17 * * mon-fri *\"]\n",
			[]want{{"error 7:18 runners[0].autoscaler.policy[0].periods[0]", "invalid period", "runner config migrate"}}},
		{"unknown timezone", okRunner + "    [[runners.autoscaler.policy]]\n      timezone = \"Mars/Olympus\"\n",
			[]want{{"error 7:7 runners[0].autoscaler.policy[0].timezone", `unknown timezone "Mars/Olympus"`, "IANA"}}},
		{"unknown executor", "[[runners]]\n  executor = \"dokcer\"\n",
			[]want{{"error 2:3 runners[0].executor", `unknown executor "dokcer"`, "docker-autoscaler"}}},
		{"executor without autoscaler", "[[runners]]\n  name = \"a\"\n  executor = \"docker-autoscaler\"\n",
			[]want{{"error 3:3 runners[0].executor", "executor requires autoscaler config", "[runners.autoscaler]"}}},
		{"autoscaler without plugin", "[[runners]]\n  executor = \"instance\"\n  [runners.autoscaler]\n    max_use_count = 2\n",
			[]want{{"error 3:12 runners[0].autoscaler", "plugin is not set", ""}}},
		{"pull policy not allowed", okRunner + "  [runners.docker]\n    pull_policy = \"always\"\n    allowed_pull_policies = [\"if-not-present\"]\n",
			[]want{{"error 7:5 runners[0].docker.pull_policy", `"always" is not in allowed_pull_policies`, "if-not-present"}}},
		{"pull policy array element", okRunner + "  [runners.docker]\n    pull_policy = [\"never\", \"sometimes\"]\n",
			[]want{{"error 7:29 runners[0].docker.pull_policy[1]", `unknown pull policy "sometimes"`, ""}}},
		{"pull policy wrong type", okRunner + "  [runners.docker]\n    pull_policy = 3\n",
			[]want{{"error 7:5 runners[0].docker.pull_policy", "want string or array of strings", ""}}},
		{"unsupported executor is a warning", "[[runners]]\n  executor = \"shell\"\n",
			[]want{{"warning 2:3 runners[0].executor", `executor "shell" is not run by Flotilla`, ""}}},
		{"concurrent unset, below capacity", okRunner + "    max_instances = 3\n",
			[]want{{"warning 6:5 concurrent", "concurrent = 1 caps the jobs", "concurrent = 3"}}},
		{"concurrent below capacity", "concurrent = 2\n" + okRunner + "    max_instances = 3\n    capacity_per_instance = 2\n",
			[]want{{"warning 1:1 concurrent", "caps the jobs", "concurrent = 6"}}},
		{"bad listen address", "listen_address = \"9252\"\n" + okRunner, []want{{"error 1:1 listen_address", "invalid listen_address", "host:port"}}},
		{"bad protocol", okRunner + "    [runners.autoscaler.connector_config]\n      protocol = \"telnet\"\n",
			[]want{{"error 7:7 runners[0].autoscaler.connector_config.protocol", "unknown protocol", ""}}},
		{"inline table policy", okRunner + "    policy = [{idle_count = -1, idle_time = \"1m\"}]\n",
			[]want{{"error 6:16 runners[0].autoscaler.policy[0].idle_count", "must not be negative", ""}}},
		{"capacity_per_instance beyond int", okRunner + "    capacity_per_instance = 9223372036854775807\n",
			[]want{{"error 6:5 runners[0].autoscaler.capacity_per_instance", "= 9223372036854775807 is out of range (at most 1000)", "at most 1000 job slots per instance"}}},
		{"capacity_per_instance at the bound", okRunner + "    capacity_per_instance = 1000\n", nil},
		{"max_instances out of range", "concurrent = 100000000\n" + okRunner + "    max_instances = 100001\n",
			[]want{{"error 7:5 runners[0].autoscaler.max_instances", "out of range (at most 100000)", "instances"}}},
		{"overflowing product still warns about concurrent", okRunner + "    max_instances = 4611686018427387904\n    capacity_per_instance = 4\n",
			[]want{{"error 6:5 runners[0].autoscaler.max_instances", "out of range", ""},
				{"warning 6:5 concurrent", "too large to count", "lower max_instances"}}},
		{"huge idle_count", okRunner + "    [[runners.autoscaler.policy]]\n      idle_count = 9223372036854775807\n",
			[]want{{"error 7:7 runners[0].autoscaler.policy[0].idle_count", "out of range (at most 1000000)", "job slots"}}},
		{"idle_count above what max_instances holds", "concurrent = 20\n" + okRunner + "    max_instances = 10\n    capacity_per_instance = 2\n    [[runners.autoscaler.policy]]\n      idle_count = 50\n",
			[]want{{"warning 10:7 runners[0].autoscaler.policy[0].idle_count", "more than the 20 job slots", "lower idle_count to 20"}}},
		{"huge scale_factor_limit", okRunner + "    [[runners.autoscaler.policy]]\n      scale_factor_limit = 1000001\n",
			[]want{{"error 7:7 runners[0].autoscaler.policy[0].scale_factor_limit", "out of range", ""}}},
		{"scale_factor nan", okRunner + "    [[runners.autoscaler.policy]]\n      scale_factor = nan\n",
			[]want{{"error 7:7 runners[0].autoscaler.policy[0].scale_factor", "must be a number, got NaN", ""}}},
		{"scale_factor inf", okRunner + "    [[runners.autoscaler.policy]]\n      scale_factor = inf\n",
			[]want{{"error 7:7 runners[0].autoscaler.policy[0].scale_factor", "must be a number, got +Inf", ""}}},
		{"scale_factor 1e308", okRunner + "    [[runners.autoscaler.policy]]\n      scale_factor = 1e308\n",
			[]want{{"error 7:7 runners[0].autoscaler.policy[0].scale_factor", "out of range (at most 1000)", ""}}},
		{"scale_factor 0 is the default", okRunner + "    [[runners.autoscaler.policy]]\n      scale_factor = 0.0\n      scale_factor_limit = 0\n", nil},
		{"update_interval 1ns", okRunner + "    update_interval = \"1ns\"\n",
			[]want{{"error 6:5 runners[0].autoscaler.update_interval", "busy-loop (minimum 10ms)", "at least 10ms"}}},
		{"every loop interval has the floor", okRunner + "    update_interval_when_expecting = \"1us\"\n    deletion_retry_interval = \"1ms\"\n    shutdown_deletion_interval = \"9ms\"\n    [runners.autoscaler.connector_config]\n      keepalive = \"1ns\"\n",
			[]want{{"error 6:5 runners[0].autoscaler.update_interval_when_expecting", "busy-loop", ""},
				{"error 7:5 runners[0].autoscaler.deletion_retry_interval", "busy-loop", ""},
				{"error 8:5 runners[0].autoscaler.shutdown_deletion_interval", "busy-loop", ""},
				{"error 10:7 runners[0].autoscaler.connector_config.keepalive", "busy-loop", ""}}},
		{"short intervals at the floor", okRunner + "    update_interval = \"10ms\"\n    update_interval_when_expecting = \"50ms\"\n", nil},
		{"output_limit overflowing bytes", "[[runners]]\n  executor = \"instance\"\n  output_limit = 9007199254740993\n  [runners.autoscaler]\n    plugin = \"local\"\n",
			[]want{{"error 3:3 runners[0].output_limit", "out of range", "kilobytes"}}},
		// Preemptive mode caps throughput at idle_count jobs per boot on instances that
		// are used up; config check cannot know the arrival rate, so it warns only where
		// the cap is small.
		{"preemptive by default, idle_count 1, one job per instance", okRunner + "    max_use_count = 1\n    [[runners.autoscaler.policy]]\n      idle_count = 1\n",
			[]want{{"warning 8:7 runners[0].autoscaler.policy[0].idle_count", "preemptive mode (the default with idle_count > 0) with idle_count = 1 caps throughput at 1 job per instance boot time", `preemptive_mode = false, or mode = "forecast"`}}},
		{"preemptive_mode = true, idle_count 2, max_use_count 5", okRunner + "    max_use_count = 5\n    [[runners.autoscaler.policy]]\n      idle_count = 2\n      preemptive_mode = true\n",
			[]want{{"warning 8:7 runners[0].autoscaler.policy[0].idle_count", "preemptive_mode = true with idle_count = 2 lets at most 2 jobs start on new instances", "raise idle_count"}}},
		{"preemptive_mode = true without idle_count starts nothing", okRunner + "    [[runners.autoscaler.policy]]\n      preemptive_mode = true\n",
			[]want{{"warning 7:7 runners[0].autoscaler.policy[0].preemptive_mode", "no job starts while it is active", "preemptive_mode = false"}}},
		{"not preemptive: no cap", okRunner + "    max_use_count = 1\n    [[runners.autoscaler.policy]]\n      idle_count = 1\n      preemptive_mode = false\n", nil},
		{"forecast policy: no cap", okRunner + "    max_use_count = 1\n    [[runners.autoscaler.policy]]\n      mode = \"forecast\"\n      idle_count = 1\n", nil},
		{"idle_count 3: above the threshold", okRunner + "    max_use_count = 1\n    [[runners.autoscaler.policy]]\n      idle_count = 3\n", nil},
		{"reused instances: the cap only slows growth", okRunner + "    [[runners.autoscaler.policy]]\n      idle_count = 1\n", nil},
		{"max_use_count 11: reused enough", okRunner + "    max_use_count = 11\n    [[runners.autoscaler.policy]]\n      idle_count = 1\n", nil},
		{"forecast policy", okRunner + "    [[runners.autoscaler.policy]]\n      mode = \"forecast\"\n      target_wait = \"10s\"\n      target_percentile = 99\n", nil},
		{"unknown policy mode", okRunner + "    [[runners.autoscaler.policy]]\n      mode = \"predictive\"\n",
			[]want{{"error 7:7 runners[0].autoscaler.policy[0].mode", `unknown policy mode "predictive"`, `"forecast"`}}},
		{"forecast targets out of range", okRunner + "    [[runners.autoscaler.policy]]\n      mode = \"forecast\"\n      target_percentile = 100\n",
			[]want{{"error 8:7 runners[0].autoscaler.policy[0].target_percentile", "out of range", "above 0 and below 100"}}},
		{"forecast key on a fixed policy", okRunner + "    [[runners.autoscaler.policy]]\n      target_wait = \"5s\"\n",
			[]want{{"warning 7:7 runners[0].autoscaler.policy[0].target_wait", "read only by a forecast policy", `mode = "forecast"`}}},
		{"plugin_config keeps any keys", okRunner + "    [runners.autoscaler.plugin_config]\n      anything = {nested = [1, 2.5, \"x\"]}\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkDiagnostics(t, tt.doc, tt.want)
		})
	}
}

// TestCheckReportsEverything: one run lists every problem, also after a type error.
func TestCheckReportsEverything(t *testing.T) {
	doc := `concurrent = "ten"
log_level = "verbose"
log_format = "xml"
[[runners]]
  executor = "instance"
  limit = -1
  [runners.autoscaler]
    plugin = "local"
    update_interval = 60
    [[runners.autoscaler.policy]]
      idle_time = "1ms"
      timezone = "Nowhere/Else"
`
	_, diags, err := Parse("all.toml", []byte(doc))
	if err == nil {
		t.Fatal("want an error")
	}
	var paths []string
	for _, d := range diags {
		paths = append(paths, d.Path)
	}
	wantPaths := "concurrent log_level log_format runners[0].limit runners[0].autoscaler.update_interval " +
		"runners[0].autoscaler.policy[0].idle_time runners[0].autoscaler.policy[0].timezone"
	if strings.Join(paths, " ") != wantPaths {
		t.Errorf("paths %q\nwant  %q", strings.Join(paths, " "), wantPaths)
	}
	ds, ok := AsInvalid(err)
	if !ok || len(ds) != 7 {
		t.Fatalf("AsInvalid = %d, %v", len(ds), ok)
	}
	if msg := err.Error(); !strings.Contains(msg, "7 errors") || !strings.Contains(msg, "all.toml:11:7: error: runners[0].autoscaler.policy[0].idle_time") {
		t.Errorf("error text:\n%s", msg)
	}
}

func TestDiagnosticString(t *testing.T) {
	d := Diagnostic{Severity: Error, File: "f.toml", Line: 3, Column: 5, Path: "a.b", Message: "bad", Hint: "fix"}
	if got, want := d.String(), "f.toml:3:5: error: a.b: bad (hint: fix)"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
	d = Diagnostic{Severity: Warning, Message: "no runners"}
	if got, want := d.String(), "config.toml: warning: no runners"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"idle_count", "idle_time", "scale_factor", "periods", "timezone"}
	for in, want := range map[string]string{
		"IdleCount": "idle_count", "idle_tme": "idle_time", "period": "periods", "timezon": "timezone",
		"Timezone": "timezone", "xyz": "", "scale": "",
	} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, _, err := Load(t.TempDir() + "/nope.toml")
	if err == nil || !strings.Contains(err.Error(), "reading config file") {
		t.Fatalf("err = %v", err)
	}
}
