package simulate

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// BootTime is the distribution of the time from Increase to an instance being
// running (boot-to-SSH-ready, B in benchmarks.md). Either Fixed, or log-normal with
// Median and P99.
type BootTime struct {
	Fixed  time.Duration
	Median time.Duration
	P99    time.Duration
}

// Validate checks that exactly one form is set.
func (b BootTime) Validate() error {
	switch {
	case b.Fixed < 0 || b.Median < 0 || b.P99 < 0:
		return fmt.Errorf("boot time: durations must not be negative")
	case b.Fixed > 0 && (b.Median > 0 || b.P99 > 0):
		return fmt.Errorf("boot time: set either boot_time (fixed) or boot_median and boot_p99 (log-normal), not both")
	case b.Fixed == 0 && (b.Median > 0) != (b.P99 > 0):
		return fmt.Errorf("boot time: a log-normal boot time needs both boot_median and boot_p99")
	case b.Median > 0 && b.P99 < b.Median:
		return fmt.Errorf("boot time: boot_p99 %s is below boot_median %s", b.P99, b.Median)
	}
	return nil
}

// String describes the distribution.
func (b BootTime) String() string {
	if b.Median > 0 {
		return fmt.Sprintf("log-normal, median %s, p99 %s", b.Median, b.P99)
	}
	return fmt.Sprintf("fixed %s", b.Fixed)
}

func (b BootTime) sigma() float64 {
	if b.Median <= 0 {
		return 0
	}
	return math.Log(float64(b.P99)/float64(b.Median)) / z99
}

// Quantile returns the q-quantile (0 < q < 1) of the distribution.
func (b BootTime) Quantile(q float64) time.Duration {
	if b.Median <= 0 {
		return b.Fixed
	}
	return time.Duration(float64(b.Median) * math.Exp(b.sigma()*normQuantile(q)))
}

// Mean returns the expected boot time.
func (b BootTime) Mean() time.Duration {
	if b.Median <= 0 {
		return b.Fixed
	}
	s := b.sigma()
	return time.Duration(float64(b.Median) * math.Exp(s*s/2))
}

func (b BootTime) sample(rng *rand.Rand) time.Duration {
	if b.Median <= 0 {
		return b.Fixed
	}
	return time.Duration(float64(b.Median) * math.Exp(b.sigma()*rng.NormFloat64())).Round(time.Millisecond)
}

// normQuantile is the standard normal quantile (Acklam's rational approximation,
// relative error below 1.2e-9, ample for reporting boot-time percentiles).
func normQuantile(p float64) float64 {
	a := [6]float64{-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00}
	b := [5]float64{-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01, -1.328068155288572e+01}
	c := [6]float64{-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00}
	d := [4]float64{7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00}
	const lo = 0.02425
	switch {
	case p <= 0:
		return math.Inf(-1)
	case p >= 1:
		return math.Inf(1)
	case p < lo:
		q := math.Sqrt(-2 * math.Log(p))
		return (((((c[0]*q+c[1])*q+c[2])*q+c[3])*q+c[4])*q + c[5]) / ((((d[0]*q+d[1])*q+d[2])*q+d[3])*q + 1)
	case p > 1-lo:
		q := math.Sqrt(-2 * math.Log(1-p))
		return -(((((c[0]*q+c[1])*q+c[2])*q+c[3])*q+c[4])*q + c[5]) / ((((d[0]*q+d[1])*q+d[2])*q+d[3])*q + 1)
	}
	q := p - 0.5
	r := q * q
	return (((((a[0]*r+a[1])*r+a[2])*r+a[3])*r+a[4])*r + a[5]) * q / (((((b[0]*r+b[1])*r+b[2])*r+b[3])*r+b[4])*r + 1)
}

// CloudOptions configure a Cloud.
type CloudOptions struct {
	Boot BootTime
	// CapacityErrorRate is the probability that one requested instance is refused
	// with provider.ErrCapacity (insufficient capacity in the zone).
	CapacityErrorRate float64
	// Seed drives boot-time samples and capacity errors.
	Seed uint64
}

// cloudInstance is the cloud's record of one instance, kept after deletion for the
// cost accounting.
type cloudInstance struct {
	id      string
	created time.Time
	running time.Time // created + boot
	deleted time.Time // zero while it exists
}

