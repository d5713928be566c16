package simulate

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/flotilla-ci/flotilla/host/config"
)

// Table is the [simulate] table of config.toml. The runner ignores it; only
// `runner simulate` reads it.
type Table struct {
	// Runner names the [[runners]] entry to simulate; empty means the first one with
	// a [runners.autoscaler] table.
	Runner string `toml:"runner"`
	// BootTime is a fixed boot time ("45s"); BootMedian and BootP99 a log-normal one.
	BootTime   string `toml:"boot_time"`
	BootMedian string `toml:"boot_median"`
	BootP99    string `toml:"boot_p99"`
	// CapacityErrorRate is the probability that one requested instance is refused.
	CapacityErrorRate float64 `toml:"capacity_error_rate"`
	// Seed drives boot-time samples and capacity errors.
	Seed uint64 `toml:"seed"`
	// Start is the wall-clock time (RFC 3339) of the trace's second 0, against which
	// policy periods are matched.
	Start string `toml:"start"`
}

// Overrides are command-line settings that win over the [simulate] table; zero
// values leave the table's value.
type Overrides struct {
	Runner            string
	Boot              BootTime
	CapacityErrorRate *float64
	Seed              *uint64
	Start             string
}

// LoadParams reads config.toml at path: the runner's [runners.autoscaler] keys and
// policies through host/config (so they are checked as `runner run` checks them),
// and the [simulate] table, then applies ov. Warnings other than the one about the
// [simulate] table itself are returned for the caller to print.
func LoadParams(path string, ov Overrides) (Params, []string, error) {
	var p Params
	cfg, diags, err := config.Load(path)
	var warns []string
	for _, d := range diags.Warnings() {
		if strings.HasPrefix(d.Path, "simulate") {
			continue
		}
		warns = append(warns, d.String())
	}
	if err != nil {
		return p, warns, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return p, warns, fmt.Errorf("reading config file: %w", err)
	}
	var doc struct {
		Simulate Table `toml:"simulate"`
	}
	if err := toml.Unmarshal(data, &doc); err != nil {
		return p, warns, fmt.Errorf("%s: [simulate]: %w", path, err)
	}
	t := doc.Simulate
	if ov.Runner != "" {
		t.Runner = ov.Runner
	}
	var r *config.Runner
	for i := range cfg.Runners {
		c := &cfg.Runners[i]
		if c.Autoscaler == nil {
			continue
		}
		if t.Runner == "" || c.Name == t.Runner {
			r = c
			break
		}
	}
	if r == nil {
		if t.Runner != "" {
			return p, warns, fmt.Errorf("%s: no [[runners]] entry named %q with a [runners.autoscaler] table (set [simulate] runner or --runner)", path, t.Runner)
		}
		return p, warns, fmt.Errorf("%s: no [[runners]] entry has a [runners.autoscaler] table: nothing to simulate", path)
	}
	p.Scaler = r.Autoscaler.ScalerOptions()
	p.Runner = r.Name

	dur := func(key, v string) (time.Duration, error) {
		if v == "" {
			return 0, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return 0, fmt.Errorf("%s: simulate.%s = %q: want a duration such as \"45s\" or \"1m30s\"", path, key, v)
		}
		return d, nil
	}
	var errs []error
	var e error
	if p.Boot.Fixed, e = dur("boot_time", t.BootTime); e != nil {
		errs = append(errs, e)
	}
	if p.Boot.Median, e = dur("boot_median", t.BootMedian); e != nil {
		errs = append(errs, e)
	}
	if p.Boot.P99, e = dur("boot_p99", t.BootP99); e != nil {
		errs = append(errs, e)
	}
	if err := errors.Join(errs...); err != nil {
		return p, warns, err
	}
	if ov.Boot != (BootTime{}) {
		p.Boot = ov.Boot
	}
	if p.Boot == (BootTime{}) {
		p.Boot.Fixed = 45 * time.Second
	}
	if err := p.Boot.Validate(); err != nil {
		return p, warns, fmt.Errorf("%s: [simulate] %w", path, err)
	}
	p.CapacityErrorRate, p.Seed = t.CapacityErrorRate, t.Seed
	if ov.CapacityErrorRate != nil {
		p.CapacityErrorRate = *ov.CapacityErrorRate
	}
	if ov.Seed != nil {
		p.Seed = *ov.Seed
	}
	if p.CapacityErrorRate < 0 || p.CapacityErrorRate >= 1 {
		return p, warns, fmt.Errorf("%s: simulate.capacity_error_rate = %g: want 0 <= rate < 1", path, p.CapacityErrorRate)
	}
	if ov.Start != "" {
		t.Start = ov.Start
	}
	if t.Start != "" {
		st, err := time.Parse(time.RFC3339, t.Start)
		if err != nil {
			return p, warns, fmt.Errorf("%s: simulate.start = %q: want an RFC 3339 time such as \"2026-03-02T00:00:00Z\"", path, t.Start)
		}
		p.Start = st
	}
	return p, warns, nil
}
