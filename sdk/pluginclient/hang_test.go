package pluginclient_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// hangTimeout is the tests' SuperviseOptions.HangTimeout: short, yet far above what a
// health check of a running plugin takes on a loaded machine.
const hangTimeout = 3 * time.Second

// stop stops process pid with SIGSTOP and makes sure the test leaves it killed. It
// returns once every thread of the process has stopped: kill(2) returns before, and a
// thread still running could answer a call made meanwhile.
func stop(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	eventually.True(t, fmt.Sprintf("every thread of process %d to stop after SIGSTOP", pid), 30*time.Second, func() bool {
		return allStopped(t, pid)
	})
}

// allStopped reports whether every thread of process pid is stopped, per /proc.
func allStopped(t *testing.T, pid int) bool {
	t.Helper()
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		t.Skipf("cannot see the plugin's threads in /proc: %v", err)
	}
	for _, path := range stats {
		stat, err := os.ReadFile(path)
		if err != nil {
			return false // a thread came or went: look again
		}
		if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] != 'T' {
			return false
		}
	}
	return true
}

// saysHung matches the log line of the supervisor killing hung plugin pid, then what
// it does next: how long it did not answer (the time since the first health check it
// left unanswered) is at least hangTimeout.
func saysHung(pid int, next string) *regexp.Regexp {
	return regexp.MustCompile(fmt.Sprintf(`plugin testplugin did not answer for %s[0-9.]*s \(pid %d, state: stopped\); kill(ed|ing) it; %s`,
		strconv.Itoa(int(hangTimeout.Seconds())), pid, next))
}

// waitGone waits for process pid to be gone (killed and reaped).
func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	eventually.True(t, fmt.Sprintf("%s (pid %d) to be gone", what, pid), 30*time.Second, func() bool {
		return syscall.Kill(pid, 0) != nil
	})
}

// TestKillEndsAStoppedPlugin stops the plugin process with SIGSTOP, as a hung plugin
// is: Kill must still end it (go-plugin's graceful stop alone waits for an answer that
// never comes) and return, for a plain and for a supervised plugin.
func TestKillEndsAStoppedPlugin(t *testing.T) {
	tests := []struct {
		name  string
		start func(t *testing.T) (pid int, kill func())
	}{
		{"Plugin.Kill", func(t *testing.T) (int, func()) {
			p := launchTestPlugin(t, pluginclient.Options{})
			return p.Pid(), p.Kill
		}},
		{"Supervised.Kill", func(t *testing.T) (int, func()) {
			// The default HangTimeout: Kill, not the hang detection, must end it.
			s := superviseTestPlugin(t, pluginclient.SuperviseOptions{}, nil)
			return s.Current().Pid(), s.Kill
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid, kill := tt.start(t)
			stop(t, pid)
			done := make(chan struct{})
			go func() {
				kill()
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatalf("%s of a stopped plugin has not returned after a minute", tt.name)
			}
			waitGone(t, pid, "the stopped plugin")
		})
	}
}

// TestSupervisedKillsAndRelaunchesAHungPlugin stops the plugin with SIGSTOP and never
// continues it: the supervisor must notice that it no longer answers, kill it (ending
// the call that waits on it), say so, and relaunch it, after which the group answers
// with the same instances.
func TestSupervisedKillsAndRelaunchesAHungPlugin(t *testing.T) {
	s := superviseTestPlugin(t, pluginclient.SuperviseOptions{HangTimeout: hangTimeout}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if n, err := s.Increase(ctx, 2); n != 2 || err != nil {
		t.Fatalf("Increase(2) = %d, %v", n, err)
	}
	before, err := s.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := s.Current().Pid()
	inFlight := make(chan error, 1)
	go func() { inFlight <- s.Heartbeat(ctx, "block") }() // waits until cancelled or the process dies
	stop(t, old)

	err = <-inFlight
	if !errors.Is(err, pluginclient.ErrPluginExited) || ctx.Err() != nil {
		t.Fatalf("the call in flight on the hung plugin ended with %v (context: %v); want ErrPluginExited", err, ctx.Err())
	}
	for _, want := range []string{"exited (killed: it did not answer for", fmt.Sprintf("(pid %d, state: stopped)", old)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the call's error does not say %q: %v", want, err)
		}
	}
	waitGone(t, old, "the hung plugin")

	var after []string
	if !eventually.Poll(time.Minute, func() bool { after, err = s.list(ctx); return err == nil }) {
		t.Fatalf("the plugin was not relaunched: %v\nlog:\n%s", err, s.log.String())
	}
	if !slices.Equal(before, after) {
		t.Errorf("after the relaunch Update lists %v; want %v", after, before)
	}
	if pid := s.Current().Pid(); pid == old {
		t.Errorf("the plugin's pid is still %d", pid)
	}
	log := s.log.String()
	for _, want := range []*regexp.Regexp{
		saysHung(old, "relaunching in [0-9.]+m?s \\(attempt 1\\)"),
		regexp.MustCompile(`plugin testplugin relaunched \(attempt 1\)`),
	} {
		if !want.MatchString(log) {
			t.Errorf("the log does not say %s:\n%s", want, log)
		}
	}
}