// Cloud is an in-memory provider.InstanceGroup on a virtual clock: Increase creates
// instances that turn running after a sampled boot time, Decrease deletes at once,
// and every call answers instantly. It keeps every instance it ever created, so that
// the simulator can bill instance-seconds exactly.
type Cloud struct {
	clk  clock.Clock
	opts CloudOptions

	mu         sync.Mutex
	rng        *rand.Rand
	all        []*cloudInstance
	live       map[string]*cloudInstance
	liveOrder  []*cloudInstance
	maxLive    int
	increases  int
	refused    int
	onIncrease func(delta int)
}

// NewCloud returns a Cloud on clk.
func NewCloud(clk clock.Clock, o CloudOptions) *Cloud {
	return &Cloud{clk: clk, opts: o, rng: rand.New(rand.NewPCG(o.Seed, 0xc10d)), live: map[string]*cloudInstance{}}
}

// Init reports the group's identity; the simulated cloud has no size limit.
func (c *Cloud) Init(context.Context, hclog.Logger, provider.Settings) (provider.ProviderInfo, error) {
	return provider.ProviderInfo{ID: "simulate/cloud", Version: "sim"}, nil
}

// Update lists every live instance: creating until its boot time has passed, then
// running.
func (c *Cloud) Update(_ context.Context, fn func(string, provider.State)) error {
	now := c.clk.Now()
	c.mu.Lock()
	type row struct {
		id string
		st provider.State
	}
	rows := make([]row, 0, len(c.liveOrder))
	kept := c.liveOrder[:0]
	for _, in := range c.liveOrder {
		if !in.deleted.IsZero() {
			continue
		}
		kept = append(kept, in)
		st := provider.StateCreating
		if !now.Before(in.running) {
			st = provider.StateRunning
		}
		rows = append(rows, row{in.id, st})
	}
	c.liveOrder = kept
	c.mu.Unlock()
	for _, r := range rows {
		fn(r.id, r.st)
	}
	return nil
}

// Increase creates delta instances; with a capacity error rate some are refused, and
// then the error wraps provider.ErrCapacity.
func (c *Cloud) Increase(_ context.Context, delta int) (int, error) {
	now := c.clk.Now()
	c.mu.Lock()
	c.increases++
	ok := 0
	for range delta {
		if c.opts.CapacityErrorRate > 0 && c.rng.Float64() < c.opts.CapacityErrorRate {
			continue
		}
		in := &cloudInstance{id: fmt.Sprintf("sim-%06d", len(c.all)), created: now}
		in.running = now.Add(c.opts.Boot.sample(c.rng))
		c.all = append(c.all, in)
		c.live[in.id] = in
		c.liveOrder = append(c.liveOrder, in)
		ok++
	}
	c.refused += delta - ok
	c.maxLive = max(c.maxLive, len(c.live))
	hook := c.onIncrease
	c.mu.Unlock()
	if hook != nil {
		hook(delta)
	}
	if ok < delta {
		return ok, fmt.Errorf("create %d instances: %d refused: %w", delta, delta-ok, provider.ErrCapacity)
	}
	return ok, nil
}

// Decrease deletes instances at once; billing stops now.
func (c *Cloud) Decrease(_ context.Context, ids []string) ([]string, error) {
	now := c.clk.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	var done []string
	for _, id := range ids {
		if in, ok := c.live[id]; ok {
			in.deleted = now
			delete(c.live, id)
			done = append(done, id)
		}
	}
	return done, nil
}

// ConnectInfo returns a placeholder address: nothing connects to a simulated instance.
func (c *Cloud) ConnectInfo(_ context.Context, id string) (provider.ConnectInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.live[id]; !ok {
		return provider.ConnectInfo{}, fmt.Errorf("connect info of %s: %w", id, provider.ErrNotFound)
	}
	return provider.ConnectInfo{ID: id, InternalAddr: "192.0.2.1"}, nil
}

// Heartbeat succeeds for every live instance.
func (c *Cloud) Heartbeat(_ context.Context, id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.live[id]; !ok {
		return fmt.Errorf("heartbeat %s: %w", id, provider.ErrNotFound)
	}
	return nil
}

// Shutdown does nothing: simulated instances cost nothing once the run ends.
func (c *Cloud) Shutdown(context.Context) error { return nil }

// MaxLive returns the most instances that existed at once.
func (c *Cloud) MaxLive() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxLive
}
