package instancegroup

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/doctor"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func TestProblems(t *testing.T) {
	cases := []struct {
		name string
		fill func(p *Problems)
		want []string // messages, in order; none means Err is nil
	}{
		{"nothing wrong", func(p *Problems) {
			p.Required("name", "ci", "the group's name")
			p.URL("endpoint", "https://x.example:443", "https://e.example")
			p.URL("endpoint", "", "https://e.example")
			p.PositiveDuration("retry_max_backoff", "2s")
			p.PositiveDuration("retry_max_backoff", "")
			p.NotNegative("retry_max_attempts", 0)
		}, nil},
		{"every kind, in order", func(p *Problems) {
			p.Required("name", "", "the group's name")
			p.URL("endpoint", "nohost", "https://e.example")
			p.PositiveDuration("retry_max_backoff", "0s")
			p.PositiveDuration("retry_max_delay", "soon")
			p.NotNegative("retry_max_attempts", -1)
			p.Add("zone", "%q is a region", "europe-west1")
		}, []string{
			"plugin_config.name: required: the group's name",
			`plugin_config.endpoint: "nohost" is not a URL such as https://e.example`,
			`plugin_config.retry_max_backoff: "0s" is not a positive duration such as "20s"`,
			`plugin_config.retry_max_delay: "soon" is not a positive duration such as "20s"`,
			"plugin_config.retry_max_attempts: -1 is negative",
			`plugin_config.zone: "europe-west1" is a region`,
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var p Problems
			c.fill(&p)
			err := p.Err()
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("Err() = %v, want nil", err)
				}
				return
			}
			if got := strings.Split(err.Error(), "\n"); strings.Join(got, "|") != strings.Join(c.want, "|") {
				t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.want, "\n"))
			}
		})
	}
}

// cloud is a configurable stand-in for a plugin's API calls.
type cloud struct {
	Name       string `json:"name"`
	connectErr error
	getErr     error
	findings   []doctor.Finding
	connected  bool
	closed     bool
}

func (c *cloud) Validate() error {
	var p Problems
	p.Required("name", c.Name, "the group's name")
	return p.Err()
}

func (c *cloud) spec(keyComment string) Spec[string] {
	return Spec[string]{
		Group:         "test group " + c.Name,
		Connect:       func(context.Context) error { c.connected = true; return c.connectErr },
		Close:         func() error { c.closed = true; return nil },
		Describe:      func(context.Context) (string, error) { return "group " + c.Name, c.getErr },
		DescribeCheck: "get-group",
		DescribeFix:   "check plugin_config.name",
		Check:         func(context.Context, string) []doctor.Finding { return c.findings },
		KeyComment:    keyComment,
		Config:        c,
		Flags:         func(fs *flag.FlagSet) { fs.StringVar(&c.Name, "name", "", "group name") },
	}
}

func TestInit(t *testing.T) {
	errFail := errors.New("boom")
	cases := []struct {
		name       string
		cloud      cloud
		static     bool
		keyComment string
		wantErr    string // substring; empty means success
		wantKey    bool
	}{
		{name: "key made", keyComment: "k", wantKey: true},
		{name: "static credentials: no key", static: true, keyComment: "k"},
		{name: "plugin pushes no keys", keyComment: ""},
		{name: "warnings only", cloud: cloud{findings: []doctor.Finding{{Check: "w", Severity: doctor.Warning}}}, keyComment: "k", wantKey: true},
		{name: "connect fails", cloud: cloud{connectErr: errFail}, keyComment: "k", wantErr: "boom"},
		{name: "describe fails", cloud: cloud{getErr: errFail}, keyComment: "k", wantErr: "boom"},
		{name: "doctor error fails Init, prefixed by the group", keyComment: "k",
			cloud:   cloud{findings: []doctor.Finding{{Check: "autoscaling", Severity: doctor.Error, Message: "attached", Fix: "detach"}}},
			wantErr: "test group ci: doctor autoscaling: attached (fix: detach)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := c.cloud
			cl.Name = "ci"
			var b Base
			settings := provider.Settings{ConnectorConfig: provider.ConnectorConfig{UseStaticCredentials: c.static}}
			group, err := Init(context.Background(), &b, hclog.NewNullLogger(), settings, cl.spec(c.keyComment))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Init error = %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Init: %v", err)
			}
			if group != "group ci" || b.Log == nil || b.Settings.UseStaticCredentials != c.static {
				t.Fatalf("Init returned %q, base %+v", group, b)
			}
			if gotKey := len(b.Key.PEM) > 0 && strings.HasPrefix(b.Key.Public, "ssh-ed25519 "); gotKey != c.wantKey {
				t.Fatalf("key made = %v, want %v (%+v)", gotKey, c.wantKey, b.Key)
			}
		})
	}
	t.Run("doctor errors are ErrInvalidConfig", func(t *testing.T) {
		cl := cloud{Name: "ci", findings: []doctor.Finding{{Check: "x", Severity: doctor.Error}}}
		_, err := Init(context.Background(), &Base{}, hclog.NewNullLogger(), provider.Settings{}, cl.spec(""))
		if !errors.Is(err, provider.ErrInvalidConfig) {
			t.Fatalf("Init error %v is not ErrInvalidConfig", err)
		}
	})
}

