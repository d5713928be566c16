package cloudsim

import (
	"errors"
	"fmt"
	"maps"
	"strings"
)

// Kind classifies an Error so that each fake can turn it into its cloud's error.
type Kind string

// The kinds of Error.
const (
	// KindThrottled: the call's family has no tokens left (AWS Throttling /
	// RequestLimitExceeded, HTTP 429 elsewhere).
	KindThrottled Kind = "throttled"
	// KindNotFound: the named group or VM does not exist.
	KindNotFound Kind = "not-found"
	// KindInvalid: the request breaks a rule (bounds, state).
	KindInvalid Kind = "invalid"
	// KindCapacity: no capacity (AWS InsufficientInstanceCapacity, GCP
	// ZONE_RESOURCE_POOL_EXHAUSTED, Azure quota errors).
	KindCapacity Kind = "capacity"
	// KindInternal: the cloud failed (HTTP 500).
	KindInternal Kind = "internal"
	// KindDenied: the caller lacks a permission.
	KindDenied Kind = "denied"
)

// Error is an error of the simulated cloud. Code, when set, is the exact error code a
// fake should send (an injected fault may name one, e.g. "RequestLimitExceeded");
// otherwise the fake derives one from Kind.
type Error struct {
	Kind    Kind
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Code != "" {
		return e.Code + ": " + e.Message
	}
	return string(e.Kind) + ": " + e.Message
}

// KindOf returns the Kind of err if it is (or wraps) an *Error, else KindInternal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return KindInternal
}

// Throttle limits the calls of one operation family to rate per second with bursts of
// burst, a token bucket refilled on the Cloud's clock. A rate of 0 removes the limit.
// The bucket starts full.
func (c *Cloud) Throttle(family string, rate float64, burst int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rate <= 0 {
		delete(c.buckets, family)
		return
	}
	c.buckets[family] = &bucket{rate: rate, burst: float64(burst), tokens: float64(burst), at: c.opts.Clock.Now()}
}

// Inject makes the next times calls of op fail with err (times < 0: every call until
// ClearFaults). Faults queue: the first injected is used up first.
func (c *Cloud) Inject(op string, times int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults[op] = append(c.faults[op], &fault{err: err, times: times})
}

// ClearFaults removes every injected fault.
func (c *Cloud) ClearFaults() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.faults = map[string][]*fault{}
}

// Call records one API call of op and decides whether it may proceed: it returns the
// injected fault for op, if any, else a KindThrottled error when op's family has no
// token left, else nil. Fakes call it once per request, before acting on it.
func (c *Cloud) Call(op string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[op]++
	if fs := c.faults[op]; len(fs) > 0 {
		f := fs[0]
		if f.times > 0 {
			f.times--
			if f.times == 0 {
				c.faults[op] = fs[1:]
			}
		}
		if KindOf(f.err) == KindThrottled {
			c.throttled[op]++
		}
		return f.err
	}
	family := op
	if f, ok := c.opts.Families[op]; ok {
		family = f
	}
	if b, ok := c.buckets[family]; ok {
		now := c.opts.Clock.Now()
		if el := now.Sub(b.at).Seconds(); el > 0 {
			b.tokens = min(b.burst, b.tokens+el*b.rate)
		}
		b.at = now
		if b.tokens < 1 {
			c.throttled[op]++
			return &Error{Kind: KindThrottled, Message: fmt.Sprintf("rate exceeded for %s", op)}
		}
		b.tokens--
	}
	return nil
}

// Calls returns how many times each operation was called (throttled calls included).
func (c *Cloud) Calls() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.calls)
}

// ThrottledCalls returns how many calls of each operation were throttled.
func (c *Cloud) ThrottledCalls() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.throttled)
}

// TotalCalls returns the number of calls of every operation whose name starts with
// prefix ("" counts all).
func (c *Cloud) TotalCalls(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for op, k := range c.calls {
		if strings.HasPrefix(op, prefix) {
			n += k
		}
	}
	return n
}

// ResetCalls zeroes the call and throttle counters.
func (c *Cloud) ResetCalls() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = map[string]int{}
	c.throttled = map[string]int{}
}
