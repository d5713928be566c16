package taskscaler

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// cronParser accepts the 5 standard fields with names, ranges, lists and steps: the
// periods GitLab documents for [[runners.autoscaler.policy]].
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow)

// ParsePeriod parses one policy period (5-field cron: minute hour day-of-month month
// day-of-week; names such as mon-fri allowed, in any case). Day of week is 0–7 or
// SUN–SAT with 0 and 7 both Sunday, as GitLab documents it ("1 - 7 or MON-SUN"), so
// "* * * * 1-7" and "* * * * MON-SUN" mean every day. It is the one parser of periods:
// configuration checks them with it, so what loads is what the scaler runs.
// Descriptors such as @hourly are refused with a message that says what to write.
func ParsePeriod(expr string) (cron.Schedule, error) {
	if strings.HasPrefix(strings.TrimSpace(expr), "@") {
		return nil, fmt.Errorf("descriptors such as %q are not supported; write 5 fields", expr)
	}
	fields := strings.Fields(expr)
	if len(fields) == 5 {
		dow, err := sundayAsSeven(fields[4])
		if err != nil {
			return nil, err
		}
		fields[4] = dow
		expr = strings.Join(fields, " ")
	}
	return cronParser.Parse(expr)
}

// weekdays are the day-of-week names, Sunday first (0), as cron numbers them.
var weekdays = []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}

// sundayAsSeven rewrites a day-of-week field so that robfig/cron, which knows only
// 0–6, reads 7 as Sunday: a lone 7 (or a range ending in SUN after another day, such
// as MON-SUN) becomes 0, and a range ending in 7 becomes the list of its days. Other
// items are left to the cron parser, which reports their errors.
func sundayAsSeven(field string) (string, error) {
	items := strings.Split(field, ",")
	for i, item := range items {
		rng, step := item, ""
		if j := strings.IndexByte(item, '/'); j >= 0 {
			rng, step = item[:j], item[j:]
		}
		lo, hi, isRange := strings.Cut(rng, "-")
		a, aok := weekdayNumber(lo)
		if !isRange {
			if aok && a == 7 && step == "" {
				items[i] = "0"
			}
			continue
		}
		b, bok := weekdayNumber(hi)
		if !aok || !bok {
			continue
		}
		if b == 0 && a > 0 && strings.EqualFold(hi, "sun") {
			b = 7 // MON-SUN: Sunday closes the week
		}
		if b != 7 || a > b {
			continue
		}
		n := 1
		if step != "" {
			v, err := strconv.Atoi(step[1:])
			if err != nil || v <= 0 {
				return "", fmt.Errorf("day of week %q: step %q is not a positive number", item, step[1:])
			}
			n = v
		}
		var days []string
		for d := a; d <= b; d += n {
			days = append(days, strconv.Itoa(d%7))
		}
		items[i] = strings.Join(days, ",")
	}
	return strings.Join(items, ","), nil
}

// weekdayNumber reads a day of week as a number 0–7 or a name (any case).
func weekdayNumber(s string) (int, bool) {
	for i, n := range weekdays {
		if strings.EqualFold(s, n) {
			return i, true
		}
	}
	v, err := strconv.Atoi(s)
	return v, err == nil && v >= 0 && v <= 7
}

// Snapshot is what an IdlePolicy sees when the scaler decides: the moment, the
// pool's slots by state (acquired, reserved, pending, idle, …) and what the scaler
// observed of its jobs.
type Snapshot struct {
	Now                 time.Time
	Tasks               TaskCounts
	CapacityPerInstance int
	MaxUseCount         int
	Demand              Demand
}

// Target is an IdlePolicy's answer: the idle slots to keep and why, in words for
// status and logs.
type Target struct {
	Slots int
	Why   string
	// Forecast is set by a forecast policy.
	Forecast *Forecast
}

// IdlePolicy is one kind of scaling policy. It says how much idle capacity the pool
// keeps beyond the slots its jobs hold, how long an idle instance is kept, and whether
// capacity is kept ahead of demand. The scaler does the rest (jobs, limits, instances):
// a new kind of policy is a new IdlePolicy, computed from the snapshot alone, so it can
// be tested without a scaler and compared with runner simulate. Which policy is active
// is decided by its periods (cron) and timezone, whatever its kind.
type IdlePolicy interface {
	// IdleTarget returns the idle slots to keep, in job slots (not instances), ≥ 0,
	// with the reason.
	IdleTarget(Snapshot) Target
	// IdleTime is how long an instance may stay idle before it may be removed.
	IdleTime() time.Duration
	// Preemptive reports whether Reserve succeeds only with an idle ready slot (on) or
	// whenever capacity could be created (off).
	Preemptive() bool
}