func TestDoctorCommand(t *testing.T) {
	cases := []struct {
		name       string
		args       []string
		cloud      cloud
		staticFlag bool
		wantErr    string // substring; empty means success
		wantOut    string // substring of the output
		wantStatic bool
	}{
		{name: "flags, no static flag: run as static", args: []string{"--name", "ci"},
			cloud: cloud{findings: []doctor.Finding{{Check: "scaling", Severity: doctor.OK, Message: "fine"}}}, wantOut: "OK      scaling fine", wantStatic: true},
		{name: "static flag left false", staticFlag: true, args: []string{"--name", "ci"}, wantStatic: false},
		{name: "static flag set", staticFlag: true, args: []string{"--name", "ci", "--static-credentials"}, wantStatic: true},
		{name: "flags are validated", args: []string{}, wantErr: "plugin_config.name: required: the group's name"},
		{name: "--config is decoded", args: []string{"--config", `{"name":"ci","nmae":1}`}, wantErr: "--config: plugin_config.nmae: unknown key"},
		{name: "describe failure is a finding", args: []string{"--name", "ci"}, cloud: cloud{getErr: errors.New("no such group")},
			wantErr: "no such group", wantOut: "ERROR   get-group no such group\n        fix: check plugin_config.name", wantStatic: true},
		{name: "error finding fails the command", args: []string{"--name", "ci", "--json"},
			cloud:   cloud{findings: []doctor.Finding{{Check: "scaling", Severity: doctor.Error, Message: "policies"}}},
			wantErr: "1 check(s) failed: scaling", wantOut: `"check": "scaling"`, wantStatic: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := c.cloud
			var b Base
			spec := cl.spec("")
			if c.staticFlag {
				spec.StaticCredentialsUsage = "skip key checks"
			}
			cmd := DoctorCommand(&b, "check the group", spec)
			var out bytes.Buffer
			err := cmd.Run(context.Background(), c.args, &out)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("doctor error = %v, want one containing %q", err, c.wantErr)
				}
			} else if err != nil {
				t.Fatalf("doctor: %v\n%s", err, out.String())
			}
			if !strings.Contains(out.String(), c.wantOut) {
				t.Fatalf("output:\n%s\nwant it to contain %q", out.String(), c.wantOut)
			}
			if c.wantErr == "" || cl.connected {
				if b.Settings.UseStaticCredentials != c.wantStatic {
					t.Fatalf("static credentials = %v, want %v", b.Settings.UseStaticCredentials, c.wantStatic)
				}
				if !cl.closed {
					t.Fatal("clients not closed after the doctor")
				}
			}
		})
	}
}

func TestInfo(t *testing.T) {
	v := plugin.VersionInfo{Name: "fleeting-plugin-x", Version: "1.2.3"}
	got := Info(v, "x/ci", 7)
	if got.ID != "x/ci" || got.MaxSize != 7 || got.Version != "1.2.3" || got.BuildInfo != v.BuildInfo() {
		t.Fatalf("Info = %+v", got)
	}
}
