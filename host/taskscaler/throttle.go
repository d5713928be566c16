package taskscaler

import (
	"fmt"
	"math"
	"time"
)

// bucket is the scale_throttle token bucket: capacity burst, refilled at limit tokens
// per second; limit < 0 means unlimited.
type bucket struct {
	limit  int
	burst  int
	tokens float64
	last   time.Time
}

func newBucket(limit, burst int, now time.Time) *bucket {
	return &bucket{limit: limit, burst: burst, tokens: float64(burst), last: now}
}

func (b *bucket) refill(now time.Time) {
	if b.limit < 0 {
		return
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = min(float64(b.burst), b.tokens+el*float64(b.limit))
	}
	b.last = now
}

// available returns how many whole tokens are available now.
func (b *bucket) available(now time.Time) int {
	if b.limit < 0 {
		return math.MaxInt
	}
	b.refill(now)
	return floatToCount(b.tokens)
}

// take consumes n tokens (callers checked available first).
func (b *bucket) take(n int) {
	if b.limit >= 0 {
		b.tokens -= float64(n)
	}
}

// breaker is the provisioning circuit breaker. Consecutive failures (Increase errors,
// ready failures, instances timing out or never appearing) open it for an
// exponentially growing period; once it elapses one probe instance may be created
// (half-open). An instance that becomes ready closes it.
type breaker struct {
	threshold  int
	backoff    time.Duration
	maxBackoff time.Duration

	failures    int
	opens       int
	openUntil   time.Time
	lastFailure string
	lastAt      time.Time
}

// BreakerStatus is the breaker's state as shown in Status.
type BreakerStatus struct {
	// State is "closed", "open" or "half-open".
	State               string    `json:"state"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	OpenUntil           time.Time `json:"open_until,omitzero"`
	LastFailure         string    `json:"last_failure,omitempty"`
	LastFailureAt       time.Time `json:"last_failure_at,omitzero"`
}

func (b *breaker) failure(now time.Time, reason string) {
	b.failures++
	b.lastFailure, b.lastAt = reason, now
	if b.threshold < 0 || b.failures < b.threshold {
		return
	}
	b.opens++
	b.openUntil = now.Add(backoff(b.opens, b.backoff, b.maxBackoff))
}

func (b *breaker) success() {
	b.failures, b.opens = 0, 0
	b.openUntil = time.Time{}
}

// allowance returns how many instances may be requested now (-1 = any) and, when
// limited, why.
func (b *breaker) allowance(now time.Time) (int, string) {
	if b.opens == 0 {
		return -1, ""
	}
	if now.Before(b.openUntil) {
		return 0, fmt.Sprintf("circuit breaker open until %s after %d consecutive provisioning failures; last: %s",
			b.openUntil.UTC().Format(time.RFC3339), b.failures, b.lastFailure)
	}
	return 1, fmt.Sprintf("circuit breaker half-open: one probe instance at a time after %d consecutive provisioning failures; last: %s",
		b.failures, b.lastFailure)
}

func (b *breaker) status(now time.Time) BreakerStatus {
	st := BreakerStatus{State: "closed", ConsecutiveFailures: b.failures, LastFailure: b.lastFailure, LastFailureAt: b.lastAt}
	switch {
	case b.opens > 0 && now.Before(b.openUntil):
		st.State, st.OpenUntil = "open", b.openUntil
	case b.opens > 0:
		st.State = "half-open"
	}
	return st
}
