package simulate

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Command returns the `simulate` command with its `generate` subcommand.
func Command() *cobra.Command {
	var (
		cfgPath, tracePath, plotPath, runner, start string
		sweep, reportPath                           string
		asJSON                                      bool
		bootFixed, bootMedian, bootP99              time.Duration
		capErr                                      float64
		seed                                        uint64
	)
	cmd := &cobra.Command{
		Use:   "simulate --config FILE --trace FILE",
		Short: "Replay a job trace through the taskscaler on a simulated cloud: cost, waits, and their floors",
		Long: "simulate replays a CI job trace (CSV: arrival_s,duration_s) through the real taskscaler of the\n" +
			"first [[runners]] entry with a [runners.autoscaler] table, on a virtual clock and a simulated\n" +
			"cloud whose boot time is set in the [simulate] table (boot_time, or boot_median and boot_p99)\n" +
			"or by flags. It prints instance-seconds (busy, idle, booting), job wait percentiles, and the\n" +
			"clairvoyant cost floor and zero-idle wait floor the policy is scored against, and how long\n" +
			"jobs waited in GitLab's queue before the runner asked for them.\n" +
			"--sweep KEY=FROM..TO[:STEP] runs once per value of one key and prints the cost–wait frontier,\n" +
			"with the forecast policy's point on it.\n" +
			"--report FILE.html writes all of it as one self-contained web page: the day plot, the wait\n" +
			"and cost tables, the floors and, with --sweep, the frontier.\n" +
			"`simulate generate` writes a seeded synthetic CI trace.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfgPath == "" || tracePath == "" {
				return fmt.Errorf("simulate needs --config FILE and --trace FILE (write a trace with `runner simulate generate`)")
			}
			var spec SweepSpec
			if cmd.Flags().Changed("sweep") {
				var err error
				if spec, err = ParseSweep(sweep); err != nil {
					return err
				}
			}
			ov := Overrides{Runner: runner, Start: start, Boot: BootTime{Fixed: bootFixed, Median: bootMedian, P99: bootP99}}
			if cmd.Flags().Changed("capacity-error-rate") {
				ov.CapacityErrorRate = &capErr
			}
			if cmd.Flags().Changed("seed") {
				ov.Seed = &seed
			}
			p, warns, err := LoadParams(cfgPath, ov)
			for _, w := range warns {
				fmt.Fprintln(cmd.ErrOrStderr(), w)
			}
			if err != nil {
				return err
			}
			jobs, err := ReadTraceFile(tracePath)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var report func(*Result, *Sweep) error
			if reportPath != "" {
				report = func(res *Result, sw *Sweep) error {
					rep := Report{Config: filepath.Base(cfgPath), Trace: filepath.Base(tracePath), Runner: p.Runner, Result: res, Sweep: sw}
					return writeFile(reportPath, func(w io.Writer) error { return WriteHTML(w, rep) })
				}
			}
			if spec.Key != "" {
				return runSweep(cmd, jobs, p, spec, sweepOutputs{plot: plotPath, json: asJSON, report: report})
			}
			for _, w := range CapWarnings(jobs, p) {
				fmt.Fprintln(cmd.ErrOrStderr(), w)
			}
			res, err := Run(cmd.Context(), jobs, p)
			if err != nil {
				return err
			}
			if plotPath != "" {
				if err := writeFile(plotPath, func(w io.Writer) error { return WriteSVG(w, res) }); err != nil {
					return err
				}
			}
			if report != nil {
				if err := report(res, nil); err != nil {
					return err
				}
			}
			if asJSON {
				// The text report carries the warnings; JSON carries them too, and stderr
				// shows them to whoever reads it.
				for _, w := range res.Warnings {
					fmt.Fprintln(cmd.ErrOrStderr(), w)
				}
				return writeJSON(out, res)
			}
			return WriteText(out, res)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfgPath, "config", "", "config.toml with a [[runners]] entry that has [runners.autoscaler] (and optionally [simulate])")
	f.StringVar(&tracePath, "trace", "", "trace CSV with the header arrival_s,duration_s (seconds from the start)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	f.StringVar(&plotPath, "plot", "", "write an SVG of demand, instances (booting, idle, busy) and job wait over time; with --sweep, of the cost–wait frontier")
	f.StringVar(&reportPath, "report", "", "write one self-contained HTML page: the day plot, the wait and cost tables, the floors and, with --sweep, the frontier")
	f.StringVar(&runner, "runner", "", "simulate the [[runners]] entry with this name (default: [simulate] runner, else the first autoscaled one)")
	f.DurationVar(&bootFixed, "boot-time", 0, "fixed boot time (overrides [simulate])")
	f.DurationVar(&bootMedian, "boot-median", 0, "log-normal boot time median; needs --boot-p99 (overrides [simulate])")
	f.DurationVar(&bootP99, "boot-p99", 0, "log-normal boot time 99th percentile")
	f.Float64Var(&capErr, "capacity-error-rate", 0, "probability that the cloud refuses one requested instance")
	f.Uint64Var(&seed, "seed", 0, "seed of the simulated cloud (boot samples, capacity errors)")
	f.StringVar(&sweep, "sweep", "", "run once per value of one key, KEY=FROM..TO[:STEP] (e.g. idle_count=0..20, idle_time=1m..30m:1m), and print the cost–wait frontier; keys: "+strings.Join(SweepKeys(), ", "))
	f.StringVar(&start, "start", "", "wall-clock time of the trace's second 0, RFC 3339 (default 2026-03-02T00:00:00Z, a Monday)")
	cmd.AddCommand(generateCommand())
	return cmd
}