// TestDrainedCallsWaitForTheRelaunch: once the host drains (it deletes its instances
// before exiting), an Update made while the plugin is down, or cut short by its death,
// waits for the relaunch and lists the instances instead of failing, which would end
// the deletion and leave the instances.
func TestDrainedCallsWaitForTheRelaunch(t *testing.T) {
	tests := []struct {
		name  string
		fault func(t *testing.T, pid int)
	}{
		{"killed with SIGKILL before the call", func(t *testing.T, pid int) {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}},
		{"stopped for good during the call", func(t *testing.T, pid int) { stop(t, pid) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := superviseTestPlugin(t, pluginclient.SuperviseOptions{HangTimeout: hangTimeout, MinBackoff: 200 * time.Millisecond}, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if n, err := s.Increase(ctx, 2); n != 2 || err != nil {
				t.Fatalf("Increase(2) = %d, %v", n, err)
			}
			before, err := s.list(ctx)
			if err != nil {
				t.Fatal(err)
			}
			old := s.Current().Pid()
			s.Drain()
			tt.fault(t, old)
			after, err := s.list(ctx)
			if err != nil {
				t.Fatalf("Update while draining = %v; want it to wait for the relaunch\nlog:\n%s", err, s.log.String())
			}
			if !slices.Equal(before, after) {
				t.Errorf("Update lists %v; want %v", after, before)
			}
			if pid := s.Current().Pid(); pid == old {
				t.Errorf("Update answered from the old process %d\nlog:\n%s", pid, s.log.String())
			}
			if err := s.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown of the relaunched plugin: %v", err)
			}
		})
	}
}

// TestHungPluginAtShutdownIsKilled stops the plugin for good just before the host's
// final Shutdown call: the call must end (the plugin is killed), and nothing is
// relaunched.
func TestHungPluginAtShutdownIsKilled(t *testing.T) {
	s := superviseTestPlugin(t, pluginclient.SuperviseOptions{HangTimeout: hangTimeout}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	old := s.Current().Pid()
	launches := s.launches.Load()
	stop(t, old)
	err := s.Shutdown(ctx)
	if !errors.Is(err, pluginclient.ErrPluginExited) || ctx.Err() != nil {
		t.Fatalf("Shutdown of a hung plugin = %v (context: %v); want ErrPluginExited once it is killed", err, ctx.Err())
	}
	waitGone(t, old, "the hung plugin")
	if want := saysHung(old, "not relaunched: the plugin is being stopped"); !want.MatchString(s.log.String()) {
		t.Errorf("the log does not say %s:\n%s", want, s.log.String())
	}
	s.Kill()
	if n := s.launches.Load(); n != launches {
		t.Errorf("%d launches after Shutdown", n-launches)
	}
}

// TestLaunchTellsThePluginItsHostPID: the plugin process gets the host's PID in
// plugin.HostPIDEnv, so that it can tell that a host which died while launching it is
// gone.
func TestLaunchTellsThePluginItsHostPID(t *testing.T) {
	p := launchTestPlugin(t, pluginclient.Options{})
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.Pid()))
	if err != nil {
		t.Skipf("cannot read the plugin's environment: %v", err)
	}
	want := plugin.HostPIDEnv + "=" + strconv.Itoa(os.Getpid())
	if !slices.Contains(strings.Split(string(environ), "\x00"), want) {
		t.Fatalf("the plugin's environment lacks %s", want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Heartbeat(ctx, "missing"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("Heartbeat(missing) = %v; want a plugin serving its host", err)
	}
}
