package runcmd

import (
	"context"
	"reflect"
	"sync"

	"github.com/flotilla-ci/flotilla/host/cachestore"
	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/executors"
)

// sharedCaches keeps one cache store per [[runners]] entry, made again only when its
// [runners.cache] changes (a reload), so that credentials the SDK fetched (an instance
// role's) are reused across jobs.
type sharedCaches struct {
	mu    sync.Mutex
	cfg   config.Cache
	store cachestore.Store
	err   error
}

// forJob returns the shared cache of a job of project projectID under entry r, nil
// when r keeps caches on this host, or the reason the store cannot be used.
func (c *sharedCaches) forJob(ctx context.Context, r *config.Runner, projectID int64) (*executors.SharedCache, error) {
	if r.Cache == nil || r.Cache.Type == "" {
		return nil, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.store == nil && c.err == nil || !reflect.DeepEqual(c.cfg, *r.Cache) {
		c.cfg = *r.Cache
		c.store, c.err = cachestore.New(ctx, r.Cache)
	}
	if c.err != nil {
		return nil, c.err
	}
	cacheCfg := c.cfg
	return executors.NewSharedCache(c.store, &cacheCfg, r.Token, projectID), nil
}
