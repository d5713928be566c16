package execcmd

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/flotilla-ci/flotilla/host/pool"
)

// RunWithSignals is Run with the signal contract of `runner exec` wired (see
// docs/reliability.md): SIGTERM, SIGINT and SIGHUP cancel the running jobs (their
// after_script runs), then the pool's instances are deleted; a second one stops
// waiting for the jobs but still deletes the instances; a third exits at once.
// SIGQUIT starts no new jobs and lets the running ones finish first, and the exit code
// is the pipeline's (1 if jobs were left unstarted). After the other signals the exit
// code is ExitSignal plus the number of the first one. SIGHUP and SIGINT that were
// ignored when the process started (nohup, a background job of a script) stay
// ignored.
func RunWithSignals(ctx context.Context, o Options) (int, error) {
	sigs := make(chan os.Signal, 8)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT} {
		if (sig == syscall.SIGHUP || sig == syscall.SIGINT) && signal.Ignored(sig) {
			continue
		}
		signal.Notify(sigs, sig)
	}
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	drain, abort := make(chan struct{}), make(chan struct{})
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := runPipeline(ctx, o, pool.Stops{Drain: drain, Abort: abort})
		done <- result{code, err}
	}()

	say := func(format string, args ...any) { fmt.Fprintf(o.Stderr, "runner exec: "+format+"\n", args...) }
	var first syscall.Signal // the first stop signal (not SIGQUIT)
	stops := 0
	for {
		select {
		case r := <-done:
			if first != 0 {
				return ExitSignal + int(first), r.err
			}
			return r.code, r.err
		case s := <-sigs:
			sig := s.(syscall.Signal)
			name := unix.SignalName(sig)
			if sig == syscall.SIGQUIT {
				if stops > 0 || isClosed(drain) {
					say("%s: already stopping", name)
					continue
				}
				close(drain)
				say("%s: finishing the running jobs and starting no new ones, then deleting the pool's instances (SIGTERM cancels the running jobs)", name)
				continue
			}
			stops++
			switch stops {
			case 1:
				first = sig
				cancel(stopSignal{sig})
				say("%s: canceling the running jobs (their after_script runs), then deleting the pool's instances; send it again to stop waiting for the jobs", name)
			case 2:
				close(abort)
				say("%s again: not waiting for the jobs any more; deleting the pool's instances (for at most %s); send it again to exit at once", name, shutdownBound)
			default:
				say("%s a third time: exiting at once; instances that are left are deleted by the next `runner exec` on this pool", name)
				return ExitSignal + int(first), nil
			}
		}
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// stopSignal is the cause of a run stopped by a signal; the canceled jobs' results
// carry it.
type stopSignal struct{ sig syscall.Signal }

func (e stopSignal) Error() string { return "stopped by " + unix.SignalName(e.sig) }
