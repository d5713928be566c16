package pluginclient_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

// supervised is a supervised test plugin, initialised, with the marker file its
// processes write to and the number of launches so far.
type supervised struct {
	*pluginclient.Supervised
	marker   string
	dir      string
	launches *atomic.Int32
	log      *syncbuf.Buffer
}

// superviseTestPlugin supervises the test plugin; relaunch, if set, changes how
// launches after the first one are made (env, configuration).
func superviseTestPlugin(t *testing.T, opts pluginclient.SuperviseOptions, relaunch func(config string, o *pluginclient.Options) string) supervised {
	t.Helper()
	if testPluginBinary == "" {
		t.Skip("the test plugin needs the go command to build it")
	}
	dir := t.TempDir()
	s := supervised{marker: filepath.Join(dir, "marker"), dir: filepath.Join(dir, "instances"), launches: &atomic.Int32{}, log: &syncbuf.Buffer{}}
	opts.Logger = slog.New(slog.NewTextHandler(s.log, nil))
	launch := func(ctx context.Context) (*pluginclient.Plugin, error) {
		config := fmt.Sprintf(`{"dir": %q}`, s.dir)
		o := pluginclient.Options{Env: []string{"TESTPLUGIN_MARKER=" + s.marker}}
		if s.launches.Add(1) > 1 && relaunch != nil {
			config = relaunch(config, &o)
		}
		return pluginclient.Launch(ctx, testPluginBinary, []byte(config), o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sp, err := pluginclient.Supervise(ctx, launch, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sp.Kill)
	s.Supervised = sp
	if _, err := sp.Init(ctx, nil, provider.Settings{}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return s
}

func (s supervised) list(ctx context.Context) ([]string, error) {
	var ids []string
	err := s.Update(ctx, func(id string, _ provider.State) { ids = append(ids, id) })
	slices.Sort(ids)
	return ids, err
}

// kill9 kills the current plugin process with SIGKILL.
func (s supervised) kill9(t *testing.T) int {
	t.Helper()
	pid := s.Current().Pid()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestSupervisedRelaunchesAKilledPlugin kills the plugin with SIGKILL and keeps calling
// Update as fast as it can: every call during the outage fails at once saying the
// plugin is being relaunched, the plugin is relaunched exactly once, with the same
// settings, and Update then lists the same instances.
func TestSupervisedRelaunchesAKilledPlugin(t *testing.T) {
	s := superviseTestPlugin(t, pluginclient.SuperviseOptions{MinBackoff: time.Second}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if n, err := s.Increase(ctx, 3); n != 3 || err != nil {
		t.Fatalf("Increase(3) = %d, %v", n, err)
	}
	before, err := s.list(ctx)
	if err != nil || len(before) != 3 {
		t.Fatalf("Update = %v, %v", before, err)
	}
	old := s.kill9(t)

	failures := 0
	var after []string
	for {
		after, err = s.list(ctx)
		if err == nil {
			break
		}
		failures++
		time.Sleep(time.Millisecond) // calls as a busy host makes them; no synchronisation
		if ctx.Err() != nil {
			t.Fatalf("the plugin was not relaunched: %v", err)
		}
		if failures == 1 {
			t.Logf("first failure: %v", err)
		}
		if !errors.Is(err, pluginclient.ErrPluginExited) || !strings.Contains(err.Error(), "relaunching") {
			t.Fatalf("Update during the outage = %v; want ErrPluginExited saying it is being relaunched", err)
		}
	}
	t.Logf("%d calls failed during the outage", failures)
	if failures == 0 {
		t.Fatal("no call failed: the kill was not noticed")
	}
	if !slices.Equal(before, after) {
		t.Fatalf("after the relaunch Update lists %v; want the same instances %v", after, before)
	}
	if n := s.launches.Load(); n != 2 {
		t.Fatalf("%d launches for one crash and %d failed calls; want 2 (the first and one relaunch)", n, failures)
	}
	if pid := s.Current().Pid(); pid == old || pid == 0 {
		t.Fatalf("the plugin's pid is %d, was %d: not a new process", pid, old)
	}
	// The relaunched process got Init again (the marker has one line per Init).
	if data, _ := os.ReadFile(s.marker); strings.Count(string(data), "init pid=") != 2 {
		t.Fatalf("marker file %q: want 2 Inits", data)
	}
	log := s.log.String()
	for _, want := range []string{`plugin testplugin exited (signal: killed); relaunching in `, `(attempt 1)`, `plugin testplugin relaunched (attempt 1)`} {
		if !strings.Contains(log, want) {
			t.Errorf("the log does not say %q:\n%s", want, log)
		}
	}
}

// TestSupervisedReportsAFailingRelaunch makes the relaunched plugin fail: a crash before
// the handshake is retried with growing delays, an Init that refuses the configuration
// is not retried before MaxBackoff; both are reported with their cause.
func TestSupervisedReportsAFailingRelaunch(t *testing.T) {
	tests := []struct {
		name     string
		relaunch func(config string, o *pluginclient.Options) string
		opts     pluginclient.SuperviseOptions
		want     []string // in the error of a call during the outage
	}{
		{"the plugin now crashes at start", func(config string, o *pluginclient.Options) string {
			o.Env = append(o.Env, "TESTPLUGIN_CRASH_AT_START=1")
			return config
		}, pluginclient.SuperviseOptions{MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Minute},
			[]string{"update: plugin testplugin exited (signal: killed)", "relaunch attempt 3 failed: launch plugin",
				"panic: testplugin: crash at start requested", "(attempt 4)"}},
		{"Init now refuses the configuration", func(string, *pluginclient.Options) string {
			return `{"dir": ""}`
		}, pluginclient.SuperviseOptions{MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Minute},
			[]string{"update: plugin testplugin exited (signal: killed)", "relaunch attempt 1 failed: ",
				"plugin_config.dir: required", "relaunching in 1m0s (attempt 2)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := superviseTestPlugin(t, tt.opts, tt.relaunch)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			s.kill9(t)
			// Wait for the failed attempt the test is about; a timeout falls through to
			// the checks below, which show the last error.
			failed := regexp.MustCompile(regexp.QuoteMeta(tt.want[1]))
			var err error
			eventually.Poll(time.Minute, func() bool { _, err = s.list(ctx); return failed.MatchString(fmt.Sprint(err)) })
			if !errors.Is(err, pluginclient.ErrPluginExited) {
				t.Fatalf("Update = %v; want ErrPluginExited", err)
			}
			t.Logf("during the outage: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q:\n%v", w, err)
				}
			}
			// The log gives each failed attempt with the delay before the next: they grow.
			var delays []time.Duration
			for _, m := range regexp.MustCompile(`relaunch attempt \d+ failed.*?; next attempt in (\S+)"`).FindAllStringSubmatch(s.log.String(), -1) {
				d, perr := time.ParseDuration(m[1])
				if perr != nil {
					t.Fatal(perr)
				}
				delays = append(delays, d)
			}
			if len(delays) == 0 {
				t.Fatalf("the log has no failed relaunch:\n%s", s.log.String())
			}
			for i := 1; i < len(delays); i++ {
				if delays[i] <= delays[i-1] {
					t.Errorf("relaunch delays %v do not grow", delays)
				}
			}
			launches := s.launches.Load()
			s.Kill()
			if n := s.launches.Load(); n != launches {
				t.Errorf("%d launches after Kill", n-launches)
			}
		})
	}
}
