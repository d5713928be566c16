package plugin_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/conformance/conformancetest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/internal/wire"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

const testPlugin = "github.com/flotilla-ci/flotilla/sdk/conformance/testdata/testplugin"

func TestVersionAndCommandsWithoutHandshake(t *testing.T) {
	bin := conformancetest.Build(t, testPlugin)
	tests := []struct {
		args     []string
		wantCode int
		check    func(t *testing.T, stdout string)
	}{
		{[]string{"version", "--json"}, 0, func(t *testing.T, stdout string) {
			var v struct {
				Name      string `json:"name"`
				Version   string `json:"version"`
				GoVersion string `json:"go_version"`
				Protocols []int  `json:"protocol_versions"`
			}
			if err := json.Unmarshal([]byte(stdout), &v); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, stdout)
			}
			if v.Name != "testplugin" || v.Version != "0.0.1" || v.GoVersion == "" || len(v.Protocols) != 1 || v.Protocols[0] != wire.ProtocolVersion {
				t.Fatalf("version --json = %+v", v)
			}
		}},
		{[]string{"version"}, 0, func(t *testing.T, stdout string) {
			if !strings.Contains(stdout, "Version:    0.0.1") {
				t.Fatalf("version printed %q", stdout)
			}
		}},
		{[]string{"frobnicate"}, 2, nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			cmd.Env = os.Environ() // no magic cookie: not launched by a host
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			if tt.check != nil {
				tt.check(t, stdout.String())
			}
		})
	}
}

// cfg is a plugin configuration for DecodeConfig's tests.
type cfg struct {
	provider.InstanceGroup                   // an embedded interface is no configuration
	*Inner                                   // an embedded struct pointer promotes its fields when set
	Name                   string            `json:"name"`
	Count                  int               `json:"count"`
	Labels                 map[string]string `json:"labels"`
	Skipped                string            `json:"-"`
	unexported             string
}

// Inner is embedded in cfg.
type Inner struct {
	Region string `json:"region"`
}

func (c *cfg) Validate() error {
	var errs []error
	if c.Count < 0 {
		errs = append(errs, errors.New("plugin_config.count: must not be negative"))
	}
	if c.Name == "bad" {
		errs = append(errs, errors.New("plugin_config.name: must not be \"bad\""))
	}
	return errors.Join(errs...)
}

func TestDecodeConfig(t *testing.T) {
	tests := []struct {
		name   string
		json   string
		want   cfg
		errors []string // one per problem, in order
	}{
		{name: "empty", json: ``},
		{name: "null", json: `null`},
		{name: "fields and embedded pointer", json: `{"name":"a","count":2,"labels":{"k":"v"},"region":"eu"}`,
			want: cfg{Name: "a", Count: 2, Labels: map[string]string{"k": "v"}, Inner: &Inner{Region: "eu"}}},
		{name: "case-insensitive key", json: `{"NAME":"a"}`, want: cfg{Name: "a"}},
		{name: "every problem at once", json: `{"nmae":"a","count":"two","Skipped":"x","InstanceGroup":{},"unexported":"x"}`,
			errors: []string{
				`plugin_config.InstanceGroup: unknown key (known keys: region, name, count, labels)`,
				`plugin_config.Skipped: unknown key`,
				`plugin_config.count: expected int, got a JSON string`,
				`plugin_config.nmae: unknown key (did you mean "name"?)`,
				`plugin_config.unexported: unknown key`,
			}},
		{name: "validation problems all reported", json: `{"name":"bad","count":-1}`,
			errors: []string{"plugin_config.count: must not be negative", `plugin_config.name: must not be "bad"`}},
		{name: "not an object", json: `[1]`, errors: []string{"plugin_config: not a JSON object"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := cfg{Inner: &Inner{}}
			err := plugin.DecodeConfig([]byte(tt.json), &got)
			if len(tt.errors) == 0 {
				if err != nil {
					t.Fatalf("DecodeConfig: %v", err)
				}
				if tt.want.Inner == nil {
					tt.want.Inner = &Inner{}
				}
				if got.Name != tt.want.Name || got.Count != tt.want.Count || *got.Inner != *tt.want.Inner || len(got.Labels) != len(tt.want.Labels) {
					t.Fatalf("decoded %+v (inner %+v), want %+v", got, got.Inner, tt.want)
				}
				return
			}
			if !errors.Is(err, provider.ErrInvalidConfig) {
				t.Fatalf("err = %v; want ErrInvalidConfig", err)
			}
			probs := err.(interface{ Unwrap() []error }).Unwrap()
			if len(probs) != len(tt.errors) {
				t.Fatalf("%d problems, want %d:\n%v", len(probs), len(tt.errors), err)
			}
			for i, p := range probs {
				if !strings.HasPrefix(p.Error(), tt.errors[i]) || !errors.Is(p, provider.ErrInvalidConfig) {
					t.Errorf("problem %d = %q (ErrInvalidConfig: %v); want it to start with %q", i, p, errors.Is(p, provider.ErrInvalidConfig), tt.errors[i])
				}
			}
		})
	}
}