// fixedPolicy is GitLab's [[runners.autoscaler.policy]]: idle_count slots, raised to
// scale_factor × the acquired slots (capped at scale_factor_limit); preemptive unless
// set otherwise when idle_count > 0.
type fixedPolicy struct{ p Policy }

func (f fixedPolicy) IdleTarget(s Snapshot) Target {
	t := Target{Slots: f.p.IdleCount, Why: fmt.Sprintf("idle_count %d", f.p.IdleCount)}
	if f.p.ScaleFactor > 0 {
		sf := floatToCount(math.Ceil(float64(s.Tasks.Acquired) * f.p.ScaleFactor))
		if f.p.ScaleFactorLimit > 0 {
			sf = min(sf, f.p.ScaleFactorLimit)
		}
		if sf > t.Slots {
			t = Target{Slots: sf, Why: fmt.Sprintf("scale_factor %g × %d acquired slots", f.p.ScaleFactor, s.Tasks.Acquired)}
			if f.p.ScaleFactorLimit > 0 && sf == f.p.ScaleFactorLimit {
				t.Why += fmt.Sprintf(", capped at scale_factor_limit %d", f.p.ScaleFactorLimit)
			}
		}
	}
	return t
}

func (f fixedPolicy) IdleTime() time.Duration { return f.p.IdleTime }

func (f fixedPolicy) Preemptive() bool {
	if f.p.PreemptiveMode != nil {
		return *f.p.PreemptiveMode
	}
	return f.p.IdleCount > 0
}

// compiledPolicy is a policy with its periods parsed: the settings it was made from,
// for status, and the IdlePolicy that decides.
type compiledPolicy struct {
	settings Policy
	IdlePolicy
	index     int
	schedules []cron.Schedule
	loc       *time.Location
}

// compilePolicies parses every period and zone, naming the policy and field of each
// error. No policies means one always-active policy with zero idle capacity.
func compilePolicies(ps []Policy) ([]compiledPolicy, error) {
	out := make([]compiledPolicy, 0, len(ps))
	for i, p := range ps {
		cp := compiledPolicy{settings: p, IdlePolicy: fixedPolicy{p}, index: i, loc: time.Local}
		if p.Mode == ModeForecast {
			cp.IdlePolicy = forecastPolicy{p}
		}
		if p.Timezone != "" {
			loc, err := time.LoadLocation(p.Timezone)
			if err != nil {
				return nil, fmt.Errorf("policy[%d].timezone = %q: not an IANA time zone (e.g. \"Europe/Berlin\"): %w", i, p.Timezone, err)
			}
			cp.loc = loc
		}
		periods := p.Periods
		if len(periods) == 0 {
			periods = []string{DefaultPeriod}
		}
		for j, expr := range periods {
			sched, err := ParsePeriod(expr)
			if err != nil {
				return nil, fmt.Errorf("policy[%d].periods[%d] = %q: want 5 cron fields \"minute hour day-of-month month day-of-week\" (e.g. \"* 8-18 * * mon-fri\"): %w", i, j, expr, err)
			}
			cp.schedules = append(cp.schedules, sched)
		}
		out = append(out, cp)
	}
	return out, nil
}

// mode is the policy's kind for status.
func (p *compiledPolicy) mode() string {
	if _, ok := p.IdlePolicy.(forecastPolicy); ok {
		return ModeForecast
	}
	return ModeFixed
}

// matches reports whether the minute containing t matches one of the periods.
func (p *compiledPolicy) matches(t time.Time) bool {
	lt := t.In(p.loc)
	minute := time.Date(lt.Year(), lt.Month(), lt.Day(), lt.Hour(), lt.Minute(), 0, 0, p.loc)
	for _, s := range p.schedules {
		if s.Next(minute.Add(-time.Second)).Equal(minute) {
			return true
		}
	}
	return false
}

// activePolicy returns the last matching policy, or a zero policy (index -1) when none
// matches: no idle capacity, instances removable as soon as they are idle.
func activePolicy(ps []compiledPolicy, t time.Time) compiledPolicy {
	for i := len(ps) - 1; i >= 0; i-- {
		if ps[i].matches(t) {
			return ps[i]
		}
	}
	return compiledPolicy{IdlePolicy: fixedPolicy{}, index: -1}
}
