package pluginclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// breaker is a plugin whose answers break the contract in the ways the host must
// catch: it claims more than it was asked for, and deletions it was not asked for.
type breaker struct {
	*fake.Group
	update func(fn func(string, provider.State))
}

func (b *breaker) Update(ctx context.Context, fn func(string, provider.State)) error {
	if b.update != nil {
		b.update(fn)
		return nil
	}
	return b.Group.Update(ctx, fn)
}

func (b *breaker) Increase(ctx context.Context, n int) (int, error) {
	_, err := b.Group.Increase(ctx, n)
	return n + 5, err
}

func (b *breaker) Decrease(ctx context.Context, ids []string) ([]string, error) {
	done, err := b.Group.Decrease(ctx, ids)
	return append(done, done...), err
}

func (b *breaker) Suspend(ctx context.Context, ids []string) ([]string, error) {
	return append(ids, "i-not-asked"), nil
}

// Resume makes breaker a provider.Suspender, so that the SDK serves its Suspend.
func (b *breaker) Resume(ctx context.Context, ids []string) ([]string, error) { return nil, nil }

// TestAnswersBreakingTheContractAreRefused checks the host's decoding of a plugin's
// answers over real gRPC: counts beyond the request, IDs not asked for and instances
// without an ID are reported as errors and never passed on as valid.
func TestAnswersBreakingTheContractAreRefused(t *testing.T) {
	ctx := context.Background()
	b := &breaker{Group: fake.New(fake.Options{})}
	p := attach(t, b, `{}`)
	if _, err := p.Init(ctx, nil, provider.Settings{}); err != nil {
		t.Fatal(err)
	}
	n, err := p.Increase(ctx, 2)
	if n != 2 || err == nil || !strings.Contains(err.Error(), "reported 7 instances accepted of 2 requested") {
		t.Errorf("Increase(2) answered 7 = %d, %v; want 2 and an error", n, err)
	}
	var ids []string
	if err := p.Update(ctx, func(id string, _ provider.State) { ids = append(ids, id) }); err != nil || len(ids) != 2 {
		t.Fatalf("Update = %v, %v", ids, err)
	}
	done, err := p.Decrease(ctx, ids[:1])
	if len(done) != 1 || done[0] != ids[0] || err != nil {
		t.Errorf("Decrease(%v) answered twice = %v, %v; want the ID once", ids[:1], done, err)
	}
	done, err = p.Suspend(ctx, ids[1:])
	if len(done) != 1 || done[0] != ids[1] || err == nil || !strings.Contains(err.Error(), `it was not given as done: ["i-not-asked"]`) {
		t.Errorf("Suspend(%v) with a foreign ID = %v, %v; want only %s and an error naming the other", ids[1:], done, err, ids[1])
	}

	b.update = func(fn func(string, provider.State)) {
		fn("i-1", provider.StateRunning)
		fn("", provider.StateRunning)
	}
	called := false
	err = p.Update(ctx, func(string, provider.State) { called = true })
	if err == nil || !strings.Contains(err.Error(), "instance #2 without an ID") || called {
		t.Errorf("Update listing an instance without ID = %v (fn called: %v); want an error and nothing listed", err, called)
	}
	if errors.Is(err, provider.ErrNotFound) {
		t.Errorf("the error has a sentinel kind: %v", err)
	}
}
