package pluginclient_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
)

func TestReadVersion(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, binary string
		wantErr      string // empty: success
		maxErr       int    // the error message stays this short
	}{
		{"a plugin", testPluginBinary, "", 0},
		{"100 MB on stdout", script("flood", `head -c 104857600 /dev/zero | tr '\0' x`),
			"printed more than 65536 bytes for version --json", 1000},
		{"endless stdout", script("endless", `yes`), "printed more than 65536 bytes for version --json", 1000},
		{"not JSON", script("text", `echo "flood 1.0"`), `printed no JSON object for version --json`, 1000},
		{"fails, with stderr", script("fails", `echo "unknown command version" >&2; exit 2`),
			"exit status 2; plugin stderr:\nunknown command version", 1000},
		{"endless stderr", script("noisy", `yes noise >&2 & sleep 0.2; kill $!; exit 3`), "exit status 3", 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.binary == "" {
				t.Skip("the test plugin needs the go command to build it")
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			v, err := pluginclient.ReadVersion(ctx, tt.binary, pluginclient.Options{})
			if tt.wantErr == "" {
				if err != nil || v.Name != "testplugin" || v.Version != "0.0.1" || len(v.Protocols) == 0 {
					t.Fatalf("ReadVersion = %+v, %v", v, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ReadVersion err = %v; want it to say %q", err, tt.wantErr)
			}
			if len(err.Error()) > tt.maxErr {
				t.Errorf("the error is %d bytes long:\n%.500s", len(err.Error()), err)
			}
		})
	}
}
