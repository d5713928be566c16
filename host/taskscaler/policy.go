package taskscaler

import (
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
)

// cronParser accepts the 5 standard fields with names, ranges, lists and steps.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

type compiledPolicy struct {
	Policy
	index     int
	schedules []cron.Schedule
	loc       *time.Location
}

// compilePolicies parses every period and zone, naming the policy and field of each
// error. No policies means one always-active policy with zero idle capacity.
func compilePolicies(ps []Policy) ([]compiledPolicy, error) {
	out := make([]compiledPolicy, 0, len(ps))
	for i, p := range ps {
		cp := compiledPolicy{Policy: p, index: i, loc: time.Local}
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
			sched, err := cronParser.Parse(expr)
			if err != nil {
				return nil, fmt.Errorf("policy[%d].periods[%d] = %q: want 5 cron fields \"minute hour day-of-month month day-of-week\" (e.g. \"* 8-18 * * mon-fri\"): %w", i, j, expr, err)
			}
			cp.schedules = append(cp.schedules, sched)
		}
		out = append(out, cp)
	}
	return out, nil
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
	return compiledPolicy{index: -1}
}

// preemptive reports the policy's effective preemptive mode.
func (p *compiledPolicy) preemptive() bool {
	if p.PreemptiveMode != nil {
		return *p.PreemptiveMode
	}
	return p.IdleCount > 0
}
