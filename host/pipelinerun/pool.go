package pipelinerun

import (
	"context"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
)

// ScalerPool adapts a taskscaler to Pool.
type ScalerPool struct{ Scaler *taskscaler.Scaler }

// Acquire blocks until the taskscaler hands out a slot (scaling up as needed).
func (p ScalerPool) Acquire(ctx context.Context, key string) (Slot, error) {
	a, err := p.Scaler.Acquire(ctx, key)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Release returns the slot.
func (p ScalerPool) Release(key string) { p.Scaler.Release(key) }
