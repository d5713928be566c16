package taskscaler

import (
	"fmt"
	"math"
	"strings"
)

// The scaler's counts come from configuration (idle_count, max_instances,
// capacity_per_instance, scale_factor) that may be absurdly large. Its sums saturate at
// math.MaxInt instead of wrapping around to a negative "nothing needed".

// satAdd returns a+b for non-negative b, at most math.MaxInt.
func satAdd(a, b int) int {
	if b > 0 && a > math.MaxInt-b {
		return math.MaxInt
	}
	return a + b
}

// satMul returns a×b for non-negative a and b, at most math.MaxInt.
func satMul(a, b int) int {
	if a <= 0 || b <= 0 {
		return 0
	}
	if a > math.MaxInt/b {
		return math.MaxInt
	}
	return a * b
}

// ceilDiv returns ⌈a/b⌉ for non-negative a and positive b, without overflowing.
func ceilDiv(a, b int) int {
	if b <= 0 || a <= 0 {
		return 0
	}
	q := a / b
	if a%b != 0 {
		q++
	}
	return q
}

// floatToCount converts a non-negative float to an int, saturating: Go's conversion of
// an out-of-range float is implementation-defined (math.MinInt on amd64).
func floatToCount(f float64) int {
	switch {
	case math.IsNaN(f) || f <= 0:
		return 0
	case f >= math.MaxInt:
		return math.MaxInt
	}
	return int(f)
}

// stepErr wraps err from a plugin call with the step, unless err already names it:
// the plugin client's errors start with the method ("update: plugin aws: …", or
// "plugin aws: update: …"), and a message must say each step once. A subject (an
// instance ID) is kept either way.
func stepErr(step, subject string, err error) error {
	msg := err.Error()
	named := strings.HasPrefix(msg, step+":") || strings.HasPrefix(msg, step+" ")
	if rest, ok := strings.CutPrefix(msg, "plugin "); ok && !named {
		if _, after, ok := strings.Cut(rest, ": "); ok {
			named = strings.HasPrefix(after, step+":") || strings.HasPrefix(after, step+" ")
		}
	}
	switch {
	case named && subject == "":
		return err
	case named:
		return fmt.Errorf("instance %s: %w", subject, err)
	case subject == "":
		return fmt.Errorf("%s: %w", step, err)
	}
	return fmt.Errorf("%s of instance %s: %w", step, subject, err)
}
