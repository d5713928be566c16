package pluginclient

import (
	"testing"
	"time"
)

func TestBackoffDoublesWithJitterUpToTheCap(t *testing.T) {
	s := &Supervised{opts: SuperviseOptions{MinBackoff: time.Second, MaxBackoff: 10 * time.Second}.withDefaults()}
	tests := []struct {
		attempt  int
		hopeless bool
		lo, hi   time.Duration
	}{
		{1, false, 800 * time.Millisecond, 1200 * time.Millisecond},
		{2, false, 1600 * time.Millisecond, 2400 * time.Millisecond},
		{3, false, 3200 * time.Millisecond, 4800 * time.Millisecond},
		{4, false, 6400 * time.Millisecond, 9600 * time.Millisecond},
		{5, false, 8 * time.Second, 10 * time.Second},
		{1000, false, 8 * time.Second, 10 * time.Second},
		{1, true, 10 * time.Second, 10 * time.Second},
	}
	for _, tt := range tests {
		for range 100 {
			if d := s.backoff(tt.attempt, tt.hopeless); d < tt.lo || d > tt.hi {
				t.Fatalf("backoff(%d, hopeless %v) = %v; want within [%v, %v]", tt.attempt, tt.hopeless, d, tt.lo, tt.hi)
			}
		}
	}
}
