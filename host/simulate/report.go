package simulate

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"
)

// WriteText prints r for people: costs, waits, and the floors they are scored
// against.
func WriteText(w io.Writer, r *Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	sec := func(s float64) string {
		return (time.Duration(s * float64(time.Second))).Round(100 * time.Millisecond).String()
	}
	fmt.Fprintf(tw, "jobs\t%d (%d failed: no slot within instance_acquire_timeout of their reservation, or none within 24h)\n", r.Jobs, r.FailedJobs)
	fmt.Fprintf(tw, "simulated time\t%s (%d reconcile cycles)\n", sec(r.HorizonS), r.Reconciles)
	fmt.Fprintf(tw, "boot time\t%s\n", r.Boot)
	fmt.Fprintf(tw, "instance-seconds\t%.0f (busy %.0f, idle %.0f, booting %.0f)\n", r.InstanceSeconds, r.BusyInstanceSeconds, r.IdleInstanceSeconds, r.BootingInstanceSeconds)
	fmt.Fprintf(tw, "idle+booting per job\t%.1f s\n", r.IdlePerJobS)
	fmt.Fprintf(tw, "job wait p50/p95/p99\t%s / %s / %s (mean %s, max %s)\n", sec(r.WaitP50S), sec(r.WaitP95S), sec(r.WaitP99S), sec(r.WaitMeanS), sec(r.WaitMaxS))
	fmt.Fprintf(tw, "queued in GitLab\t%d jobs, p50/p95 %s / %s (max %s): part of the wait before the runner asked for the job\n", r.QueuedJobs, sec(r.QueueWaitP50S), sec(r.QueueWaitP95S), sec(r.QueueWaitMaxS))
	fmt.Fprintf(tw, "instances\t%d created, %d at most at once, %d refused by the cloud\n", r.InstancesCreated, r.MaxInstancesSeen, r.CapacityRefused)
	fmt.Fprintf(tw, "clairvoyant cost floor\t%.0f instance-seconds (this policy: %+.1f%%)\n", r.ClairvoyantInstanceSeconds, 100*r.ExcessOverFloor)
	fmt.Fprintf(tw, "zero-idle wait floor\t%s (p95 %s): a job without idle capacity waits a boot\n", sec(r.ZeroIdleWaitS), sec(r.ZeroIdleWaitP95S))
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, msg := range r.Warnings {
		if _, err := fmt.Fprintf(w, "\n%s\n", msg); err != nil {
			return err
		}
	}
	return nil
}
