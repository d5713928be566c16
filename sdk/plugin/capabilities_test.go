package plugin

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// gen1 has the methods of the first fleeting generation only.
type gen1 struct{}

func (gen1) Init(context.Context, hclog.Logger, provider.Settings) (provider.ProviderInfo, error) {
	return provider.ProviderInfo{}, nil
}
func (gen1) Update(context.Context, func(string, provider.State)) error { return nil }
func (gen1) Increase(context.Context, int) (int, error)                 { return 0, nil }
func (gen1) Decrease(context.Context, []string) ([]string, error)       { return nil, nil }
func (gen1) ConnectInfo(context.Context, string) (provider.ConnectInfo, error) {
	return provider.ConnectInfo{}, nil
}
func (gen1) Shutdown(context.Context) error { return nil }

type gen2 struct{ gen1 }

func (gen2) Heartbeat(context.Context, string) error { return nil }

type gen3 struct{ gen2 }

func (gen3) Suspend(context.Context, []string) ([]string, error) { return nil, nil }
func (gen3) Resume(context.Context, []string) ([]string, error)  { return nil, nil }

// suspendOnly has Suspend without Resume: not a Suspender.
type suspendOnly struct{ gen2 }

func (suspendOnly) Suspend(context.Context, []string) ([]string, error) { return nil, nil }

func TestCapabilitiesFollowTheImplementation(t *testing.T) {
	hb, sr := provider.CapabilityHeartbeat, provider.CapabilitySuspendResume
	tests := []struct {
		name      string
		impl      provider.InstanceGroup
		announced []provider.Capability
		want      []provider.Capability
		warning   string
	}{
		{"first generation", gen1{}, nil, nil, ""},
		{"second generation", gen2{}, nil, []provider.Capability{hb}, ""},
		{"third generation", gen3{}, nil, []provider.Capability{hb, sr}, ""},
		{"announced and implemented, listed once", gen3{}, []provider.Capability{sr, "x"}, []provider.Capability{"x", hb, sr}, ""},
		{"announced but not implemented", gen1{}, []provider.Capability{sr, hb, "x"}, []provider.Capability{"x"},
			`announces "suspend_resume" but the plugin does not implement it`},
		{"Suspend without Resume", suspendOnly{}, nil, []provider.Capability{hb}, "only one of Suspend and Resume"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncbuf.Buffer
			got := capabilities(tt.impl, tt.announced, hclog.New(&hclog.LoggerOptions{Output: &logs}))
			if !slices.Equal(got, tt.want) {
				t.Errorf("capabilities = %v, want %v", got, tt.want)
			}
			if out := logs.String(); tt.warning == "" && out != "" || !strings.Contains(out, tt.warning) {
				t.Errorf("log %q, want a warning containing %q", out, tt.warning)
			}
		})
	}
}
