package runcmd

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// RunWithSignals runs s with the service signals wired (docs/reliability.md, "Signal
// contract"): SIGQUIT drains (no new jobs, the running ones finish, then exit);
// SIGTERM/SIGINT cancel the running jobs (their after_script runs) and exit after
// reporting their final state and stopping the pools; a second one also gives up on
// the jobs' remaining steps and on reporting, but still stops the pools (deleting
// instances when configured, within shutdown_timeout); a third returns at once with
// an error. SIGHUP reloads config.toml. It returns nil after a clean stop, and an
// error if a pool could not be stopped cleanly (instances may be left).
func RunWithSignals(ctx context.Context, s *Service) error {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stops := 0
	for {
		select {
		case err := <-done:
			return err
		case sig := <-sigs:
			switch sig {
			case syscall.SIGQUIT:
				s.log.Info("SIGQUIT: graceful stop: finishing running jobs, taking no new ones")
				s.Drain()
			case syscall.SIGHUP:
				s.log.Info("SIGHUP: reloading configuration")
				s.Reload()
			default:
				stops++
				switch stops {
				case 1:
					cancel(errSignal{sig})
				case 2:
					s.log.Warn(unix.SignalName(sig.(syscall.Signal)) + " again: not waiting for the jobs' after_script nor for GitLab to accept their final states; still stopping the pools")
					s.Abort()
				default:
					return fmt.Errorf("%s a third time: stopped at once; instances may be left (the next `runner run` adopts them)", unix.SignalName(sig.(syscall.Signal)))
				}
			}
		}
	}
}

type errSignal struct{ sig os.Signal }

func (e errSignal) Error() string { return "received " + unix.SignalName(e.sig.(syscall.Signal)) }
