package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/conformance"
	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
)

func TestPluginCheck(t *testing.T) {
	minimal := conformancetest.Build(t, "github.com/flotilla-ci/flotilla/examples/minimal-plugin")
	broken := conformancetest.Build(t, "github.com/flotilla-ci/flotilla/sdk/conformance/testdata/testplugin")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dir := t.TempDir()
	writeConfig := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := writeConfig("good.json", fmt.Sprintf(`{"dir": %q, "address": %q}`, filepath.Join(dir, "good"), ln.Addr()))
	bad := writeConfig("broken.json", fmt.Sprintf(`{"dir": %q, "address": %q, "fault": "decrease-all"}`, filepath.Join(dir, "broken"), ln.Addr()))
	connector := writeConfig("connector.json", `{"username": "ci", "timeout": "30s"}`)

	tests := []struct {
		name     string
		binary   string
		opts     pluginCheckOptions
		wantCode int
		want     []string // lines (regexps) the report must have
	}{
		{"minimal example, L0 only", minimal, pluginCheckOptions{}, 0,
			[]string{`PASS L0.handshake`, `PASS L0.version`, `PASS L0.config.all-problems`, `SKIP L0.info`,
				`SKIP L1.decrease.subset`, `L1 not enabled`, `0 failed`}},
		{"minimal example with --config", minimal, pluginCheckOptions{config: good, connector: connector}, 0,
			[]string{`PASS L0.info`, `PASS L1.increase`, `PASS L1.connect`, `PASS L1.decrease.subset`, `PASS L1.relaunch`,
				`PASS L1.cleanup`, `SKIP L1.max-size`, `0 failed`}},
		{"plugin whose Decrease deletes everything", broken, pluginCheckOptions{config: bad}, 1,
			[]string{`FAIL L1.decrease.subset`, `also touched`, `PASS L1.cleanup`, `1 failed`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.timeout = 20 * time.Second
			var out bytes.Buffer
			err := runPluginCheck(t.Context(), &out, tt.binary, tt.opts)
			code := 0
			var ee exitError
			switch {
			case errors.As(err, &ee):
				code = ee.code
			case err != nil:
				t.Fatalf("runPluginCheck: %v\n%s", err, out.String())
			}
			if code != tt.wantCode {
				t.Errorf("exit code %d, want %d", code, tt.wantCode)
			}
			for _, w := range tt.want {
				if !regexp.MustCompile(`(?m)` + w).MatchString(out.String()) {
					t.Errorf("report lacks %q", w)
				}
			}
			if t.Failed() {
				t.Log(out.String())
			}
		})
	}
}

func TestPluginCheckJSONAndErrors(t *testing.T) {
	minimal := conformancetest.Build(t, "github.com/flotilla-ci/flotilla/examples/minimal-plugin")
	dir := t.TempDir()
	var out bytes.Buffer
	if err := runPluginCheck(t.Context(), &out, minimal, pluginCheckOptions{json: true, timeout: 20 * time.Second}); err != nil {
		t.Fatalf("runPluginCheck --json: %v", err)
	}
	var rep conformance.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || len(rep.Results) != len(conformance.Clauses) {
		t.Fatalf("--json printed %d results (%v):\n%s", len(rep.Results), err, out.String())
	}

	badJSON := filepath.Join(dir, "bad.json")
	os.WriteFile(badJSON, []byte("{\n  \"dir\": \"x\",\n  oops\n}"), 0o600)
	badConnector := filepath.Join(dir, "connector.json")
	os.WriteFile(badConnector, []byte(`{"username": "ci", "timeout": "thirty"}`), 0o600)
	unknownKey := filepath.Join(dir, "unknown.json")
	os.WriteFile(unknownKey, []byte(`{"user": "ci"}`), 0o600)
	tests := []struct {
		name  string
		value string
		opts  pluginCheckOptions
		want  string
	}{
		{"plugin not found", "./no-such-plugin", pluginCheckOptions{}, "no-such-plugin"},
		{"config not JSON", minimal, pluginCheckOptions{config: badJSON}, badJSON + ":3:"},
		{"connector duration", minimal, pluginCheckOptions{connector: badConnector}, `timeout: "thirty" is not a duration`},
		{"connector unknown key", minimal, pluginCheckOptions{connector: unknownKey}, `unknown field "user"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := runPluginCheck(t.Context(), &bytes.Buffer{}, tt.value, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestPluginCheckBoundsVersionOutput checks a "plugin" that answers version --json
// with 100 MB: the check reads a bounded amount, says why it stopped, and the report
// does not carry what it printed.
func TestPluginCheckBoundsVersionOutput(t *testing.T) {
	flood := filepath.Join(t.TempDir(), "fleeting-plugin-flood")
	script := "#!/bin/sh\n" +
		"if [ \"$1\" = version ]; then head -c 104857600 /dev/zero | tr '\\0' x; exit 0; fi\n" +
		"echo 'not a plugin' >&2; exit 1\n"
	if err := os.WriteFile(flood, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := runPluginCheck(t.Context(), &out, flood, pluginCheckOptions{timeout: 20 * time.Second})
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("runPluginCheck = %v; want exit status 1", err)
	}
	want := regexp.MustCompile(`(?m)^FAIL L0\.version(.*\n)+.*printed more than 65536 bytes for version --json`)
	if !want.MatchString(out.String()) {
		t.Errorf("the report does not say the output was cut:\n%.2000s", out.String())
	}
	if out.Len() > 64<<10 {
		t.Errorf("the report is %d bytes: it carries the plugin's output", out.Len())
	}
}
