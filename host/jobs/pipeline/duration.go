package pipeline

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

var durationUnits = map[string]time.Duration{
	"s": time.Second, "sec": time.Second, "secs": time.Second, "second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "mins": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hr": time.Hour, "hrs": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	"w": 7 * 24 * time.Hour, "week": 7 * 24 * time.Hour, "weeks": 7 * 24 * time.Hour,
}

// ParseTimeout reads a job timeout the way GitLab writes them: "1h 30m", "90 minutes",
// "2 hours 10 minutes", "3600" (seconds) or a Go duration ("1h30m").
func ParseTimeout(s string) (time.Duration, error) {
	s = strings.TrimSpace(strings.ToLower(s))
	if s == "" {
		return 0, fmt.Errorf("empty duration")
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 {
			return 0, fmt.Errorf("duration %q must be positive", s)
		}
		return time.Duration(n) * time.Second, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return 0, fmt.Errorf("duration %q must be positive", s)
		}
		return d, nil
	}
	total, err := wordDuration(s, func(u string) (time.Duration, bool) { d, ok := durationUnits[u]; return d, ok })
	if err != nil {
		return 0, fmt.Errorf("duration %q: %w", s, err)
	}
	if total <= 0 {
		return 0, fmt.Errorf("duration %q must be positive", s)
	}
	return total, nil
}

// wordDuration adds up numbers with units as GitLab writes durations ("1h 30m",
// "3 weeks and 2 days", "6 mos, 1 day"); unit maps a unit word (possibly "", a
// number alone) to its length.
func wordDuration(s string, unit func(string) (time.Duration, bool)) (time.Duration, error) {
	var total time.Duration
	rest := strings.ReplaceAll(strings.ReplaceAll(strings.ToLower(s), " and ", " "), ",", " ")
	for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimSpace(rest) {
		i := strings.IndexFunc(rest, func(r rune) bool { return !unicode.IsDigit(r) })
		if i < 0 {
			i = len(rest)
		}
		if i == 0 {
			return 0, fmt.Errorf("expected a number at %q", rest)
		}
		n, err := strconv.Atoi(rest[:i])
		if err != nil || n > 1<<20 {
			return 0, fmt.Errorf("number %q out of range", rest[:i])
		}
		rest = strings.TrimSpace(rest[i:])
		j := strings.IndexFunc(rest, func(r rune) bool { return !unicode.IsLetter(r) })
		if j < 0 {
			j = len(rest)
		}
		u, ok := unit(rest[:j])
		if !ok {
			return 0, fmt.Errorf("unknown unit %q (use s, m, h, d or words such as minutes)", rest[:j])
		}
		total += time.Duration(n) * u
		rest = rest[j:]
	}
	return total, nil
}
