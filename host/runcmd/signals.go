package runcmd

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// RunWithSignals runs s with the service signals wired: SIGQUIT drains (finish the
// running jobs, then exit), SIGTERM/SIGINT cancel the running jobs and exit after
// reporting their final state (a second one gives up on reporting), SIGHUP reloads
// config.toml.
func RunWithSignals(ctx context.Context, s *Service) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		stopping := false
		for {
			select {
			case sig := <-sigs:
				switch sig {
				case syscall.SIGQUIT:
					s.log.Info("SIGQUIT: graceful stop")
					s.Drain()
				case syscall.SIGHUP:
					s.log.Info("SIGHUP: reloading configuration")
					s.Reload()
				default:
					if stopping {
						s.log.Warn("second stop signal: not waiting for GitLab to accept final job states")
						s.Abort()
						continue
					}
					stopping = true
					cancel(errSignal{sig})
				}
			case <-ctx.Done():
				if !stopping {
					return
				}
			}
		}
	}()
	return s.Run(ctx)
}

type errSignal struct{ sig os.Signal }

func (e errSignal) Error() string { return "received " + e.sig.String() }
