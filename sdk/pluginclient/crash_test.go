package pluginclient_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// TestCrashShowsThePanicLine crashes the test plugin with a panic no handler recovers
// (at start, in Init, in a call) and checks that the host's error quotes the panic line
// itself, not only the last lines of the stack trace that follows it.
func TestCrashShowsThePanicLine(t *testing.T) {
	if testPluginBinary == "" {
		t.Skip("the test plugin needs the go command to build it")
	}
	tests := []struct {
		name  string
		env   []string
		fault string
		// call is what runs against the launched plugin; nil means the launch itself fails.
		call func(ctx context.Context, p *pluginclient.Plugin) error
		want string
	}{
		{name: "before the handshake", env: []string{"TESTPLUGIN_CRASH_AT_START=1"},
			want: "panic: testplugin: crash at start requested"},
		{name: "in Init", fault: "crash-init", call: func(ctx context.Context, p *pluginclient.Plugin) error {
			_, err := p.Init(ctx, nil, provider.Settings{})
			return err
		}, want: "panic: testplugin: crash in Init requested"},
		{name: "in a call", call: func(ctx context.Context, p *pluginclient.Plugin) error {
			if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
				t.Fatal(err)
			}
			return p.Heartbeat(ctx, "crash")
		}, want: "panic: testplugin: crash requested"},
		{name: "in a call after the crash", call: func(ctx context.Context, p *pluginclient.Plugin) error {
			if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
				t.Fatal(err)
			}
			if err := p.Heartbeat(ctx, "crash"); !errors.Is(err, pluginclient.ErrPluginExited) {
				t.Fatalf("Heartbeat(crash) = %v; want ErrPluginExited", err)
			}
			return p.Update(ctx, func(string, provider.State) {})
		}, want: "panic: testplugin: crash requested"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			config := fmt.Sprintf(`{"dir": %q, "fault": %q}`, filepath.Join(dir, "instances"), tt.fault)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			p, err := pluginclient.Launch(ctx, testPluginBinary, []byte(config), pluginclient.Options{Env: tt.env})
			if tt.call != nil {
				if err != nil {
					t.Fatal(err)
				}
				defer p.Kill()
				err = tt.call(ctx, p)
				if !errors.Is(err, pluginclient.ErrPluginExited) {
					t.Fatalf("err = %v; want ErrPluginExited", err)
				}
			} else if err == nil {
				p.Kill()
				t.Fatal("Launch of a plugin that crashes at start succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("the error does not quote the panic line %q:\n%v", tt.want, err)
			}
		})
	}
}
