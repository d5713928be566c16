package localdemo

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/plugins/local"
)

// TestMain makes the test binary serve the local plugin on "plugin-local", as the
// runner does, so that Run's default launch (this executable re-executed) works.
func TestMain(m *testing.M) {
	local.ServeIfAsked(os.Args)
	os.Exit(m.Run())
}

func TestRun(t *testing.T) {
	tests := []struct {
		name      string
		opts      Options
		wantOut   string
		wantCode  int
		wantError string
	}{
		{name: "two instances", opts: Options{Instances: 2, Command: `echo "hi from $HOME"`}, wantOut: "hi from "},
		{name: "failing command", opts: Options{Instances: 1, Command: "echo oops >&2; exit 4"}, wantOut: "oops", wantCode: 4},
		{name: "no instances", opts: Options{Instances: 0, Command: "true"}, wantError: "need at least 1"},
		{name: "no command", opts: Options{Instances: 1}, wantError: "command: empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			tt.opts.Out = &out
			tt.opts.RootDir = t.TempDir()
			res, err := Run(context.Background(), tt.opts)
			if tt.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantError) {
					t.Fatalf("error = %v, want %q", err, tt.wantError)
				}
				return
			}
			if err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			if len(res.Outputs) != tt.opts.Instances {
				t.Fatalf("%d outputs, want %d", len(res.Outputs), tt.opts.Instances)
			}
			for id, o := range res.Outputs {
				if !strings.Contains(o, tt.wantOut) || res.ExitCodes[id] != tt.wantCode {
					t.Errorf("%s: output %q exit %d; want %q exit %d", id, o, res.ExitCodes[id], tt.wantOut, tt.wantCode)
				}
			}
			entries, _ := os.ReadDir(tt.opts.RootDir)
			for _, e := range entries {
				if e.Name() != local.LockFileName {
					t.Errorf("%s left in root_dir after the demo", e.Name())
				}
			}
			if !strings.Contains(out.String(), "no instance process left") {
				t.Errorf("progress lacks the leftover check:\n%s", out.String())
			}
		})
	}
}