// TestPluginExitsWhenItsHostDies kills the plugin's host with SIGKILL, as a crash or an
// OOM kill would: the orphaned plugin must run its Shutdown and exit by itself rather
// than hold its resources forever.
func TestPluginExitsWhenItsHostDies(t *testing.T) {
	bin := conformancetest.Build(t, testPlugin)
	marker := filepath.Join(t.TempDir(), "marker")
	// The "host" is a shell that starts the plugin, prints its PID, and waits.
	host := exec.Command("sh", "-c", `"$0" & echo "pid $!"; read wait`, bin)
	host.Env = pluginEnv(marker)
	stdin, err := host.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	out, err := host.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	pid, serving := 0, false
	r := bufio.NewReader(out)
	for pid == 0 || !serving {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading the host's output: %v", err)
		}
		if strings.HasPrefix(line, "pid ") {
			fmt.Sscanf(line, "pid %d", &pid)
		}
		serving = serving || strings.Contains(line, "|grpc")
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	if err := host.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	host.Wait()
	eventually.True(t, fmt.Sprintf("plugin %d to exit after its host was killed", pid), 15*time.Second, func() bool {
		return syscall.Kill(pid, 0) != nil
	})
	if data, _ := os.ReadFile(marker); strings.Count(string(data), "shutdown") != 1 {
		t.Fatalf("marker file %q: want Shutdown called exactly once before exiting", data)
	}
}

// TestPluginWhoseHostIsGoneAtStartExits starts the plugin with plugin.HostPIDEnv naming
// various processes. A host killed while launching its plugin is gone before the plugin
// starts, and the plugin's parent is then another process (init, a subreaper): the
// plugin must run its Shutdown and exit at once, not serve forever. A host that is the
// parent, or an ancestor (the plugin started through a wrapper that does not exec),
// is served.
func TestPluginWhoseHostIsGoneAtStartExits(t *testing.T) {
	bin := conformancetest.Build(t, testPlugin)
	gone := func(t *testing.T) int {
		dead := exec.Command("true")
		if err := dead.Run(); err != nil {
			t.Fatal(err)
		}
		return dead.Process.Pid
	}
	// A host that was killed stays a zombie until its own parent reaps it; it still
	// has its PID, but it is nobody's parent any more.
	zombie := func(t *testing.T) int {
		dead := exec.Command("true")
		if err := dead.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dead.Wait() })
		pid := dead.Process.Pid
		eventually.True(t, "the process to be a zombie", 30*time.Second, func() bool {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				t.Skipf("no /proc: %v", err)
			}
			i := bytes.LastIndexByte(stat, ')')
			return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
		})
		return pid
	}
	self := func(*testing.T) int { return os.Getpid() }
	tests := []struct {
		name  string
		host  func(t *testing.T) int
		shell bool // started by sh, which waits for it: the host is its grandparent
		serve bool
	}{
		{"the host is a process that is gone", gone, false, false},
		{"the host is dead but not reaped yet", zombie, false, false},
		{"the host is the parent", self, false, true},
		{"the host is the parent of a wrapper", self, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			marker := filepath.Join(t.TempDir(), "marker")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin)
			if tt.shell {
				cmd = exec.CommandContext(ctx, "sh", "-c", `"$0"; exit $?`, bin)
			}
			// SIGTERM, not the default SIGKILL: a plugin killed outright cannot remove
			// its unix socket, and would leave it in the temporary directory.
			cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
			cmd.Env = pluginEnv(marker, fmt.Sprintf("%s=%d", plugin.HostPIDEnv, tt.host(t)))
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, _ := bufio.NewReader(stdout).ReadString('\n') // the handshake, or EOF at exit
			if tt.serve {
				if !strings.Contains(line, "|grpc") {
					t.Fatalf("handshake line %q; want the plugin serving", line)
				}
				// The plugin serves until its host disconnects; ending the test's
				// context stops the plugin (or kills its wrapper, after which the
				// plugin exits with its parent).
				cancel()
				cmd.Wait()
				return
			}
			err = cmd.Wait()
			if ctx.Err() != nil {
				t.Fatalf("the plugin of a host that is gone did not exit (%v); it printed %q", err, line)
			}
			if err != nil || line != "" {
				t.Fatalf("the plugin of a host that is gone ended with %v after printing %q; want exit status 0 and no handshake", err, line)
			}
			if data, _ := os.ReadFile(marker); strings.Count(string(data), "shutdown") != 1 {
				t.Fatalf("marker file %q: want Shutdown called exactly once", data)
			}
		})
	}
}

// pluginEnv is the environment of the test plugin started as its host would: the
// go-plugin handshake, the marker file its Shutdown writes to, and extra.
func pluginEnv(marker string, extra ...string) []string {
	return append(append(os.Environ(), wire.Handshake.MagicCookieKey+"="+wire.Handshake.MagicCookieValue,
		fmt.Sprintf("PLUGIN_PROTOCOL_VERSIONS=%d", wire.ProtocolVersion), "TESTPLUGIN_MARKER="+marker), extra...)
}