// sweepOutputs are where a --sweep goes besides the table: the frontier SVG, JSON
// instead of the table, and the HTML report.
type sweepOutputs struct {
	plot   string
	json   bool
	report func(*Result, *Sweep) error
}

// runSweep runs a --sweep and prints its frontier: a table, or JSON, and the SVG. The
// report also shows the day of the config as it is, which takes one more run.
func runSweep(cmd *cobra.Command, jobs []Job, p Params, spec SweepSpec, o sweepOutputs) error {
	sw, err := RunSweep(cmd.Context(), jobs, p, spec)
	if err != nil {
		return err
	}
	if o.plot != "" {
		if err := writeFile(o.plot, func(w io.Writer) error { return WriteSweepSVG(w, sw) }); err != nil {
			return err
		}
	}
	if o.report != nil {
		res, err := Run(cmd.Context(), jobs, p)
		if err != nil {
			return err
		}
		if err := o.report(res, sw); err != nil {
			return err
		}
	}
	if o.json {
		return writeJSON(cmd.OutOrStdout(), sw)
	}
	return WriteSweepText(cmd.OutOrStdout(), sw)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func generateCommand() *cobra.Command {
	var o GenerateOptions
	var out string
	cmd := &cobra.Command{
		Use:   "generate",
		Short: "Write a seeded synthetic CI trace: diurnal rate, lighter weekends, fan-out bursts, log-normal durations",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			jobs, err := Generate(o)
			if err != nil {
				return fmt.Errorf("generate: %w", err)
			}
			if out == "" || out == "-" {
				return WriteTrace(cmd.OutOrStdout(), jobs)
			}
			return writeFile(out, func(w io.Writer) error { return WriteTrace(w, jobs) })
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&o.Seed, "seed", 1, "random seed: the same flags give the same trace")
	f.IntVar(&o.Jobs, "jobs", 10000, "number of jobs")
	f.IntVar(&o.Days, "days", 1, "length of the trace in days (day 0 is a Monday)")
	f.Float64Var(&o.WeekendFactor, "weekend-factor", 0.25, "arrival rate on Saturday and Sunday relative to weekdays (1 = no weekday weighting)")
	f.DurationVar(&o.MedianDuration, "duration-median", 3*time.Minute, "median job duration (log-normal)")
	f.DurationVar(&o.DurationP99, "duration-p99", 20*time.Minute, "99th percentile job duration")
	f.Float64Var(&o.MeanFanout, "fanout", 4, "mean number of parallel jobs per pipeline stage")
	f.IntVar(&o.MaxFanout, "max-fanout", 0, "cap on the jobs of one stage (0 = no cap: 2% of stages are bursts of 20-80 more jobs)")
	f.StringVarP(&out, "output", "o", "", "write the trace here instead of stdout")
	return cmd
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
